"""Files that are not what they claim: special files as corpora, model files that carry code, damaged run records."""

from __future__ import annotations

import json
import os
import signal
import socket
import zipfile
from pathlib import Path

import pytest

from chargen.corpus import Corpus, Source
from chargen.errors import ChargenError

from helpers import assert_user_error, run_cli, write_corpus


@pytest.fixture(autouse=True)
def never_hang():
    """A read that blocks (a FIFO with no writer) fails the test after 20 s instead of stalling the suite."""
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("blocked reading a special file"))
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _make_special(kind: str, path: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()  # the socket file stays
    elif kind == "loop":
        os.symlink(path.name, path)  # a link to itself
    elif kind == "device":
        os.symlink("/dev/zero", path)  # endless bytes, if read
    return path


KINDS = {"fifo": "named pipe", "socket": "socket", "loop": "symlink loop", "device": "character device"}


@pytest.mark.parametrize("kind", KINDS)
def test_a_special_file_named_as_corpus_is_refused_without_reading(tmp_path, kind):
    special = _make_special(kind, tmp_path / "special")
    assert_user_error(run_cli("prepare", special), str(special), KINDS[kind], "regular file")


def test_a_folder_skips_special_files_and_says_so(tmp_path):
    folder = tmp_path / "letters"
    folder.mkdir()
    write_corpus(folder / "a.txt")
    for kind in KINDS:
        _make_special(kind, folder / kind)
    result = run_cli("prepare", folder)
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "skipped 4 folder entries" in skipped[0], result.stderr
    assert "from 1 source(s)" in result.stdout


def test_a_file_that_became_a_fifo_after_listing_is_refused_on_opening(tmp_path):
    """The kind is checked on the opened file, so a swap between listing and reading cannot block a read."""
    fifo = _make_special("fifo", tmp_path / "swapped.txt")
    with pytest.raises(ChargenError, match="named pipe"):
        _ = Corpus((Source(str(fifo), fifo),)).text


# Model files ------------------------------------------------------------------------------------

def _model_file(run: Path) -> Path:
    return next((run / "snapshots").glob("*/model.keras"))


def test_a_model_file_with_a_lambda_layer_is_refused_before_its_code_runs(run_copy, tmp_path):
    import keras

    marker = tmp_path / "the-lambda-ran"

    def payload(x):
        marker.touch()
        return x

    carrier = keras.Sequential([keras.Input((1,)), keras.layers.Lambda(payload)])
    marker.unlink(missing_ok=True)  # building the model above ran it once, here
    for model_file in (run_copy["run"] / "snapshots").glob("*/model.keras"):
        carrier.save(model_file)
    result = run_cli("sample", run_copy["run"], "--length", "5")
    assert_user_error(result, "refusing to load", "Lambda", "not chargen's layers")
    assert not marker.exists()


def _rewrite_model_config(model_file: Path, change) -> None:
    with zipfile.ZipFile(model_file) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    saved = json.loads(members["config.json"])
    change(saved)
    members["config.json"] = json.dumps(saved).encode()
    with zipfile.ZipFile(model_file, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("change, fragment", [
    (lambda saved: saved["config"].update(dtype={"module": "builtins", "class_name": "eval", "config": {},
                                                 "registered_name": None}), "builtins.eval"),
    (lambda saved: saved.update(registered_name="somebody>CharModel"), "chargen.model.CharModel"),
])
def test_a_model_file_naming_a_class_outside_chargen_is_refused(run_copy, change, fragment):
    for model_file in (run_copy["run"] / "snapshots").glob("*/model.keras"):
        _rewrite_model_config(model_file, change)
    assert_user_error(run_cli("sample", run_copy["run"], "--length", "5"), "refusing to load", fragment)


# Run records -------------------------------------------------------------------------------------

def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("file, change, fragments", [
    ("config.json", lambda c: c["training"].update(units="8"), ["config.json", "training.units", "integer"]),
    ("config.json", lambda c: c["training"].update(dropout=True), ["config.json", "training.dropout", "number"]),
    ("config.json", lambda c: c["training"].update(units=-3), ["config.json", "units must be a positive integer"]),
    ("config.json", lambda c: c["training"].update(seed=2**40), ["config.json", "seed must be from 0"]),
    ("config.json", lambda c: c["training"].update(colour="blue"), ["config.json", "training.colour"]),
    ("config.json", lambda c: c.update(format_version="1"), ["config.json", "format_version"]),
    ("config.json", lambda c: c.update(vocab_size=3), ["vocab_size = 3", "vocab.json"]),
    ("config.json", lambda c: c["training"].update(num_layers=10**18),
     ["config.json", "1,000,000,000,000,000,000 layers", "more than this machine's memory"]),
    ("vocab.json", lambda v: v.update(chars=["a", "b", "a"]), ["vocab.json", "distinct", "'a'"]),
    ("vocab.json", lambda v: v.update(chars=["a", "bc"]), ["vocab.json", "entry 1", "'bc'"]),
    ("vocab.json", lambda v: v.update(chars=["a", 7]), ["vocab.json", "entry 1", "7"]),
    ("vocab.json", lambda v: v.update(chars="abc"), ["vocab.json", "not a list"]),
    ("vocab.json", lambda v: v.update(chars=["\ud800"]), ["vocab.json", "surrogate"]),
    ("vocab.json", lambda v: v.update(chars=sorted(v["chars"], reverse=True)), ["vocab.json", "code-point order"]),
])
def test_a_damaged_run_record_is_refused_naming_the_file_and_field(run_copy, file, change, fragments):
    _edit_json(run_copy["run"] / file, change)
    assert_user_error(run_cli("info", run_copy["run"]), *fragments)


def test_a_run_from_a_newer_chargen_names_the_version_it_needs(run_copy):
    def newer(config):
        config.update(format_version=config["format_version"] + 1)
        config["versions"]["chargen"] = "9.1.0"

    _edit_json(run_copy["run"] / "config.json", newer)
    assert_user_error(run_cli("info", run_copy["run"]), "chargen 9.1.0 or newer", "format")
