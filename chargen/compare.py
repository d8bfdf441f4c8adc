"""`chargen compare`: a grid of small models trained on recall sources under one budget each, side by side.

Each point of the grid (cell x mode x activation x lag) trains a fresh one-layer model on a cued recall source
(`synthetic.recall_source(..., cue=True)`: a key, `lag` filler characters, `=`, the key again) with the same
settings and the same budget of steps or seconds, and is scored on the source's held-out tail: its bits per
character against the source's two floors (the entropy rate, reachable only by carrying the key across the
filler, and the best a model without that memory can do), and its bits on the recalled keys alone, the
characters after a cue, which are 0 for a model that remembers and log2 NUM_KEYS for one that guesses.

The cue matters: without it, knowing when the key comes back means counting `lag` filler letters, itself a
dependency as long as the recall, and a model that has not learned to count scores above the no-recall
floor even if it remembers the key. The bits per character still include the cue's position (both floors
assume it is known); the bits on the recalled key do not. So "plain RNNs forget", "the gates remember" and
"teacher forcing never learns to carry anything" become one table. Repeatable with a seed (up to float
rounding between machines).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass

import keras
import numpy as np

from chargen import corpus, synthetic
from chargen.atomic import atomic_file
from chargen.config import TrainingConfig
from chargen.errors import ChargenError
from chargen.model import CharModel
from chargen.training import Trainer, build_model
from chargen.vocab import Vocabulary

# The recall sources: keys and filler drawn from these many letters, this much text per source.
NUM_KEYS, FILLER_SIZE, SOURCE_LENGTH = 4, 2, 60_000
# What every point of the grid shares (the trainer's statistical tests use the same small model).
SETTINGS = dict(num_layers=1, embedding_dim=8, batch_size=32, eval_every=0, val_chars=0, lr_schedule="constant")
# Adam's rate unless asked: a recall task wants more than language modelling's default (see the README).
LEARNING_RATE = 1e-2


@dataclass(frozen=True)
class Trial:
    """One point of the grid."""

    cell: str
    mode: str
    activation: str
    lag: int


@dataclass(frozen=True)
class Outcome:
    """One trained point: its validation bits per character against the source's floors, and its cost."""

    cell: str
    mode: str
    activation: str
    lag: int
    val_bpc: float
    floor: float  # the source's entropy rate
    no_recall: float  # the best without carrying the key across the filler
    key_bits: float  # mean bits on the recalled keys of the validation text: 0 remembers, log2 NUM_KEYS guesses
    steps: int
    seconds: float
    chars_per_second: float
    parameters: int

    @property
    def recalled(self) -> float:
        """The share of the key's information the model recovers where it is recalled: 1 - key_bits / log2 keys
        (1: every key remembered; 0: guessed uniformly; below 0: worse than guessing)."""
        return 1.0 - self.key_bits / math.log2(NUM_KEYS)

    def to_dict(self) -> dict:
        return {**asdict(self), "recalled": self.recalled}


def grid(cells, modes, activations, lags) -> list[Trial]:
    """Every combination, except a non-tanh activation on a gated cell (it keeps its own)."""
    return [Trial(cell, mode, activation, lag)
            for cell, mode, activation, lag in itertools.product(cells, modes, activations, lags)
            if cell == "rnn" or activation == "tanh"]


def run_trial(trial: Trial, units: int, steps: int | None, seconds: float | None, seed: int,
              learning_rate: float = LEARNING_RATE) -> Outcome:
    """Train the trial's model for the budget (steps, seconds, or whichever comes first) and score it."""
    source = synthetic.recall_source(trial.lag, NUM_KEYS, FILLER_SIZE, SOURCE_LENGTH, seed, cue=True)
    config = TrainingConfig(cell=trial.cell, mode=trial.mode, activation=trial.activation, units=units,
                            seq_len=window_length(trial.lag), steps=steps, time_limit=seconds, seed=seed,
                            learning_rate=learning_rate, **SETTINGS)
    vocab = Vocabulary.from_text(source.text)
    train_ids, val_ids = corpus.split_ids(vocab.encode(source.text), config.val_fraction, config.seq_len)
    model = build_model(config, len(vocab))
    trainer = Trainer(model, config, train_ids, val_ids, vocab=vocab, xla=False)
    began = time.monotonic()
    progress = trainer.fit()
    elapsed = time.monotonic() - began
    cue_id = vocab.encode(synthetic.RECALL_CUE)[0]
    key_bits = recalled_key_bits(model, val_ids, cue_id, trial.lag, config.seq_len, config.batch_size)
    return Outcome(trial.cell, trial.mode, trial.activation, trial.lag, progress.last_val_bpc,
                   source.entropy_bits_per_char, source.no_recall_bits_per_char, key_bits, progress.step,
                   elapsed, progress.chars_seen / max(progress.elapsed_seconds, 1e-9), model.count_params())


def window_length(lag: int) -> int:
    """Training windows of at least two records, so every key and its recall share a window somewhere (a window
    starts from the zero state at a random place: a recall whose key came before it cannot be learned)."""
    return max(32, 2 * (lag + 4))


def recalled_key_bits(model: CharModel, ids: np.ndarray, cue_id: int, lag: int, seq_len: int,
                      batch_size: int) -> float:
    """Mean bits the model spends on each recalled key whose first copy it has read, reading `ids` as the
    trainer's evaluation does (stateful streams, `corpus.evaluation_batches`).

    A recalled key is the character after a cue; its first copy is `lag + 1` characters before the cue. Where a
    stream starts between the two, no model could know the key, so that recall is left out: counting it would
    put a floor under the key bits that depends on the batch size (streams of about 190 characters at lag 20
    cut one record in eight), not on memory.
    """
    batches, _ = corpus.evaluation_batches(ids, seq_len, batch_size)
    states, nats, count = model.initial_states(len(batches[0].inputs)), 0.0, 0.0
    for window, batch in enumerate(batches):
        logits, states = model(batch.inputs, states=states)  # (rows, seq_len, vocab)
        losses = keras.ops.sparse_categorical_crossentropy(batch.targets, logits, from_logits=True)
        key_read = window * seq_len + np.arange(seq_len) > lag  # (seq_len,): the stream has read the first copy
        recalls = batch.weights * (batch.inputs == cue_id) * key_read  # (rows, seq_len): 1 on a recalled key
        nats += float(np.sum(np.asarray(losses) * recalls))
        count += float(recalls.sum())
    return nats / max(count, 1.0) / math.log(2)


def format_table(outcomes: list[Outcome]) -> str:
    """One row per trial: bits per character, the two floors, the bits on the recalled key and the share of it
    recalled, speed, size."""
    lines = [f"{'cell':<5} {'mode':<15} {'activation':<10} {'lag':>4} {'val bpc':>8} {'floor':>7} "
             f"{'no recall':>9} {'key bits':>8} {'recalled':>8} {'steps':>6} {'chars/s':>8} {'params':>7}"]
    for o in outcomes:
        lines.append(f"{o.cell:<5} {o.mode:<15} {o.activation:<10} {o.lag:>4} {o.val_bpc:8.4f} {o.floor:7.4f} "
                     f"{o.no_recall:9.4f} {o.key_bits:8.3f} {o.recalled:8.0%} {o.steps:6d} "
                     f"{o.chars_per_second:8,.0f} {o.parameters:7,d}")
    return "\n".join(lines)


def plot(outcomes: list[Outcome], output) -> None:
    """A PNG with a bar per trial: the share of the key's information it recalled (1: every key remembered)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ChargenError("--plot needs matplotlib, an optional extra: pip install 'chargen[plot]'") from None
    figure = Figure(figsize=(8, 1.5 + 0.35 * len(outcomes)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    labels = [f"{o.cell} {o.mode} {o.activation} lag {o.lag}" for o in outcomes]
    axes.barh(range(len(outcomes)), [o.recalled for o in outcomes], color=[f"C{i % 10}" for i in range(len(outcomes))])
    axes.set_yticks(range(len(outcomes)), labels, fontsize="small")
    axes.invert_yaxis()
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("share of the key recalled: 0 = guessed, 1 = every key remembered")
    axes.grid(axis="x", alpha=0.3)
    try:
        with atomic_file(output, binary=True) as file:
            figure.savefig(file, format="png")
    except OSError as error:
        raise ChargenError(f"cannot write --plot {output} ({error.strerror}); choose a writable path") from None
