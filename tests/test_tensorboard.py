"""TensorBoard event files: the tags and steps a run writes, their values against the run's own records,
and a resume after a kill that logs every step once. The gradient norm of the step logs is checked against a
gradient computed here."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from chargen import corpus
from chargen.checkpoints import Run
from chargen.config import TrainingConfig
from chargen.sessions import new_session, resume_session
from chargen.tensorboard import STEP_SCALARS, TensorBoardLogs, last_logged_steps
from chargen.training import Callback, Trainer, build_model, sequence_nats

from helpers import TINY, run_cli, write_corpus

LAYERS_TAGS = ["embedding/embeddings", "recurrent_0/lstm_cell_0/input_kernel",
               "recurrent_0/lstm_cell_0/recurrent_kernel", "recurrent_0/lstm_cell_0/bias", "logits/kernel",
               "logits/bias"]  # TINY's one-layer LSTM


def read_events(folder) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Every (step, value) logged under each tag in a folder's event files, in file order."""
    values: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return values


def steps(values, tag) -> list[int]:
    return [step for step, _ in values[tag]]


def test_a_trained_run_logs_its_scalars_preview_and_histograms(trained):
    logs, records = trained["run"] / "logs", Run.open(trained["run"]).metrics()
    train, validation = read_events(logs / "train"), read_events(logs / "validation")
    for tag in STEP_SCALARS:
        assert steps(train, tag) == [1, 2, 3, 4], tag
    assert set(validation) == {"loss", "bpc"}
    assert steps(validation, "bpc") == [2, 4]
    for record in records:  # the values metrics.jsonl holds for the same steps
        step_values = {tag: dict(train[tag])[record["step"]] for tag in ("loss", "bpc", "learning_rate")}
        assert step_values["loss"] == pytest.approx(record["loss"], rel=1e-6)
        assert step_values["bpc"] == pytest.approx(record["bpc"], rel=1e-6)
        assert step_values["learning_rate"] == pytest.approx(record["learning_rate"], rel=1e-6)
        assert dict(validation["bpc"])[record["step"]] == pytest.approx(record["val_bpc"], rel=1e-6)
        assert dict(validation["loss"])[record["step"]] == pytest.approx(record["val_loss"], rel=1e-6)
    assert all(value > 0 for _, value in train["chars_per_second"] + train["gradient_norm"])
    # The preview logged is the one the terminal showed (as a Markdown code block, four spaces in).
    assert steps(train, "preview") == [2, 4]
    shown = trained["result"].stderr
    for _, text in train["preview"]:
        lines = text.item().decode().split("\n")
        assert all(line.startswith("    ") for line in lines)
        assert "\n".join("  | " + line[4:] for line in lines) in shown
    for tag in LAYERS_TAGS:
        assert steps(train, "weights/" + tag) == [2, 4]
        assert steps(train, "gradients/" + tag) == [2, 4]


def test_the_last_weight_histograms_describe_the_saved_weights(trained):
    train = read_events(trained["run"] / "logs" / "train")
    model = Run.open(trained["run"]).load_model("last")  # saved at step 4, the last evaluation
    for variable in model.trainable_variables:
        tag = "weights/" + variable.path.split("/", 1)[1]
        step, buckets = train[tag][-1]  # (left edge, right edge, count) per bucket
        weights = variable.numpy()
        assert step == 4
        assert buckets[:, 2].sum() == weights.size
        assert buckets[0, 0] == pytest.approx(weights.min(), abs=1e-6)
        assert buckets[-1, 1] == pytest.approx(weights.max(), abs=1e-6)


def test_tensorboards_own_reader_sees_the_layout(trained):
    train = EventAccumulator(str(trained["run"] / "logs" / "train"), size_guidance={"tensors": 0}).Reload()
    validation = EventAccumulator(str(trained["run"] / "logs" / "validation"), size_guidance={"tensors": 0}).Reload()
    assert {"loss", "bpc", "learning_rate", "chars_per_second", "gradient_norm", "preview"} <= set(
        train.Tags()["tensors"])
    assert [event.step for event in validation.Tensors("bpc")] == [2, 4]


def test_no_histograms_flag(tmp_path):
    corpus_path = write_corpus(tmp_path / "words.txt")
    result = run_cli("train", corpus_path, *TINY, "--steps", "2", "--checkpoint-dir", tmp_path, "--run-name", "r",
                     "--no-histograms", "--preview-length", "0")
    assert result.exit_code == 0, result.output
    tags = set(read_events(tmp_path / "r" / "logs" / "train"))
    assert tags == set(STEP_SCALARS)  # no histograms, and no preview at length 0


class StepLogs(Callback):
    def __init__(self):
        self.logs = []

    def on_step_end(self, trainer, logs):
        self.logs.append(dict(logs))


class StopAbruptly(Callback):
    """Raises after a step is logged, as a kill between two evaluations would leave the run."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_end(self, trainer, logs):
        if logs["step"] == self.at_step:
            raise RuntimeError("killed")


@pytest.mark.parametrize("flush_seconds", [0, 3600], ids=["written-each-step", "buffered"])
def test_a_run_resumed_after_a_kill_logs_every_step_once(tmp_path, flush_seconds):
    text_corpus = corpus.resolve_corpus([str(write_corpus(tmp_path / "words.txt"))])
    config = TrainingConfig(units=16, num_layers=1, embedding_dim=8, seq_len=16, batch_size=8, steps=8,
                            eval_every=3, lr_schedule="constant")
    run_path = tmp_path / "run"
    first = TensorBoardLogs(run_path, flush_seconds=flush_seconds)
    trainer = new_session(text_corpus, config, run_path, callbacks=[first, StopAbruptly(at_step=5)], xla=False)
    with pytest.raises(RuntimeError, match="killed"):
        trainer.fit()
    for writer in first.writers.values():
        writer.flush()  # what was written reached the disk; what was buffered is lost, as in a kill
    assert Run.open(run_path).load_progress()["step"] == 3
    logged_before = read_events(run_path / "logs" / "train")
    # Written at once, steps 4 and 5 (past the snapshot of step 3) are on disk: the worst case for duplicates.
    assert steps(logged_before, "loss") == ([1, 2, 3, 4, 5] if flush_seconds == 0 else [1, 2, 3])

    retrained = StepLogs()
    resumed = resume_session(text_corpus, Run.open(run_path), {}, callbacks=[TensorBoardLogs(run_path), retrained],
                             xla=False)
    assert resumed.progress.step == 3
    resumed.fit()
    train, validation = read_events(run_path / "logs" / "train"), read_events(run_path / "logs" / "validation")
    for tag in STEP_SCALARS:
        assert steps(train, tag) == list(range(1, 9)), tag
    assert steps(validation, "bpc") == [3, 6, 8]
    assert steps(train, "preview") == [3, 6, 8]
    assert steps(train, "weights/logits/kernel") == [3, 6, 8]
    assert len(list((run_path / "logs" / "train").glob("events.out.tfevents.*"))) == 2  # appended, not rewritten
    # Resuming is exact: the values logged before the kill are those of the steps trained again.
    for logs in retrained.logs[:2]:
        assert dict(train["loss"])[logs["step"]] == pytest.approx(logs["loss"], rel=1e-6)
    accumulator = EventAccumulator(str(run_path / "logs" / "train"), size_guidance={"tensors": 0}).Reload()
    assert [event.step for event in accumulator.Tensors("loss")] == list(range(1, 9))


def test_a_record_torn_by_a_kill_ends_its_file(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in (1, 2, 3):
            tf.summary.scalar("loss", 1.0 / step, step=step)
    writer.close()
    [path] = tmp_path.glob("events.out.tfevents.*")
    assert last_logged_steps(tmp_path) == {"loss": 3}
    path.write_bytes(path.read_bytes()[:-5])  # the last record loses its end
    assert last_logged_steps(tmp_path) == {"loss": 2}
    assert last_logged_steps(tmp_path / "absent") == {}


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_the_gradient_norm_is_that_of_the_dense_gradient_before_clipping(precision):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 12, 2000).astype(np.int32)
    config = TrainingConfig(units=16, num_layers=1, embedding_dim=8, seq_len=16, batch_size=8, steps=1,
                            eval_every=0, precision=precision, clip_norm=0.01, stateful=False)  # clipping bites
    reference = build_model(config, 12)  # the same seed: the same initial weights
    inputs, targets = corpus.training_batch(ids, 16, 8, config.seed, step=0)
    with tf.GradientTape() as tape:
        logits, _ = reference(inputs, training=True)
        loss = sequence_nats(logits, targets) / targets.size
    gradients = tape.gradient(loss, reference.trainable_variables)
    # The embedding's gradient comes as rows, a character's row once per occurrence: dense, the rows add up.
    expected = np.sqrt(sum(np.sum(np.square(tf.convert_to_tensor(g).numpy().astype(np.float64))) for g in gradients))
    recorder = StepLogs()
    Trainer(build_model(config, 12), config, ids, ids[:0], callbacks=[recorder], xla=False).fit()
    [logs] = recorder.logs
    assert expected > 0.01  # so clipping changed the step, and the norm logged is the one before it
    assert logs["gradient_norm"] == pytest.approx(expected, rel=1e-5 if precision == "float32" else 1e-2)
    assert isinstance(logs["gradient_norm"], float)
