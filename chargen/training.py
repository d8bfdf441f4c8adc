"""The trainer: next-character prediction in one of two modes, reporting only through callbacks.

Modes (see `recurrent.py` for what each does to the gradient):
  - "bptt": loss over every step of the window, gradient through every step. With `stateful`, the
    final state of one window seeds the next window of the same stream (gradient stops between).
  - "teacher-forcing": the input at step t is the observed character t-1, and the state entering
    each step is a constant for the gradient, so each step trains the weights through itself alone.

Adam with gradient clipping by global norm, its learning rate following `config.lr_schedule` toward the
nearest limit; the loss is in nats, reported as bits per character. The model computes in the run's
precision (its dtype policy); the logits, the loss and the optimizer stay float32 (see `make_optimizer`
for float16's loss scaling).
Nothing here prints and nothing here knows a run folder: progress bars, previews and checkpoints are
callbacks the caller attaches (`sessions.py` wires them to a run).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from chargen import budget, corpus
from chargen.config import LR_FLOOR, TrainingConfig
from chargen.errors import ChargenError
from chargen.model import CharModel
from chargen.vocab import Vocabulary

LN2 = math.log(2.0)


class Callback:
    """Hooks the trainer calls; override the ones you need (Keras `Callback`, minGPT `add_callback`)."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, logs: dict) -> None:
        """After each step. logs: step, loss (nats), bpc, learning_rate (of this step), chars_per_second,
        gradient_norm (the global norm of the loss's gradients, before clipping)."""

    def on_evaluate(self, trainer: Trainer, logs: dict) -> None:
        """After each evaluation. logs: step, val_loss, val_bpc, best (bool), plus the last step logs."""

    def on_train_end(self, trainer: Trainer, logs: dict) -> None:
        """Once, with the reason training stopped in logs["stopped_by"]."""


class TrainingDiverged(ChargenError):
    """A step gave a non-finite loss or gradient; training stopped there, before saving that step."""


def _remedies(config: TrainingConfig) -> str:
    """What to change in a run that diverged, given its settings."""
    remedies = [f"a lower --learning-rate than {config.learning_rate:g}"]
    remedies.append("--clip-norm 1 (clipping is off)" if config.clip_norm == 0
                    else f"a smaller --clip-norm than {config.clip_norm:g}")
    if config.precision != "float32":
        remedies.append(f"--precision float32 (not {config.precision})")
    return ", ".join(remedies[:-1]) + " or " + remedies[-1]


@dataclass
class Progress:
    """Where a run is: everything besides weights and optimiser that resuming needs."""

    step: int = 0  # optimiser steps taken
    chars_seen: int = 0  # training characters consumed
    best_val_bpc: float | None = None
    last_val_bpc: float | None = None
    elapsed_seconds: float = 0.0  # training time over all sessions


def sequence_nats(logits, targets):
    """Summed cross-entropy in nats of `targets` (batch, time) under `logits` (batch, time, vocab)."""
    losses = keras.ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    return keras.ops.sum(losses)


def make_optimizer(config: TrainingConfig) -> keras.optimizers.Optimizer:
    """Adam, clipping by global norm; for float16 wrapped in Keras's dynamic loss scaling.

    float16's smallest normal number is about 6e-5, so small gradients computed in it would round to zero:
    the loss is scaled up before the backward pass (`scale_loss`), and the optimizer divides the gradients
    by the same scale before Adam sees them, so Adam clips the true (unscaled) gradients; a step whose
    gradients overflowed is skipped and the scale halved. Its `learning_rate` is Adam's.
    """
    clip = {"global_clipnorm": config.clip_norm} if config.clip_norm > 0 else {}
    adam = keras.optimizers.Adam(learning_rate=config.learning_rate, **clip)
    return keras.optimizers.LossScaleOptimizer(adam) if config.precision == "float16" else adam


def scheduled_learning_rate(config: TrainingConfig, fraction: float | None) -> float:
    """The learning rate `fraction` of the way (0 to 1) to the nearest limit; None: no limit is set.

    Cosine: the rate falls slowly at first, fastest midway and slowly again near the floor, so a run
    whose budget is known spends its start learning fast and its end settling.
    """
    if config.lr_schedule == "constant" or fraction is None:
        return config.learning_rate
    return config.learning_rate * (LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction))))


def build_model(config: TrainingConfig, vocab_size: int) -> CharModel:
    """The run's model, once its size is known to fit in memory (`budget.check_training`)."""
    budget.check_training(config, vocab_size)
    keras.utils.set_random_seed(config.seed)
    model = CharModel(vocab_size, **config.model_arguments())
    model.build()
    return model


class Evaluator:
    """Mean nats per character of a text, carrying the state across consecutive windows.

    Every character of each of `batch_size` contiguous streams but the first is scored once, so the
    figure covers the whole text and is comparable between runs (see `corpus.evaluation_batches`).
    """

    def __init__(self, model: CharModel, seq_len: int, batch_size: int):
        self.model, self.seq_len, self.batch_size = model, seq_len, batch_size
        self._window = tf.function(self._score_window, reduce_retracing=True, autograph=False)

    def _score_window(self, inputs, targets, weights, states):
        logits, final_states = self.model(inputs, states=states, training=False)
        losses = keras.ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        return keras.ops.sum(losses * weights), final_states

    def __call__(self, ids: np.ndarray) -> float:
        total, count = self.score(ids)
        return total / count

    def score(self, ids: np.ndarray) -> tuple[float, int]:
        """Total nats over the scored characters, and how many were scored."""
        batches, count = corpus.evaluation_batches(ids, self.seq_len, self.batch_size)
        total, states = 0.0, self.model.initial_states(len(batches[0].inputs))
        for batch in batches:
            nats, states = self._window(batch.inputs, batch.targets, batch.weights, states)
            total += float(nats)
        return total, count


class Trainer:
    """Trains `model` on `train_ids`, evaluating on `val_ids`.

    Args:
        model: a built `CharModel`.
        config: the run's `TrainingConfig`.
        train_ids, val_ids: int32 arrays of character ids (val_ids may be empty); evaluations score
            `scored_val_ids`, the first `config.val_chars` of val_ids (all when 0).
        optimizer: pass the restored one to resume; `make_optimizer(config)` otherwise.
        progress: pass the restored one to resume.
        carried_states: for a stateful run being resumed, the states at the interruption.
        callbacks: `Callback` instances, called in order.
        vocab: the model's vocabulary, for callbacks that show text.
        xla: compile the training step with XLA (`--no-xla` turns it off; it changes only float rounding).

    Example:
        >>> trainer = Trainer(model, config, train_ids, val_ids, callbacks=[MyPrinter()])
        >>> trainer.fit()
    """

    def __init__(
        self,
        model: CharModel,
        config: TrainingConfig,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        optimizer: keras.optimizers.Optimizer | None = None,
        progress: Progress | None = None,
        carried_states=None,
        callbacks: list[Callback] = (),
        vocab: Vocabulary | None = None,
        xla: bool = True,
    ):
        self.model, self.config, self.vocab = model, config, vocab
        self.train_ids, self.val_ids = train_ids, val_ids
        # An evaluation costs a forward pass over what it scores: capped, it stays a small part of a step
        # budget whatever the corpus's size.
        self.scored_val_ids = val_ids[:config.val_chars] if config.val_chars else val_ids
        self.optimizer = optimizer or make_optimizer(config)
        if not self.optimizer.built:
            self.optimizer.build(model.trainable_variables)
        self.progress = progress or Progress()
        self.callbacks = list(callbacks)
        self.stop_requested = False
        self.last_evaluated_step = None
        self.stopped_by = None  # after fit: "steps", "time" or "interrupt"
        self.carried_states = None
        if config.stateful:  # states restored from a snapshot are float32; the layers carry their compute dtype
            self.carried_states = model.initial_states(config.batch_size) if carried_states is None else [
                [tf.cast(state, model.compute_dtype) for state in layer] for layer in carried_states]
        self.distribution = tf.distribute.get_strategy()  # the one whose scope the model was built in
        self.replicas = self.distribution.num_replicas_in_sync
        if config.batch_size % self.replicas:
            raise ChargenError(f"--batch-size {config.batch_size} does not split evenly among {self.replicas} "
                               f"replicas; give a multiple of {self.replicas}")
        self.cluster = isinstance(self.distribution, tf.distribute.MultiWorkerMirroredStrategy)
        self._gather_from_workers = tf.function(
            lambda local: self.distribution.gather(self.distribution.run(tf.identity, args=(local,)), axis=0))
        self.carried_states = self._distribute_rows(self.carried_states)
        # XLA fuses the many small operations between the matrix products (see the README's Results). Under
        # several replicas the all-reduce between them stays outside XLA: each replica's gradients compile.
        whole_step_xla = xla and self.replicas == 1
        # No AutoGraph: the step's Python branches test settings, never tensors, so converting its code to find
        # tensor control flow would only add a third to the tracing time (the traced graph is the same).
        self._replica_gradients = tf.function(self._gradients, jit_compile=True, autograph=False) \
            if xla and not whole_step_xla else self._gradients
        self._train_step = tf.function(self._distributed_step, reduce_retracing=True, jit_compile=whole_step_xla,
                                       autograph=False)
        self._evaluator = Evaluator(model, config.seq_len, config.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return corpus.steps_per_epoch(len(self.train_ids), self.config.seq_len, self.config.batch_size)

    def step_limit(self) -> int | None:
        """The total step count at which training stops, from --steps and --epochs (the smaller)."""
        limits = [self.config.steps] if self.config.steps else []
        if self.config.epochs:
            limits.append(max(1, round(self.config.epochs * self.steps_per_epoch)))
        return min(limits) if limits else None

    def fraction_done(self, session_seconds: float) -> float | None:
        """How far training is toward its nearest limit (steps and epochs over the run, time over this
        session), from 0 to 1; None when no limit is set."""
        fractions = []
        limit = self.step_limit()
        if limit is not None:
            fractions.append(self.progress.step / limit)
        if self.config.time_limit:
            fractions.append(session_seconds / self.config.time_limit)
        return min(1.0, max(fractions)) if fractions else None

    def _distribute_rows(self, batch):
        """`batch` (tensors whose first axis is the batch's rows) as per-replica values: each replica its
        consecutive share of the rows, in replica order, so a row's stream stays on one replica."""
        if batch is None or self.replicas == 1:
            return batch
        share = self.config.batch_size // self.replicas

        def rows_of(context):
            first = context.replica_id_in_sync_group * share
            return tf.nest.map_structure(lambda tensor: tensor[first:first + share], batch)

        return self.distribution.experimental_distribute_values_from_function(rows_of)

    def batch_states(self):
        """The carried states of every row of the batch, gathered from the replicas (None unless stateful).

        Under several workers this is a collective operation: every worker must call it at the same step.
        """
        if self.carried_states is None or self.replicas == 1:
            return self.carried_states
        return tf.nest.map_structure(lambda state: self.distribution.gather(state, axis=0), self.carried_states)

    def _agree(self, stop: str | None, fraction: float | None) -> tuple[str | None, float | None]:
        """The stop reason and schedule fraction all workers share: the most urgent reason, the largest fraction."""
        reasons = (None, "time", "interrupt")
        local = tf.constant([[reasons.index(stop), -1.0 if fraction is None else fraction]], tf.float32)
        agreed = np.max(self._gather_from_workers(local).numpy(), axis=0)  # over [replicas, 2]
        return reasons[int(agreed[0])], None if agreed[1] < 0 else float(agreed[1])

    def _distributed_step(self, inputs, targets, states):
        """One optimiser step on every replica; the loss and gradient norm, which all replicas share."""
        loss, gradient_norm, final_states = self.distribution.run(self._replica_step, args=(inputs, targets, states))
        if self.replicas > 1:  # every replica holds the same values: take this worker's first
            loss, gradient_norm = (self.distribution.experimental_local_results(value)[0]
                                   for value in (loss, gradient_norm))
        return loss, gradient_norm, final_states

    def _replica_step(self, inputs, targets, states):
        """On each replica: the gradients of its rows, summed over the replicas, then one optimiser step."""
        loss, gradients, final_states = self._replica_gradients(inputs, targets, states)
        if self.replicas > 1:
            loss, gradients = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, (loss, gradients))
        # Before clipping, for the step logs.
        gradient_norm = tf.linalg.global_norm(gradients)
        if self.config.precision == "float16":
            gradient_norm = gradient_norm / self.optimizer.dynamic_scale  # read before `apply` may change it
        if self.replicas > 1:
            gradients = self._shares_to_apply(gradients, gradient_norm)
        self.optimizer.apply(gradients, self.model.trainable_variables)
        return loss, gradient_norm, final_states

    def _shares_to_apply(self, gradients, gradient_norm):
        """What each replica gives Keras's optimizer, which sums the replicas' gradients and clips each one
        before the sum: a 1/replicas share of the batch's gradients, clipped already by their global norm.

        So the step equals one device's (the optimizer's own clipping no longer bites), at the price of a
        second all-reduce.
        """
        factor = 1.0 / self.replicas
        if self.config.clip_norm > 0:
            factor *= self.config.clip_norm / tf.maximum(gradient_norm, self.config.clip_norm)
        return [gradient * tf.cast(factor, gradient.dtype) for gradient in gradients]

    def _gradients(self, inputs, targets, states):
        """This replica's share of the batch's mean loss, its gradients (dense) and the final states of its rows."""
        through_time = self.config.mode == "bptt"
        with tf.GradientTape() as tape:
            logits, final_states = self.model(inputs, states=states, training=True, through_time=through_time)
            # Divided by the whole batch's count, so the replicas' shares sum to the batch's mean.
            count = tf.size(targets) * self.replicas
            loss = sequence_nats(logits, targets) / tf.cast(count, logits.dtype)
            scaled_loss = self.optimizer.scale_loss(loss)  # the loss itself unless loss scaling is on (float16)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        # Dense: the embedding's sparse gradient would be gathered, not summed, across replicas.
        return loss, [tf.convert_to_tensor(gradient) for gradient in gradients], final_states

    def fit(self) -> Progress:
        """Train until a limit is reached or `stop_requested` is set; returns the progress reached."""
        config, progress = self.config, self.progress
        limit = self.step_limit()
        if limit is not None and progress.step >= limit:
            self.stopped_by = "steps"  # already there: nothing to train, evaluate or save
            return progress
        deadline = time.monotonic() + config.time_limit if config.time_limit else None
        dataset = corpus.training_dataset(
            self.train_ids, config.seq_len, config.batch_size, config.seed,
            start_step=progress.step, stateful=config.stateful,
        )
        for callback in self.callbacks:
            callback.on_train_begin(self)
        stopped_by, logs = "steps", {}
        session_began = time.monotonic()
        session_start = session_began - progress.elapsed_seconds
        previous_step_end = time.perf_counter()
        learning_rate = None
        for inputs, targets in dataset:
            if limit is not None and progress.step >= limit:
                break
            stop = "interrupt" if self.stop_requested else None
            if deadline is not None and time.monotonic() >= deadline:
                stop = stop or "time"
            fraction = self.fraction_done(time.monotonic() - session_began)
            if self.cluster:  # the workers' clocks and signals differ: they must stop and schedule alike
                stop, fraction = self._agree(stop, fraction)
            if stop:
                stopped_by = stop
                break
            scheduled = scheduled_learning_rate(config, fraction)
            if scheduled != learning_rate:
                learning_rate = scheduled
                self.optimizer.learning_rate.assign(learning_rate)
            states = self.carried_states if config.stateful else None
            loss, gradient_norm, final_states = self._train_step(
                self._distribute_rows(inputs), self._distribute_rows(targets), states)
            loss, gradient_norm = float(loss), float(gradient_norm)
            self._check_finite(progress.step + 1, loss, gradient_norm)
            if config.stateful:
                self.carried_states = final_states
            progress.step += 1
            progress.chars_seen += int(targets.shape[0] * targets.shape[1])
            progress.elapsed_seconds = time.monotonic() - session_start
            now = time.perf_counter()
            seconds, previous_step_end = now - previous_step_end, now
            logs = {
                "step": progress.step,
                "loss": loss,
                "bpc": loss / LN2,
                "learning_rate": learning_rate,
                "chars_per_second": targets.shape[0] * targets.shape[1] / max(seconds, 1e-9),
                "gradient_norm": gradient_norm,
            }
            for callback in self.callbacks:
                callback.on_step_end(self, logs)
            if config.eval_every and progress.step % config.eval_every == 0:
                self.run_evaluation(logs)
        if progress.step > 0 and self.last_evaluated_step != progress.step:
            self.run_evaluation(logs)
        self.stopped_by = stopped_by
        logs = {**logs, "stopped_by": stopped_by}
        for callback in self.callbacks:
            callback.on_train_end(self, logs)
        return progress

    def _check_finite(self, step: int, loss: float, gradient_norm: float) -> None:
        """Stop before a step's non-finite numbers reach a snapshot: the weights this step updated are lost
        with it, and the run keeps the snapshot saved before. float16's loss scaling skips a step whose
        gradients overflowed (and lowers its scale), so there only the loss counts."""
        if not math.isfinite(loss):
            raise self._diverged(step, f"the loss is {loss}")
        if not math.isfinite(gradient_norm) and self.config.precision != "float16":
            raise self._diverged(step, f"the gradients' norm is {gradient_norm}")

    def _diverged(self, step: int, what: str) -> TrainingDiverged:
        return TrainingDiverged(f"training diverged at step {step}: {what}; try {_remedies(self.config)}")

    def run_evaluation(self, logs: dict) -> None:
        """Evaluate on the scored validation text (if any), update the progress and tell the callbacks."""
        progress = self.progress
        if len(self.scored_val_ids) >= 2:
            val_loss = self._evaluator(self.scored_val_ids)
            if not math.isfinite(val_loss):  # weights so large that only the training loss stayed finite
                raise self._diverged(progress.step, f"the validation loss is {val_loss}")
            val_bpc = val_loss / LN2
            best = progress.best_val_bpc is None or val_bpc < progress.best_val_bpc
            progress.last_val_bpc = val_bpc
            if best:
                progress.best_val_bpc = val_bpc
            logs.update(val_loss=val_loss, val_bpc=val_bpc, best=best)
        else:
            logs.update(val_loss=None, val_bpc=None, best=True)
        logs["step"] = self.last_evaluated_step = progress.step
        for callback in self.callbacks:
            callback.on_evaluate(self, logs)
