"""Training on a corpus larger than memory: encoding speed, peak anonymous memory, time to the first step.

    python -m bench.big_corpus [--gigabytes 4] [--folder /tmp/chargen-big-corpus] [--steps 50] [--keep]

Generates a corpus of the given size (paragraphs of builtin:python-docs, shuffled afresh for every 64 MB,
seeded), then runs the real commands in child processes, each watched from here:

1. `chargen prepare CORPUS` into an empty cache: the encoding speed (corpus bytes per second of wall time,
   hashing, vocabulary pass and ids pass together; and per second of the process's CPU time, which the
   load of a shared machine disturbs less) and its peak anonymous memory;
2. `chargen prepare CORPUS` again: what a cache hit costs (hashing the files);
3. `chargen train CORPUS --steps N` on a pseudo-terminal, so its progress bar draws: the peak anonymous
   resident memory (`RssAnon` in /proc/PID/status, TensorFlow included; the mapped ids are page cache,
   not anonymous memory) and when each stage is reached, in seconds after the command started, as the
   user sees it: the "using the encoded cache" line (corpus hashed and mapped, TensorFlow loaded, model
   built) and the first step drawn by the progress bar (tracing and XLA compilation included).
   `chargen prepare CORPUS` alone, warm, is how long the hashing takes;
4. the same `chargen train` again, for a few steps: the run a user makes next, which finds the step XLA
   compiled for the first in the compiled-step cache (`chargen/compile_cache.py`) instead of compiling it.

Everything goes into --folder (default under /tmp, outside the repository), deleted at the end unless
--keep. It needs about 2.2 times the corpus size free there. `python -m bench` runs it as its last
section (4 GB; 0.2 GB with --quick; `--skip big-corpus` leaves it out). Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import resource
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

BLOCK_BYTES = 64 << 20  # the paragraphs are shuffled afresh for each block this size
POLL_SECONDS = 0.02
AGAIN_STEPS = 5  # the second training run: only its first step is measured
TERMINAL_SIZE = (40, 120)  # rows, columns
# The first step is the progress bar's "1/N"; the first "step N:" line would come only at the first evaluation.
TRAIN_MARKS = {"model_built": r"using the encoded cache", "first_step": r"\b1/\d+"}
DEFAULT_FOLDER = Path("/tmp/chargen-big-corpus")


def anonymous_memory(pid: int) -> int | None:
    """RssAnon of a process in bytes (None once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def watch(command: list[str], env: dict, terminal: bool = False, marks: dict[str, str] | None = None) -> dict:
    """Run `command`, polling its RssAnon; returns its exit code, output, wall time, peak anonymous
    memory, and the seconds after the start at which each regular expression of `marks` first matched
    the output (read through a pseudo-terminal when `terminal`, so progress bars draw)."""
    marks, seen = marks or {}, {}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if terminal:
        leader, follower = pty.openpty()
        # A new terminal is 0 columns wide, and a progress bar sized to it (tqdm's dynamic_ncols) draws nothing.
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", *TERMINAL_SIZE, 0, 0))
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
        os.close(follower)
        reader = leader
    else:
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
        reader = process.stdout.fileno()
    started, peak, output = time.perf_counter(), 0, b""
    while True:
        peak = max(peak, anonymous_memory(process.pid) or 0)
        ready, _, _ = select.select([reader], [], [], POLL_SECONDS)
        if ready:
            try:
                data = os.read(reader, 1 << 16)
            except OSError:  # the terminal closes when the process ends
                data = b""
            output += data
            text = output.decode("utf-8", "replace")
            for name, pattern in marks.items():
                if name not in seen and re.search(pattern, text):
                    seen[name] = time.perf_counter() - started
            if not data and process.poll() is not None:
                break
        elif process.poll() is not None:
            break
    code = process.wait()
    seconds = time.perf_counter() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(children_after, field) - getattr(children_before, field) for field in ("ru_utime", "ru_stime"))
    if terminal:
        os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode("utf-8", "replace"))  # without terminal codes
    return {"exit_code": code, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_anon_bytes": peak, "marks": seen,
            "output": text}


def generate_corpus(path: Path, num_bytes: int, seed: int = 0) -> int:
    """Write about `num_bytes` of python-docs paragraphs in a seeded random order; returns the bytes written."""
    import numpy as np

    from chargen.corpus import builtin_corpus

    paragraphs = [part.encode("utf-8") for part in builtin_corpus("python-docs").text.split("\n\n") if part]
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "wb") as file:
        while written < num_bytes:
            block, size = [], 0
            while size < BLOCK_BYTES:
                for index in rng.permutation(len(paragraphs)):
                    block.append(paragraphs[index])
                    size += len(paragraphs[index]) + 2
            data = b"\n\n".join(block)[:num_bytes - written]
            file.write(data)
            written += len(data)
    return written


def chargen(*args: str) -> list[str]:
    return [sys.executable, "-m", "chargen", *args]


def measure(folder: Path, gigabytes: float, steps: int) -> dict:
    free = shutil.disk_usage(folder).free
    num_bytes = int(gigabytes * 1e9)
    if free < 2.2 * num_bytes:
        raise SystemExit(f"{folder} has {free / 1e9:.1f} GB free; a {gigabytes} GB corpus needs about "
                         f"{2.2 * gigabytes:.1f} GB (the text and its ids); pass a smaller --gigabytes")
    corpus_path, cache = folder / "corpus.txt", folder / "cache"
    env = {**os.environ, "CHARGEN_CACHE_DIR": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    written = generate_corpus(corpus_path, num_bytes)
    generated = time.perf_counter() - started
    print(f"generated {written:,} bytes in {generated:.1f} s", file=sys.stderr)

    cold = watch(chargen("prepare", str(corpus_path)), env)
    print(cold["output"], end="", file=sys.stderr)
    warm = watch(chargen("prepare", str(corpus_path)), env)

    def train_run(name: str, train_steps: int) -> dict:
        return watch(chargen("train", str(corpus_path), "--steps", str(train_steps), "--checkpoint-dir",
                             str(folder / "checkpoints"), "--run-name", name, "--preview-length", "0"),
                     env, terminal=True, marks=TRAIN_MARKS)

    train = train_run("big", steps)
    again = train_run("big-again", AGAIN_STEPS)
    for result in (cold, warm, train, again):
        if result["exit_code"] != 0:
            raise SystemExit(f"a command failed (exit code {result['exit_code']}, peak RssAnon "
                             f"{result['peak_rss_anon_bytes'] / 1e6:.0f} MB, marks {result['marks']}):\n"
                             f"{result['output']}")
    num_chars = int(re.search(r"\(([\d,]+) characters", cold["output"]).group(1).replace(",", ""))
    return {
        "corpus_bytes": written,
        "characters": num_chars,
        "int32_ids_bytes": 4 * num_chars,
        "generate_seconds": generated,
        "encode_seconds": cold["seconds"],
        "encode_megabytes_per_second": written / 1e6 / cold["seconds"],
        "encode_cpu_seconds": cold["cpu_seconds"],
        "encode_peak_rss_anon_bytes": cold["peak_rss_anon_bytes"],
        "cache_hit_seconds": warm["seconds"],
        "train_steps": steps,
        "train_seconds": train["seconds"],
        "train_peak_rss_anon_bytes": train["peak_rss_anon_bytes"],
        "train_marks_seconds": train["marks"],
        "train_again_seconds": again["seconds"],
        "train_again_marks_seconds": again["marks"],
        "train_output": train["output"].splitlines()[-4:],
    }


def run(quick: bool = False, log=print, gigabytes: float | None = None, folder: Path = DEFAULT_FOLDER,
        steps: int = 50, keep: bool = False) -> dict:
    """The whole measurement (4 GB, or 0.2 GB when `quick`), the load average before and after included;
    `folder` is deleted afterwards unless `keep`."""
    gigabytes = gigabytes if gigabytes is not None else 0.2 if quick else 4.0
    folder.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    log(f"Big corpus: {gigabytes} GB in {folder} (load average {load_before[0]:.1f}) ...")
    try:
        result = measure(folder, gigabytes, steps)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {**result, "load_average_before": load_before, "load_average_after": os.getloadavg()}


def print_result(result: dict) -> None:
    gb = 1e9
    marks = result["train_marks_seconds"]
    print(f"\nCorpus larger than memory (load average {result['load_average_before'][0]:.1f} before, "
          f"{result['load_average_after'][0]:.1f} after, on {os.cpu_count()} cores)")
    print(f"corpus                      {result['corpus_bytes'] / gb:.2f} GB, {result['characters']:,} characters "
          f"(as int32 ids: {result['int32_ids_bytes'] / gb:.2f} GB)")
    per_cpu_second = result["corpus_bytes"] / 1e6 / result["encode_cpu_seconds"]
    print(f"chargen prepare (encoding)  {result['encode_seconds']:.1f} s, "
          f"{result['encode_megabytes_per_second']:.0f} MB/s ({per_cpu_second:.0f} MB per CPU second), peak RssAnon "
          f"{result['encode_peak_rss_anon_bytes'] / 1e6:.0f} MB")
    print(f"chargen prepare (cached)    {result['cache_hit_seconds']:.1f} s")
    print(f"chargen train --steps {result['train_steps']:<5} {result['train_seconds']:.1f} s, peak RssAnon "
          f"{result['train_peak_rss_anon_bytes'] / 1e6:.0f} MB; cache ready (corpus hashed and mapped, model "
          f"built) at {_first_step(marks)}")
    print(f"chargen train again         compiled step from the cache: cache ready at "
          f"{_first_step(result['train_again_marks_seconds'])}")


def _first_step(marks: dict) -> str:
    """"14.6 s, first step at 38.1 s (23.5 s later)": the marks in seconds after the command started."""
    names = ("model_built", "first_step")
    when = {name: f"{marks[name]:.1f} s" if name in marks else "not seen" for name in names}
    later = f" ({marks['first_step'] - marks['model_built']:.1f} s later)" if marks.keys() >= set(names) else ""
    return f"{when['model_built']}, first step at {when['first_step']}{later}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=4.0, help="corpus size (default 4)")
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER,
                        help="where the corpus, its cache and the run go (deleted afterwards unless --keep)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="leave the folder in place")
    args = parser.parse_args(argv)
    result = run(gigabytes=args.gigabytes, folder=args.folder, steps=args.steps, keep=args.keep,
                 log=lambda line: print(line, file=sys.stderr))
    print_result(result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
