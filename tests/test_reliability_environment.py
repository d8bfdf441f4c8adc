"""Failures of the environment: a disk that fills during a save, and a training whose numbers stop being finite.

Either way the run keeps its last complete snapshot as it was (and, for a stateful run, its carried
states), and the user reads one line saying what happened and what to do.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
from types import SimpleNamespace

import numpy as np
import pytest

from chargen import atomic, checkpoints, sessions
from chargen.checkpoints import Run
from chargen.config import TrainingConfig
from chargen.errors import ChargenError
from chargen.training import Callback, Trainer, TrainingDiverged, build_model

from helpers import TINY, assert_user_error, run_cli, signal_after_first_snapshot, write_corpus

LEAN = ["--no-histograms", "--preview-length", "0"]  # nothing these tests look at: spare the time


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def pointers_full(path, text):
    """The snapshot is published; the disk fills as pointers.json is replaced."""
    if path.name == "pointers.json":
        disk_full()
    return write_text(path, text)


write_text = checkpoints.atomic_write_text
WHERE_THE_DISK_FILLS = {
    "writing a snapshot file": (np, "savez", disk_full),
    "flushing the snapshot before publishing it": (atomic, "sync_file", disk_full),
    "replacing the pointers": (checkpoints, "atomic_write_text", pointers_full),
}


def state_of(run: Run) -> dict:
    """Everything a save may touch, so a failed one can be shown to have changed nothing."""
    return {"pointers": (run.path / "pointers.json").read_text(),
            "files": sorted(str(p.relative_to(run.path)) for p in run.path.rglob("*"))}


@pytest.mark.parametrize("where", list(WHERE_THE_DISK_FILLS))
def test_a_disk_full_during_a_save_leaves_the_previous_snapshot_intact(run_copy, monkeypatch, where):
    run = Run.open(run_copy["run"])
    model, before = run.load_model("last"), state_of(run)
    optimizer = SimpleNamespace(variables=[np.zeros(3)])
    monkeypatch.setattr(*WHERE_THE_DISK_FILLS[where])
    with pytest.raises(ChargenError) as raised:
        run.save_snapshot(model, optimizer, {**run.load_progress("last"), "step": 6})
    line = str(raised.value)
    assert "could not save step 6" in line and "No space left on device" in line
    assert "keeps its snapshot of step 4, intact" in line and "free some space" in line and "--resume" in line
    monkeypatch.undo()
    assert state_of(run) == before  # no new snapshot, no temporary left, the pointers untouched
    assert run.load_model("last") is not None and run.load_progress("last")["step"] == 4


def test_a_disk_full_while_recording_metrics_says_so_and_keeps_the_records(run_copy, monkeypatch):
    run = Run.open(run_copy["run"])
    records = run.metrics()
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ChargenError, match="could not record the metrics of step 6 .*No space left on device"):
        run.append_metrics({"step": 6, "loss": 1.0})
    monkeypatch.undo()
    assert run.metrics()[:len(records)] == records


def test_training_on_a_full_disk_stops_with_one_line(run_copy, monkeypatch):
    monkeypatch.setattr(np, "savez", disk_full)
    result = run_cli("train", run_copy["corpus"], *TINY, *LEAN, "--steps", "6", "--resume", "--run-name", "tiny",
                     "--checkpoint-dir", run_copy["checkpoint_dir"])
    assert_user_error(result, "could not save step 6", "No space left on device", "snapshot of step 4", "--resume",
                      after_start=True)
    monkeypatch.undo()
    assert Run.open(run_copy["run"]).load_progress("last")["step"] == 4


def test_a_diverging_stateful_training_stops_there_and_keeps_its_last_good_snapshot_and_states(trained, tmp_path,
                                                                                             monkeypatch):
    """After the save at step 2 the weights turn to NaN (as a too-high learning rate would make them):
    step 3's loss is NaN, training stops there, and step 2's snapshot and states stay as saved."""
    saved_states = {}
    save = sessions.SaveCheckpoints._save

    def save_then_diverge(self, trainer, best):
        save(self, trainer, best)
        saved_states["step 2"] = [np.asarray(state) for layer in trainer.batch_states() for state in layer]
        for variable in trainer.model.trainable_variables:
            variable.assign(np.full(variable.shape, np.nan, np.float32))

    monkeypatch.setattr(sessions.SaveCheckpoints, "_save", save_then_diverge)
    checkpoint_dir = tmp_path / "ck"
    result = run_cli("train", trained["corpus"], *TINY, *LEAN, "--stateful", "--steps", "6", "--run-name", "nan",
                     "--checkpoint-dir", checkpoint_dir)
    line = assert_user_error(result, "training diverged at step 3", "the loss is nan", "lower --learning-rate",
                             "--clip-norm", f"run {checkpoint_dir / 'nan'} keeps its snapshot of step 2",
                             "--init-from", after_start=True)
    assert "--precision" not in line  # the run is float32 already
    run = Run.open(checkpoint_dir / "nan")
    assert run.load_progress("last")["step"] == 2
    assert all(np.isfinite(np.asarray(w)).all() for w in run.load_model("last").weights)
    kept = [state for layer in run.load_states(1, "last") for state in layer]
    assert len(kept) == len(saved_states["step 2"]) == 2  # an LSTM carries h and c
    for state, expected in zip(kept, saved_states["step 2"], strict=True):
        np.testing.assert_array_equal(state, expected)
        assert np.isfinite(state).all()
    assert [record["step"] for record in map(json.loads, (run.path / "metrics.jsonl").read_text().splitlines())] == [2]


def tiny_trainer(precision: str = "float32", callbacks=()) -> Trainer:
    config = TrainingConfig(units=8, num_layers=1, embedding_dim=4, seq_len=8, batch_size=2, clip_norm=0.0,
                            precision=precision)
    ids = np.arange(200, dtype=np.int32) % 5
    return Trainer(build_model(config, 5), config, ids, ids[:50], callbacks=callbacks, xla=False)


@pytest.mark.parametrize("precision, stops", [("float32", True), ("bfloat16", True), ("float16", False)])
def test_a_non_finite_gradient_stops_training_unless_loss_scaling_skips_the_step(precision, stops):
    trainer = tiny_trainer(precision)
    if not stops:  # float16's loss scaling skips a step whose gradients overflowed, and lowers its scale
        trainer._check_finite(7, 1.5, math.inf)
        return
    with pytest.raises(TrainingDiverged) as raised:
        trainer._check_finite(7, 1.5, math.inf)
    line = str(raised.value)
    assert "step 7" in line and "gradients' norm is inf" in line and "--clip-norm 1 (clipping is off)" in line
    assert ("--precision float32" in line) == (precision != "float32")


def test_a_non_finite_validation_loss_stops_before_the_evaluation_is_saved_or_shown():
    """Weights can grow so large that the training loss stays finite while the validation loss does not."""
    evaluations = []

    class Recorder(Callback):
        def on_evaluate(self, trainer, logs):
            evaluations.append(logs)

    trainer = tiny_trainer(callbacks=[Recorder()])
    trainer._evaluator = lambda ids: math.nan
    trainer.progress.step = 5
    with pytest.raises(TrainingDiverged, match="step 5: the validation loss is nan"):
        trainer.run_evaluation({})
    assert evaluations == []  # so no snapshot is saved and no preview drawn from those weights


@pytest.mark.slow
def test_sigterm_stops_training_at_a_step_it_saves_and_exits_143(tmp_path):
    """What `kill`, a batch scheduler or Kubernetes sends before killing: treated as Ctrl-C is (stop, evaluate,
    save, say how to resume), with the status a shell gives a program ended by SIGTERM."""
    corpus = write_corpus(tmp_path / "words.txt")
    run = tmp_path / "ck" / "terminated"

    before = signal.getsignal(signal.SIGTERM)
    sender = signal_after_first_snapshot(run, signal.SIGTERM)
    result = run_cli("train", corpus, *TINY, *LEAN, "--steps", "100000", "--eval-every", "3", "--time-limit", "120",
                     "--checkpoint-dir", run.parent, "--run-name", run.name)
    sender.join()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler was this command's only
    assert result.exit_code == 143, result.output
    assert "Traceback" not in result.output
    reached = int(re.search(r"^step (\d+)", result.stdout, flags=re.MULTILINE).group(1))
    assert 3 <= reached < 100000
    assert Run.open(run).load_progress()["step"] == reached  # saved at the step it stopped
    assert "terminated (SIGTERM) and saved; continue with: chargen train " in result.stderr
