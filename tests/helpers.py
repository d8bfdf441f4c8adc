"""What many test modules use: a tiny corpus written here, the CLI runner and the one-line-error check."""

from __future__ import annotations

import fcntl
import os
import random
import re
import shutil
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

from click.testing import CliRunner

from chargen.cli import cli

# A model that trains in about a second: enough to exercise every path, not to learn anything. XLA and the
# TensorBoard histograms (a second traced gradient, a few seconds a run) only add compile time here; the tests
# whose subject they are turn them on themselves, and the shared `trained` run keeps its histograms.
TINY = ["--units", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "8", "--steps", "4",
        "--eval-every", "2", "--embedding-dim", "8", "--quiet", "--no-xla", "--no-histograms"]
WORDS = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "heron", "inlet", "juniper"]


def write_corpus(path: Path, words: int = 900, seed: int = 0) -> Path:
    """About 5 KB of random words from a fixed list, generated here (no text copied from anywhere)."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(words // 10)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def signal_after_first_snapshot(run: Path, signum: int) -> threading.Thread:
    """A started thread that sends `signum` to this process once `run` has saved its first snapshot, as a
    user's Ctrl-C or a scheduler's SIGTERM would arrive during a training run in this process."""

    def send():
        deadline = time.monotonic() + 120
        while not (run / "pointers.json").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signum)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


def made_once(tmp_path_factory, name: str, make) -> Path:
    """A folder that `make(folder)` fills once per test session, however many pytest-xdist workers ask for it.

    A module-scoped fixture runs again in every worker that receives one of its tests, and `--dist worksteal`
    scatters a module's tests; a fixture that trains or exports for many seconds shares its folder instead.
    The first worker makes it under a lock; the others wait, then read what it left. `make` writes files only.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder the workers of one run share
    folder, finished = root / f"made-once-{name}", root / f"made-once-{name}.finished"
    with open(root / f"made-once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not finished.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            finished.touch()
    return folder


def run_cli(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def assert_user_error(result, *fragments: str, after_start: bool = False) -> str:
    """Non-zero exit, one line on stderr naming the problem, no traceback; returns the line.

    after_start: the mistake shows once training has started, after its one status line.
    """
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    lines = result.stderr.strip().splitlines()
    if after_start:
        assert lines and lines[0].startswith("training "), result.stderr
        lines = lines[1:]
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    line = lines[0]
    assert line.startswith("Error: "), line
    assert "unexpected" not in line, f"a user's mistake reported as a bug: {line}"
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    return line


class ColouredPage(HTMLParser):
    """A page of coloured text (`chargen score`, `chargen inspect`) as a browser sees it: the legend's
    swatches, the text's characters with their colours and titles, and any table's rows."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.swatches, self.characters, self.rows, self._open, self._row = {}, [], [], None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self._row = []
            self.rows.append(self._row)
        elif tag == "td":
            self._row.append("")
        elif tag == "span":
            hex_rgb = re.search(r"background:#([0-9a-f]{6})", attrs["style"]).group(1)
            rgb = tuple(int(hex_rgb[i:i + 2], 16) for i in (0, 2, 4))
            if attrs.get("class") == "swatch":
                self.swatches[float(attrs["data-value"])] = rgb
            else:
                self._open = {"rgb": rgb, "title": attrs["title"], "char": ""}
                self.characters.append(self._open)

    def handle_data(self, data):
        if self._open is not None:
            self._open["char"] += data
        elif self._row:
            self._row[-1] += data

    def handle_endtag(self, tag):
        if tag == "span":
            self._open = None
