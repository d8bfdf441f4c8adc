"""Run folders: atomic snapshots, fallbacks when files are lost or torn, and runs that survive a kill."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from chargen import checkpoints  # noqa: E402
from chargen.atomic import atomic_write_text  # noqa: E402
from chargen.checkpoints import Run, resolve_run  # noqa: E402
from chargen.errors import ChargenError  # noqa: E402
from chargen.model import CharModel  # noqa: E402
from chargen.vocab import Vocabulary  # noqa: E402

from helpers import TINY, run_cli, signal_after_first_snapshot, write_corpus  # noqa: E402

VOCAB = Vocabulary.from_text("abcde \n")
CONFIG = {"training": {"cell": "gru", "num_layers": 1, "units": 4, "embedding_dim": 3}}


def tiny_model(seed: int = 0) -> CharModel:
    keras.utils.set_random_seed(seed)
    model = CharModel(len(VOCAB), cell="gru", num_layers=1, units=4, embedding_dim=3)
    model.build()
    return model


def tiny_optimizer(model) -> keras.optimizers.Optimizer:
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    optimizer.build(model.trainable_variables)
    return optimizer


def progress(step: int, val: float | None = None) -> dict:
    return {"step": step, "chars_seen": step * 10, "best_val_bpc": val, "last_val_bpc": val, "elapsed_seconds": 0.0}


def weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.weights]


def perturb(model, amount: float = 0.5) -> None:
    for variable in model.trainable_variables:
        variable.assign(np.asarray(variable) + amount)


def temporaries(run: Run) -> list[Path]:
    return [p for p in run.path.rglob("*") if p.name.startswith(".tmp")]


def snapshot_names(run: Run) -> set[str]:
    return {p.name for p in (run.path / "snapshots").iterdir()}


@pytest.fixture
def run(tmp_path) -> Run:
    return Run.create(tmp_path / "runs" / "one", CONFIG, VOCAB)


@pytest.fixture
def saved(run):
    """A run with one snapshot at step 2; returns (run, model, optimizer, the saved weights)."""
    model = tiny_model()
    optimizer = tiny_optimizer(model)
    run.save_snapshot(model, optimizer, progress(2, 3.0), best=True)
    return run, model, optimizer, weights(model)


# Saving and loading --------------------------------------------------------------------------------

def test_snapshot_round_trip(run):
    model = tiny_model()
    optimizer = tiny_optimizer(model)
    for variable in optimizer.variables:
        variable.assign(np.full(variable.shape, 7, dtype=variable.dtype))
    run.save_snapshot(model, optimizer, progress(2, 3.0))
    for loaded, original in zip(weights(run.load_model("last")), weights(model), strict=True):
        np.testing.assert_array_equal(loaded, original)
    assert run.load_progress("last") == progress(2, 3.0)
    fresh = tiny_optimizer(model)
    run.restore_optimizer(fresh, "last")
    assert int(np.asarray(fresh.iterations)) == 7
    assert all(np.all(np.asarray(v) == 7) for v in fresh.variables)


def test_states_are_saved_for_stateful_runs(run):
    model = tiny_model()
    states = [[np.arange(8, dtype=np.float32).reshape(2, 4)]]
    run.save_snapshot(model, tiny_optimizer(model), progress(1), states=states)
    loaded = run.load_states(num_layers=1)
    np.testing.assert_array_equal(loaded[0][0], states[0][0])


def test_only_the_last_and_best_snapshots_are_kept(run):
    model = tiny_model()
    optimizer = tiny_optimizer(model)
    first = run.save_snapshot(model, optimizer, progress(2, 2.0), best=True)
    run.save_snapshot(model, optimizer, progress(4, 2.5))
    last = run.save_snapshot(model, optimizer, progress(6, 2.4))
    assert snapshot_names(run) == {first.name, last.name}
    assert run.snapshot_path("best") == first and run.snapshot_path("last") == last
    assert run.load_progress("best")["step"] == 2 and run.load_progress("last")["step"] == 6


def test_a_run_with_no_snapshot_yet(run):
    with pytest.raises(ChargenError, match="no saved model yet"):
        run.load_model("last")


# A save that fails midway leaves the previous snapshot ---------------------------------------------

def _fail_model_save(monkeypatch, model, error):
    def partial_save(path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise error

    monkeypatch.setattr(model, "save", partial_save)


def _fail_optimizer_save(monkeypatch, model, error):
    def partial_savez(file, *args, **kwargs):
        Path(file).write_bytes(b"PK\x03\x04 half an npz")
        raise error

    monkeypatch.setattr(checkpoints.np, "savez", partial_savez)


def _fail_progress_write(monkeypatch, model, error):
    real_write_text = Path.write_text

    def partial_write_text(self, text, *args, **kwargs):
        if self.name == "progress.json":
            real_write_text(self, text[:5], *args, **kwargs)
            raise error
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", partial_write_text)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk-full",
                                                                                                      "ctrl-c"])
@pytest.mark.parametrize("failure", [_fail_model_save, _fail_optimizer_save, _fail_progress_write],
                         ids=["model", "optimizer", "progress"])
def test_a_failed_save_leaves_the_previous_snapshot(saved, monkeypatch, failure, error):
    run, model, optimizer, saved_weights = saved
    pointers_before = (run.path / "pointers.json").read_bytes()
    snapshots_before = snapshot_names(run)
    perturb(model)
    failure(monkeypatch, model, error)
    with pytest.raises(ChargenError if isinstance(error, OSError) else type(error)):  # a full disk: one line
        run.save_snapshot(model, optimizer, progress(4, 2.0), best=True)
    monkeypatch.undo()

    assert (run.path / "pointers.json").read_bytes() == pointers_before
    assert snapshot_names(run) == snapshots_before
    assert temporaries(run) == []
    for loaded, original in zip(weights(run.load_model("last")), saved_weights, strict=True):
        np.testing.assert_array_equal(loaded, original)
    assert run.load_progress("last")["step"] == 2
    assert run.load_progress("best")["step"] == 2


def test_a_failed_pointer_update_keeps_the_old_pointers(saved, monkeypatch):
    run, model, optimizer, saved_weights = saved
    pointers_before = (run.path / "pointers.json").read_bytes()

    def no_sync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoints.os, "fsync", no_sync)
    perturb(model)
    with pytest.raises(ChargenError, match="Input/output error"):
        run.save_snapshot(model, optimizer, progress(4, 2.0))
    monkeypatch.undo()
    assert (run.path / "pointers.json").read_bytes() == pointers_before
    assert temporaries(run) == []
    assert run.load_progress("last")["step"] == 2
    np.testing.assert_array_equal(weights(run.load_model("last"))[0], saved_weights[0])


def test_an_atomic_write_gets_the_mode_a_plain_write_gets(tmp_path):
    """Not the temporary file's private 0600: a run's files are as readable as any file the user makes."""
    from chargen.atomic import atomic_write_text

    atomic_write_text(tmp_path / "atomic.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "file.json"
    atomic_write_text(target, "old")

    def no_replace(source, destination):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(checkpoints.os, "replace", no_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


@pytest.mark.skipif(sys.platform != "linux", reason="reads file names from /proc/self/fd")
def test_snapshot_contents_reach_the_disk_before_they_are_published(run, monkeypatch):
    """Against a power cut: every file and folder of a snapshot is fsync'd before the rename that
    publishes it, and each rename (snapshot, then pointers.json) is fsync'd through its folder."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        events.append(("sync", Path(os.readlink(f"/proc/self/fd/{descriptor}"))))
        real_fsync(descriptor)

    def recording_replace(source, destination):
        events.append(("rename", Path(source), Path(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(checkpoints.os, "fsync", recording_fsync)
    monkeypatch.setattr(checkpoints.os, "replace", recording_replace)
    model = tiny_model()
    published = run.save_snapshot(model, tiny_optimizer(model), progress(3, 2.0), states=[[np.zeros((1, 4),
                                                                                                    np.float32)]])
    monkeypatch.undo()

    renames = [index for index, event in enumerate(events) if event[0] == "rename"]
    assert len(renames) == 2  # the snapshot folder, then pointers.json
    snapshot_rename, pointers_rename = renames
    temporary = events[snapshot_rename][1]
    assert events[snapshot_rename][2] == published
    synced_before = {event[1] for event in events[:snapshot_rename] if event[0] == "sync"}
    files = {temporary / path.name for path in published.iterdir()}
    assert files == {temporary / name for name in ("model.keras", "optimizer.npz", "progress.json", "states.npz")}
    assert files | {temporary} <= synced_before
    synced_between = {event[1] for event in events[snapshot_rename:pointers_rename] if event[0] == "sync"}
    assert published.parent in synced_between
    assert events[pointers_rename][2] == run.path / "pointers.json"
    assert ("sync", run.path) in events[pointers_rename:]


# Lost or damaged pointers fall back to the newest complete snapshot ------------------------------

@pytest.fixture
def two_snapshots(run):
    model = tiny_model()
    optimizer = tiny_optimizer(model)
    older = run.save_snapshot(model, optimizer, progress(2, 2.0), best=True)
    newer = run.save_snapshot(model, optimizer, progress(4, 2.5))
    # a save killed midway leaves a temporary folder, here with a later step than any complete one
    (run.path / "snapshots" / ".tmp-step-0000006-abcdef").mkdir()
    (run.path / "snapshots" / ".tmp-step-0000006-abcdef" / "model.keras").write_bytes(b"PK")
    return run, older, newer


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "dangling", "wrong-type"])
def test_damaged_pointers_fall_back_to_the_newest_complete_snapshot(two_snapshots, damage):
    run, older, newer = two_snapshots
    pointers = run.path / "pointers.json"
    assert run.snapshot_path("best") == older  # while the pointers are good
    if damage == "missing":
        pointers.unlink()
    elif damage == "garbage":
        pointers.write_bytes(b"\x00\xff not json")
    elif damage == "truncated":
        pointers.write_text(pointers.read_text()[:10])
    elif damage == "dangling":
        pointers.write_text(json.dumps({"last": "step-0000099-gone00", "best": older.name}))
    else:
        pointers.write_text("[1, 2, 3]")
    assert run.snapshot_path("last") == newer
    assert run.load_progress("last")["step"] == 4
    run.load_model("last")  # loadable


def test_saving_after_lost_pointers_rewrites_them(two_snapshots):
    run, older, newer = two_snapshots
    (run.path / "pointers.json").write_text("{")
    (run.path / ".tmp-pointers-killed").write_text('{"last": ')  # atomic_write_text killed before its rename
    (run.path / ".tmp-folder").mkdir()  # whatever else a killed process may have begun
    model = tiny_model()
    latest = run.save_snapshot(model, tiny_optimizer(model), progress(8, 2.2))
    pointers = json.loads((run.path / "pointers.json").read_text())
    assert pointers["last"] == latest.name
    assert (run.path / "snapshots" / pointers["best"]).is_dir()
    assert temporaries(run) == []  # the leftover temporary folder and file are cleaned up by the next save


# Metrics -----------------------------------------------------------------------------------------

def test_a_torn_last_metrics_line_is_skipped(run):
    run.append_metrics({"step": 2, "val_bpc": 3.0})
    run.append_metrics({"step": 4, "val_bpc": 2.5})
    with open(run.path / "metrics.jsonl", "a", encoding="utf-8") as file:
        file.write('{"step": 6, "val_b')  # killed mid-write
    assert [record["step"] for record in run.metrics()] == [2, 4]


def test_a_record_after_a_torn_line_is_kept(run):
    run.append_metrics({"step": 2, "val_bpc": 3.0})
    with open(run.path / "metrics.jsonl", "a", encoding="utf-8") as file:
        file.write('{"step": 4, "val_b')  # killed mid-write; the resumed run goes on
    run.append_metrics({"step": 4, "val_bpc": 2.5})
    run.append_metrics({"step": 6, "val_bpc": 2.4})
    assert [record["step"] for record in run.metrics()] == [2, 4, 6]


def test_no_metrics_yet(run):
    assert run.metrics() == []


# Creating and opening runs -----------------------------------------------------------------------

def test_create_refuses_an_existing_non_empty_folder(tmp_path):
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ChargenError, match="already exists.*--resume"):
        Run.create(folder, CONFIG, VOCAB)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_create_accepts_an_existing_empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    run = Run.create(folder, CONFIG, VOCAB)
    assert run.vocabulary() == VOCAB
    assert run.config["format_version"] == checkpoints.FORMAT_VERSION
    assert Run.open(folder).config["training"] == CONFIG["training"]


def test_create_where_a_file_is_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ChargenError, match="cannot create"):
        Run.create(tmp_path / "file" / "run", CONFIG, VOCAB)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_another_format_version_is_refused_clearly(run, version):
    config = json.loads((run.path / "config.json").read_text())
    if version is None:
        del config["format_version"]
    else:
        config["format_version"] = version
    (run.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ChargenError, match=r"checkpoint format .*this chargen reads format 1"):
        Run.open(run.path)


def test_open_needs_a_config(tmp_path):
    (tmp_path / "stray").mkdir()
    with pytest.raises(ChargenError, match="not a chargen run"):
        Run.open(tmp_path / "stray")


def test_a_damaged_model_file_is_a_clear_error(saved):
    run = saved[0]
    (run.snapshot_path("last") / "model.keras").write_bytes(b"\x00" * 100)
    with pytest.raises(ChargenError, match="model.keras.*damaged"):
        run.load_model("last")


def test_optimizer_state_of_another_model_is_refused(saved):
    run = saved[0]
    other = CharModel(len(VOCAB), cell="gru", num_layers=1, units=5, embedding_dim=3)
    other.build()
    with pytest.raises(ChargenError, match="does not fit"):
        run.restore_optimizer(tiny_optimizer(other), "last")


# resolve_run -------------------------------------------------------------------------------------

def _make_run(folder: Path, name: str, at: float, snapshot: bool = True) -> Run:
    run = Run.create(folder / name, CONFIG, VOCAB)
    if snapshot:
        model = tiny_model()
        run.save_snapshot(model, tiny_optimizer(model), progress(1))
        os.utime(run.path / "pointers.json", (at, at))
    os.utime(run.path / "config.json", (at, at))
    return run


def test_resolve_none_picks_the_newest_run(tmp_path):
    now = time.time()
    _make_run(tmp_path, "a-old", now - 300)
    _make_run(tmp_path, "c-middle", now - 200)
    _make_run(tmp_path, "b-new", now - 100)
    (tmp_path / "not-a-run").mkdir()
    assert resolve_run(None, tmp_path).name == "b-new"
    os.utime(tmp_path / "a-old" / "pointers.json", (now, now))  # a-old saved again most recently
    assert resolve_run(None, tmp_path).name == "a-old"
    _make_run(tmp_path, "d-fresh", now + 100, snapshot=False)  # just created, nothing saved yet
    assert resolve_run(None, tmp_path).name == "d-fresh"


def test_resolve_by_name_and_by_path(tmp_path):
    _make_run(tmp_path / "ck", "named", time.time())
    assert resolve_run("named", tmp_path / "ck").path == tmp_path / "ck" / "named"
    assert resolve_run(str(tmp_path / "ck" / "named"), tmp_path / "elsewhere").path == tmp_path / "ck" / "named"
    with pytest.raises(ChargenError, match="no run named 'other'"):
        resolve_run("other", tmp_path / "ck")


@pytest.mark.parametrize("exists", [True, False])
def test_resolve_none_without_runs(tmp_path, exists):
    folder = tmp_path / "ck"
    if exists:
        folder.mkdir()
    with pytest.raises(ChargenError, match="no runs in"):
        resolve_run(None, folder)


# A real training process, killed or interrupted ----------------------------------------------------

def _start_training(tmp_path: Path, run_name: str) -> tuple[subprocess.Popen, Path, Path]:
    corpus = write_corpus(tmp_path / "words.txt", words=3000)
    checkpoint_dir = tmp_path / "ck"
    command = [sys.executable, "-m", "chargen", "train", str(corpus), *TINY, "--steps", "100000", "--eval-every", "3",
               "--time-limit", "120", "--checkpoint-dir", str(checkpoint_dir), "--run-name", run_name]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "CHARGEN_DEBUG": ""})
    return process, corpus, checkpoint_dir / run_name


def _wait_for_first_snapshot(process: subprocess.Popen, run: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "pointers.json").exists():
        if process.poll() is not None:
            pytest.fail(f"training ended early ({process.returncode}): {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no snapshot appeared in time")
        time.sleep(0.05)


def _last_progress(run: Path) -> dict:
    return Run.open(run).load_progress("last")


@pytest.mark.slow
def test_a_killed_training_leaves_a_run_that_samples_and_resumes(tmp_path):
    process, corpus, run = _start_training(tmp_path, "killed")
    try:
        _wait_for_first_snapshot(process, run)
        time.sleep(0.3)  # let it get on with the next steps and saves, then kill it wherever it is
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL

    reached = _last_progress(run)["step"]
    assert reached >= 3
    sampled = run_cli("sample", run, "--length", "20", "--seed", "1")
    assert sampled.exit_code == 0, sampled.output
    assert len(sampled.stdout) == 21
    info = run_cli("info", run, "--json")
    assert info.exit_code == 0, info.output
    resumed = run_cli("train", corpus, "--resume", "--no-xla", "--no-histograms", "--run-name", run.name,
                      "--checkpoint-dir", run.parent, "--steps", reached + 2, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert f"from step {reached}" in resumed.stderr
    assert _last_progress(run)["step"] == reached + 2
    assert temporaries(Run(run)) == []


def test_ctrl_c_saves_exits_130_and_tells_how_to_resume(tmp_path):
    """A real SIGINT, sent to this process once training has saved a snapshot, as Ctrl-C would send it.

    The corpus is latin-1 in a folder whose name has a space: the resume command must quote the one and name
    the other.
    """
    folder = tmp_path / "with space"
    folder.mkdir()
    corpus = folder / "latin.txt"
    corpus.write_bytes(("café crème brûlée " * 300).encode("latin-1"))
    run = folder / "ck" / "interrupted"

    presser = signal_after_first_snapshot(run, signal.SIGINT)
    result = run_cli("train", corpus, *TINY, "--encoding", "latin-1", "--steps", "100000", "--eval-every", "3",
                     "--time-limit", "120", "--checkpoint-dir", run.parent, "--run-name", run.name)
    presser.join()
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    match = re.search(r"^step (\d+)", result.stdout, flags=re.MULTILINE)
    assert match, result.stdout
    reached = int(match.group(1))
    assert 3 <= reached < 100000
    progress_reached = _last_progress(run)
    assert progress_reached["step"] == reached
    assert Run.open(run).metrics()[-1]["step"] == reached  # evaluated and saved at the step it stopped
    assert progress_reached["last_val_bpc"] is not None

    hint = next(line for line in result.stderr.splitlines() if "--resume" in line)
    command = shlex.split(hint.split("continue with:", 1)[1])
    assert command[:2] == ["chargen", "train"] and "--resume" in command and "latin-1" in command
    resumed = run_cli(*command[1:], "--no-xla", "--no-histograms", "--steps", reached + 1)
    assert resumed.exit_code == 0, resumed.output
    assert f"from step {reached}" in resumed.stderr and f"step {reached + 1}:" in resumed.stdout
    assert _last_progress(run)["step"] == reached + 1


def test_a_missing_model_file_is_a_clear_error(saved):
    run = saved[0]
    (run.snapshot_path("last") / "model.keras").unlink()
    with pytest.raises(ChargenError, match="model.keras is missing"):
        run.load_model("last")
