"""One writer per run: a second training of a run is refused at once, naming the first; a killed writer's
lock does not block; readers (`info`, `sample`, `eval`) never fail while a writer saves, however often.

The second process here is a small Python writer (no TensorFlow, so it starts in a fraction of a second)
that holds the run's lock exactly as `chargen train` does (`checkpoints.writing`) and, for the readers'
test, saves complete snapshots through `Run.save_snapshot` as fast as the disk allows, far more often
than a training saving at every step would.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from chargen import checkpoints, run_lock
from chargen.checkpoints import LOCK_FILE, Run
from chargen.errors import ChargenError

from helpers import TINY, assert_user_error, run_cli

WRITER = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path

    import numpy as np

    from chargen import checkpoints

    run_path, mode = Path(sys.argv[1]), sys.argv[2]
    run = checkpoints.Run.open(run_path)
    snapshot = run.snapshot_path("last")
    model_bytes = (snapshot / "model.keras").read_bytes()
    with np.load(snapshot / "optimizer.npz") as saved:
        variables = [saved[f"arr_{i}"] for i in range(len(saved.files))]


    class SavedModel:  # writes the run's own model file, as a training's save would
        def save(self, path):
            Path(path).write_bytes(model_bytes)


    class SavedOptimizer:
        pass


    SavedOptimizer.variables = variables
    progress = run.load_progress("last")
    with checkpoints.writing(run_path, new=False):
        print("holding", flush=True)
        step = progress["step"]
        while True:
            if mode == "hold":
                sys.stdin.readline()  # until the test kills it
            step += 1
            time.sleep(0.03)
            run.save_snapshot(SavedModel(), SavedOptimizer(), {**progress, "step": step}, best=step % 3 == 0)
""")


READER_ROUNDS = 3
INFOS_PER_ROUND = 10


def start_writer(run_path, mode: str) -> subprocess.Popen:
    """The second process, once it holds the run's lock."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_path), mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "holding"
    return writer


def wait_for_a_save_after(run_path, step: int, timeout: float = 60.0) -> None:
    """Pace the readers on the writer rather than on the clock: a loaded CI machine may save slowly."""
    deadline = time.monotonic() + timeout
    while Run.open(run_path).load_progress("last")["step"] <= step:
        assert time.monotonic() < deadline, f"the writer saved nothing after step {step} in {timeout:.0f} s"
        time.sleep(0.05)


def kill(writer: subprocess.Popen) -> None:
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)


def test_a_second_training_is_refused_naming_the_first_and_a_killed_ones_lock_does_not_block(run_copy):
    run, checkpoint_dir = run_copy["run"], run_copy["checkpoint_dir"]
    writer = start_writer(run, "hold")
    try:
        resumed = run_cli("train", run_copy["corpus"], *TINY, "--resume", "--run-name", "tiny",
                          "--checkpoint-dir", checkpoint_dir)
        assert_user_error(resumed, f"process {writer.pid}", f"on host {socket.gethostname()}", "wait for it")
        again = run_cli("train", run_copy["corpus"], *TINY, "--run-name", "tiny", "--checkpoint-dir", checkpoint_dir)
        assert_user_error(again, f"process {writer.pid}")
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == writer.pid
    finally:
        kill(writer)
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == writer.pid  # the dead writer's lock file is left
    with checkpoints.writing(run, new=False):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_FILE).exists()  # released and removed


def test_readers_never_fail_while_a_writer_saves_continually(run_copy):
    run, corpus = run_copy["run"], run_copy["corpus"]
    first_step = Run.open(run).load_progress("last")["step"]
    writer = start_writer(run, "save")
    outputs, steps = set(), []
    try:
        for round in range(READER_ROUNDS):
            for _ in range(INFOS_PER_ROUND):  # info reads no model: cheap, so many reads race the saves
                info = run_cli("info", run, "--json")
                assert info.exit_code == 0, info.output
                steps.append(json.loads(info.stdout)["steps"])
            sample = run_cli("sample", run, "--length", "20", "--seed", "3", "--no-stream")
            assert sample.exit_code == 0, sample.output
            outputs.add(sample.stdout)
            if round == 1:  # eval traces a new TensorFlow function each time: once is enough
                evaluated = run_cli("eval", run, corpus, "--json")
                assert evaluated.exit_code == 0, evaluated.output
            wait_for_a_save_after(run, steps[-1])  # each round reads while saves go on, however loaded the machine
        assert writer.poll() is None, "the writer stopped"
    finally:
        kill(writer)
    assert len(outputs) == 1  # every snapshot holds the same model: one text, never a damaged read
    assert steps == sorted(steps) and len(set(steps) - {first_step}) >= READER_ROUNDS - 1, steps  # reads raced saves
    assert run_cli("sample", run, "--length", "5").exit_code == 0  # killed mid-save, the run still reads


def test_a_read_whose_snapshot_is_pruned_meanwhile_reads_the_newer_one(run_copy, monkeypatch):
    """What a writer's save does between a reader's finding the snapshot and opening it: publish a newer
    snapshot, point at it, remove the old."""
    run = Run.open(run_copy["run"])
    original = Run._load_model_from
    opened = []

    def pruned_before_opening(self, snapshot):
        if not opened:
            newer = snapshot.parent / "step-9999999-newer"
            newer.mkdir()
            for part in snapshot.iterdir():
                part.rename(newer / part.name)
            (run.path / "pointers.json").write_text(json.dumps({"last": newer.name, "best": newer.name}))
            snapshot.rmdir()
        opened.append(snapshot.name)
        return original(self, snapshot)

    monkeypatch.setattr(Run, "_load_model_from", pruned_before_opening)
    assert run.load_model("best") is not None
    assert opened[-1] == "step-9999999-newer" and len(opened) == 2


def test_a_damaged_snapshot_is_still_reported_not_retried_elsewhere(run_copy):
    run = Run.open(run_copy["run"])
    (run.snapshot_path("best") / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ChargenError, match="damaged"):
        run.load_model("best")


def test_two_holders_in_one_process_exclude_each_other(tmp_path):
    first = run_lock.WriterLock(tmp_path / "writer.lock", "run x")
    second = run_lock.WriterLock(tmp_path / "writer.lock", "run x")
    with first:
        with pytest.raises(run_lock.LockHeld, match=f"run x is being written by process {os.getpid()}"):
            second.acquire()
    with second:  # free again once the first lets go
        assert (tmp_path / "writer.lock").exists()


@pytest.fixture
def no_flock(monkeypatch):
    """A filesystem that cannot lock (some FUSE and old NFS mounts): flock fails with ENOLCK."""
    def refuse(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", refuse)


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    return int(finished.stdout)


def test_without_filesystem_locks_the_file_itself_is_the_lock(tmp_path, no_flock):
    path = tmp_path / "writer.lock"
    with run_lock.WriterLock(path, "run x"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(run_lock.LockHeld, match=f"process {os.getpid()}"):
            run_lock.WriterLock(path, "run x").acquire()
    assert not path.exists()


def test_without_filesystem_locks_a_dead_holder_on_this_host_is_stale(tmp_path, no_flock):
    path = tmp_path / "writer.lock"
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "since": "then"}))
    with run_lock.WriterLock(path, "run x"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_without_filesystem_locks_another_hosts_holder_is_refused_with_the_file_to_delete(tmp_path, no_flock):
    path = tmp_path / "writer.lock"
    path.write_text(json.dumps({"pid": dead_pid(), "host": "elsewhere.example", "since": "then"}))
    with pytest.raises(run_lock.LockHeld, match=f"on host elsewhere.example.*delete {path}"):
        run_lock.WriterLock(path, "run x").acquire()


def test_only_the_chief_of_a_cluster_locks(tmp_path, monkeypatch):
    """The chief holds the lock; another worker, which writes nothing, neither takes nor needs it."""
    run = tmp_path / "run"
    run.mkdir()
    with checkpoints.writing(run, new=False):
        cluster = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
        monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
        with checkpoints.writing(run, new=False):
            pass
        monkeypatch.setenv("TF_CONFIG", json.dumps({**cluster, "task": {"type": "worker", "index": 0}}))
        with pytest.raises(run_lock.LockHeld):
            with checkpoints.writing(run, new=False):
                pass


def test_a_new_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    run = tmp_path / "ck" / "fresh"
    with pytest.raises(RuntimeError):
        with checkpoints.writing(run, new=True):
            assert (run / LOCK_FILE).exists()
            raise RuntimeError("the corpus could not be read")
    assert not (tmp_path / "ck").exists()


def test_resuming_a_run_still_being_created_names_its_writer_rather_than_calling_it_incomplete(tmp_path):
    corpus = tmp_path / "words.txt"
    corpus.write_text("abc " * 100)
    with checkpoints.writing(tmp_path / "ck" / "young", new=True):  # before its config.json is written
        result = run_cli("train", corpus, "--resume", "--run-name", "young", "--checkpoint-dir", tmp_path / "ck")
    assert_user_error(result, "run", "young", f"is being written by process {os.getpid()}")
