"""TensorBoard event files for a run, written by a training callback; `tensorboard --logdir checkpoints/` shows them.

    <run>/logs/train/        every step: loss (nats), bpc, learning_rate, chars_per_second, gradient_norm;
                             every evaluation: the preview sample (text), weights/* and gradients/* histograms
    <run>/logs/validation/   every evaluation: loss, bpc

The two folders are two writers with the same tag names, as Keras's TensorBoard callback lays them out, so
TensorBoard draws the training and validation curves of a tag in one chart.

A resumed run appends a new event file to each folder. A run killed between two evaluations may have
written steps past its last snapshot (the step scalars are buffered, and written every few seconds), and it
trains them again when resumed: this callback reads what the folders already hold and writes a tag only at
steps after the last one logged under it, so every step appears once, whether the kill lost the buffer or
not. (Resuming is exact, so the steps trained again are the steps already logged.)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata

from chargen import corpus
from chargen.training import Callback, Trainer, sequence_nats

LOGS = "logs"  # the folder inside the run
STEP_SCALARS = ("loss", "bpc", "learning_rate", "chars_per_second", "gradient_norm")
VALIDATION_SCALARS = {"loss": "val_loss", "bpc": "val_bpc"}  # tag -> key of the evaluation logs
PREVIEW_TEMPERATURE = 0.8  # that of the terminal's preview (`reporting.Preview`), so both show the same text
HISTOGRAM_BUCKETS = 30


def last_logged_steps(folder: Path) -> dict[str, int]:
    """The last step logged under each tag in the event files of `folder` (empty if there are none).

    A record torn by a kill ends its file: what comes before it counts.
    """
    last: dict[str, int] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    last[value.tag] = max(event.step, last.get(value.tag, event.step))
        except tf.errors.DataLossError:
            continue
    return last


class TensorBoardLogs(Callback):
    """Writes a run's TensorBoard event files (see the module docstring).

    Args:
        run_path: the run folder; the event files go under its `logs/`.
        histograms: write weight and gradient histograms at each evaluation.
        preview_length: characters of the sample logged as text at each evaluation (0: none).
        flush_seconds: the step scalars are buffered, and written this often and at every evaluation.
    """

    def __init__(self, run_path: Path, histograms: bool = True, preview_length: int = 120,
                 flush_seconds: float = 5.0):
        self.folder = Path(run_path) / LOGS
        self.histograms, self.preview_length, self.flush_seconds = histograms, preview_length, flush_seconds
        self.writers = {}
        self.logged = {}  # writer name -> {tag: last step already in its files}
        self.pending = {tag: [] for tag in STEP_SCALARS}  # (step, value) not yet written
        self.last_write = time.monotonic()
        self._gradients = tf.function(_loss_gradients, reduce_retracing=True)
        series = [tf.TensorSpec([], tf.string), tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32)]
        self._write_series = tf.function(_write_series, input_signature=series)  # the tag an input: traced once

    def on_train_begin(self, trainer: Trainer) -> None:
        for name in ("train", "validation"):
            self.logged[name] = last_logged_steps(self.folder / name)
            self.writers[name] = tf.summary.create_file_writer(str(self.folder / name), max_queue=100,
                                                               flush_millis=5_000)

    def _new(self, writer: str, tag: str, step: int) -> bool:
        return step > self.logged[writer].get(tag, 0)

    def on_step_end(self, trainer: Trainer, logs: dict) -> None:
        """Buffers the step's scalars: one summary call per step would cost a few percent of a small step."""
        step = logs["step"]
        for tag in STEP_SCALARS:
            if self._new("train", tag, step):
                self.pending[tag].append((step, logs[tag]))
        if time.monotonic() - self.last_write >= self.flush_seconds:
            self._write_pending()

    def _write_pending(self) -> None:
        with self.writers["train"].as_default():
            for tag, series in self.pending.items():
                if series:
                    steps, values = zip(*series)
                    self._write_series(tf.constant(tag), tf.constant(steps, tf.int64),
                                       tf.constant(values, tf.float32))
                    series.clear()
        self.last_write = time.monotonic()

    def on_evaluate(self, trainer: Trainer, logs: dict) -> None:
        step = logs["step"]
        self._write_pending()
        with self.writers["validation"].as_default(step=step):
            for tag, key in VALIDATION_SCALARS.items():
                if logs.get(key) is not None and self._new("validation", tag, step):
                    tf.summary.scalar(tag, logs[key])
        with self.writers["train"].as_default(step=step):
            if self.preview_length > 0 and trainer.vocab is not None and self._new("train", "preview", step):
                tf.summary.text("preview", _as_markdown_code(self._preview(trainer, step)))
            # Not under several replicas (--devices, TF_CONFIG): the gradients here would need a step of their own
            # on every replica, and this callback runs on the chief alone.
            if self.histograms and trainer.replicas == 1 and \
                    self._new("train", "weights/" + _tag(trainer.model.trainable_variables[0]), step):
                self._write_histograms(trainer)
        for writer in self.writers.values():  # before the snapshot is saved (that callback comes last)
            writer.flush()

    def on_train_end(self, trainer: Trainer, logs: dict) -> None:
        self._write_pending()
        for writer in self.writers.values():
            writer.close()

    def _preview(self, trainer: Trainer, step: int) -> str:
        from chargen.generation import GenerationRequest, NumpyStepper, generate
        from chargen.sampling import registry

        request = GenerationRequest(length=self.preview_length, temperature=PREVIEW_TEMPERATURE, seed=step)
        return generate(NumpyStepper(trainer.model), trainer.vocab, registry.load("random").create(), request)[0]

    def _write_histograms(self, trainer: Trainer) -> None:
        """The weights, and the gradients of the loss on the batch the next step will train on."""
        config, variables = trainer.config, trainer.model.trainable_variables
        inputs, targets = corpus.training_batch(trainer.train_ids, config.seq_len, config.batch_size, config.seed,
                                                trainer.progress.step, config.stateful)
        gradients = self._gradients(trainer.model, inputs, targets, trainer.carried_states,
                                    through_time=config.mode == "bptt")
        for variable, gradient in zip(variables, gradients):
            _histogram("weights/" + _tag(variable), variable.numpy())
            _histogram("gradients/" + _tag(variable), tf.convert_to_tensor(gradient).numpy())


def _write_series(tag, steps, values) -> None:
    """Scalars `values` at `steps` under `tag` (a string tensor, so that one trace serves every tag), in one call
    (a loop in the graph) to the default writer.

    `tf.summary.write` keeps the tag as given (`tf.summary.scalar` would prefix the loop's name scope).
    """
    metadata = scalar_metadata.create_summary_metadata("", "")
    for index in tf.range(tf.size(steps)):
        tf.summary.write(tag, values[index], step=steps[index], metadata=metadata)


def _histogram(tag: str, values: np.ndarray) -> None:
    """A histogram in TensorBoard's form, (left edge, right edge, count) per bucket, counted by numpy:
    `tf.summary.histogram` took over ten times as long for a model's weights."""
    counts, edges = np.histogram(values.astype(np.float64), bins=HISTOGRAM_BUCKETS)
    buckets = np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
    tf.summary.write(tag, buckets, metadata=histogram_metadata.create_summary_metadata("", ""))


def _loss_gradients(model, inputs, targets, states, through_time: bool):
    """The gradients of the mean loss in nats per character, without dropout (which would draw random numbers
    and so change the training that follows).

    The loss is not scaled: in a float16 run the smallest gradients may round to zero here, which moves a
    histogram's tail but not its shape.
    """
    with tf.GradientTape() as tape:
        logits, _ = model(inputs, states=states, training=False, through_time=through_time)
        loss = sequence_nats(logits, targets) / tf.cast(tf.size(targets), logits.dtype)
    return tape.gradient(loss, model.trainable_variables)


def _tag(variable) -> str:
    """A weight's path without the model's own name: "recurrent_0/lstm_cell_0/input_kernel"."""
    return variable.path.split("/", 1)[-1]


def _as_markdown_code(text: str) -> str:
    """TensorBoard renders text as Markdown; indented four spaces, a sample shows verbatim, line breaks kept."""
    return "\n".join("    " + line for line in text.split("\n"))
