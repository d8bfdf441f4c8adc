"""Quality in ten minutes: `chargen train CORPUS --time-limit T` with its defaults against Keras's LSTM(512).

The figure a user feels first. Both models train for the same wall-clock budget, one after the other in the
same run, on the first 90% of tiny shakespeare (read in place from ../shared/corpora; never copied), and are
scored the same way on the last 10%: contiguous streams with the state carried from window to window
(`corpus.evaluation_batches`), with the window and the number of streams that `chargen eval` uses for the
chargen run (its window and batch size).

- chargen: exactly what a new user runs, `chargen train CORPUS --time-limit T` (plus `--quiet` and a
  scratch checkpoint folder, which change nothing in the model), scored as `chargen eval RUN TAIL` does
  (the best snapshot).
- Keras: `Embedding(64) -> LSTM(512) -> Dense`, Adam 2e-3 with global clip norm 5, batch 64, window 100,
  random windows drawn as chargen draws them (`corpus.training_dataset`), its step compiled with
  `tf.function` (XLA made Keras's LSTM slower in the training bench), trained until the budget is spent.

Skipped when the corpus is not there.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from bench.quality import CORPUS

KERAS = {"embedding": 64, "units": 512, "batch": 64, "window": 100, "learning_rate": 2e-3, "clip_norm": 5.0}
LN2 = math.log(2.0)


def run(quick: bool, corpus_path: Path = CORPUS, log=print, seconds: float | None = None,
        keras_sizes: dict | None = None, chargen_options: tuple[str, ...] = ()) -> dict:
    """Train both for `seconds` (600, or 30 with `quick`) and score them on the validation tail.

    `keras_sizes` replaces `KERAS` and `chargen_options` are added to `chargen train` (the tests use both
    to make tiny models; the benchmark itself uses neither).
    """
    if not corpus_path.is_file():
        return {"skipped": f"{corpus_path} not found"}
    from chargen.corpus import read_corpus, split_ids
    from chargen.vocab import Vocabulary

    seconds = seconds or (30.0 if quick else 600.0)
    text = read_corpus(corpus_path).text
    vocab = Vocabulary.from_text(text)
    sizes = keras_sizes or KERAS
    log(f"    chargen train with its defaults for {seconds:.0f} s ...")
    chargen_row = train_chargen(corpus_path, vocab, seconds, chargen_options)
    scoring = chargen_row.pop("scoring")
    train_ids, val_ids = split_ids(vocab.encode(text), 0.1, scoring["window"])
    log(f"    chargen: {chargen_row['val_bpc']:.3f} bits/char after {chargen_row['steps']:,} steps")
    log(f"    Keras LSTM({sizes['units']}) for {seconds:.0f} s ...")
    keras_row = train_keras(train_ids, val_ids, len(vocab), seconds, sizes, scoring)
    log(f"    Keras: {keras_row['val_bpc']:.3f} bits/char after {keras_row['steps']:,} steps")
    return {"corpus": str(corpus_path), "seconds": seconds, "scoring": scoring, "keras_sizes": sizes,
            "rows": [chargen_row, keras_row], "lead_bpc": keras_row["val_bpc"] - chargen_row["val_bpc"]}


def train_chargen(corpus_path: Path, vocab, seconds: float, options: tuple[str, ...] = ()) -> dict:
    """`chargen train CORPUS --time-limit seconds` through the command line, then `chargen eval` on the tail
    that training held out; the row says how that evaluation scored (`scoring`), for Keras to do the same."""
    from click.testing import CliRunner

    from chargen.checkpoints import Run
    from chargen.cli import cli
    from chargen.config import TrainingConfig
    from chargen.corpus import read_corpus, split_ids
    from chargen.sessions import evaluate_run

    with tempfile.TemporaryDirectory() as folder:
        result = CliRunner().invoke(cli, ["train", str(corpus_path), "--time-limit", str(seconds), "--quiet",
                                          "--checkpoint-dir", folder, "--run-name", "ten-minutes", *options])
        if result.exit_code != 0:
            raise RuntimeError(f"chargen train failed: {result.output}")
        run = Run.open(Path(folder) / "ten-minutes")
        config = TrainingConfig.from_saved(run.config["training"])
        _, val_ids = split_ids(vocab.encode(read_corpus(corpus_path).text), config.val_fraction, config.seq_len)
        tail = Path(folder) / "tail.txt"
        tail.write_text(vocab.decode(val_ids), encoding="utf-8")
        scored = evaluate_run(run, read_corpus(tail))
        progress = run.load_progress("last")
    return {"model": f"chargen train: {config.cell} {config.num_layers} x {config.units}, batch "
                     f"{config.batch_size}, window {config.seq_len}, {config.mode}",
            "val_bpc": scored["bits_per_char"], "steps": progress["step"], "chars_seen": progress["chars_seen"],
            "scoring": {"window": config.seq_len, "streams": config.batch_size}}


def train_keras(train_ids, val_ids, vocab_size: int, seconds: float, sizes: dict, scoring: dict) -> dict:
    """Keras's own LSTM character model, trained for `seconds` of wall-clock time, scored with carried state."""
    import keras
    import tensorflow as tf

    from chargen.corpus import training_dataset

    keras.utils.set_random_seed(0)
    embedding = keras.layers.Embedding(vocab_size, sizes["embedding"])
    lstm = keras.layers.LSTM(sizes["units"], return_sequences=True, return_state=True)
    head = keras.layers.Dense(vocab_size)
    ids = keras.Input((None,), dtype="int32")
    h0, c0 = keras.Input((sizes["units"],)), keras.Input((sizes["units"],))
    outputs, h, c = lstm(embedding(ids), initial_state=[h0, c0])
    model = keras.Model([ids, h0, c0], [head(outputs), h, c])
    optimizer = keras.optimizers.Adam(learning_rate=sizes["learning_rate"], global_clipnorm=sizes["clip_norm"])
    optimizer.build(model.trainable_variables)
    zeros = tf.zeros((sizes["batch"], sizes["units"]))

    @tf.function(reduce_retracing=True)
    def step(inputs, targets):
        with tf.GradientTape() as tape:
            logits, _, _ = model([inputs, zeros, zeros], training=True)
            losses = keras.ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
            loss = keras.ops.mean(losses)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    batches = training_dataset(train_ids, sizes["window"], sizes["batch"], seed=0)
    deadline, count = time.monotonic() + seconds, 0
    for inputs, targets in batches:
        if time.monotonic() >= deadline:
            break
        step(inputs, targets)
        count += 1
    return {"model": f"Keras LSTM({sizes['units']}), embedding {sizes['embedding']}, batch {sizes['batch']}, "
                     f"window {sizes['window']}",
            "val_bpc": score_keras(model, val_ids, scoring), "steps": count,
            "chars_seen": count * sizes["batch"] * sizes["window"]}


def score_keras(model, val_ids, scoring: dict) -> float:
    """Bits per character on `val_ids` with the state carried across windows, as chargen's evaluator scores."""
    import keras
    import numpy as np
    import tensorflow as tf

    from chargen.corpus import evaluation_batches

    batches, count = evaluation_batches(val_ids, scoring["window"], scoring["streams"])
    rows = len(batches[0].inputs)
    h = c = tf.zeros((rows, model.inputs[1].shape[-1]))

    @tf.function(reduce_retracing=True)
    def window(inputs, targets, weights, h, c):
        logits, h, c = model([inputs, h, c], training=False)
        losses = keras.ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
        return keras.ops.sum(losses * weights), h, c

    total = 0.0
    for batch in batches:
        nats, h, c = window(batch.inputs, batch.targets, batch.weights, h, c)
        total += float(np.asarray(nats))
    return total / count / LN2
