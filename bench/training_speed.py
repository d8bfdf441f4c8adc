"""Training throughput: chargen's training step against Keras's built-in recurrent layers.

For each cell (rnn, gru, lstm) these steps are compiled and timed in the same process:

- chargen, mode bptt: `chargen.training.Trainer`'s own compiled step (`CharModel(..., through_time=True)`,
  mean cross-entropy, `tf.GradientTape`, Adam with global-norm clipping), exactly what `fit` calls,
  compiled with XLA as `chargen train` does by default;
- chargen, mode teacher-forcing: the same with `through_time=False`;
- the same two without XLA (`--no-xla`), so XLA's own gain shows;
- the same two with the recurrent layers switched to the generic path (`Recurrent.fused = False`:
  the cell's `call` in a loop, differentiated automatically), the reference the fused kernels are
  tested against, so the fused kernels' own gain shows;
- Keras: `keras.Sequential([Embedding, SimpleRNN/GRU/LSTM(return_sequences=True) x layers, Dense])`
  with the same sizes (the parameter counts are checked equal), trained by the same step written out
  (same loss, tape, Adam and clipping) in a `tf.function`, once plain and once with XLA
  (`jit_compile=True`, what `model.fit` picks when it can). Keras's GRU is built with
  `reset_after=False`, the form chargen's `GRUCell` uses by default. Keras has no teacher-forcing
  mode: both chargen modes are compared with these Keras steps.

After compiling and warming up, the variants are timed in interleaved rounds (one step of each per
round), so a burst of load on the shared machine hits all alike; each figure is the median.
Throughput is training characters per second: batch x window / seconds per step.
"""

from __future__ import annotations

import gc

import numpy as np

from bench.common import summary, time_once

VOCAB_SIZE = 65
LEARNING_RATE, CLIP_NORM = 2e-3, 5.0
CELLS = ("rnn", "gru", "lstm")


def sizes(quick: bool) -> dict:
    if quick:
        return {"layers": 2, "units": 128, "embedding": 64, "batch": 32, "window": 50, "rounds": 4, "warmup": 2}
    return {"layers": 2, "units": 512, "embedding": 64, "batch": 64, "window": 100, "rounds": 9, "warmup": 2}


def chargen_step(cell: str, mode: str, size: dict, fused: bool = True, xla: bool = True):
    """Trainer's compiled step for a new model; returns (step function, parameter count).

    `fused=False` switches every recurrent layer to the generic path (the cell's `call` in a loop,
    differentiated automatically), the reference the fused kernels are tested against; None when
    this version of chargen has no such switch.
    """
    from chargen.config import TrainingConfig
    from chargen.training import Trainer, build_model

    config = TrainingConfig(
        cell=cell, num_layers=size["layers"], units=size["units"], embedding_dim=size["embedding"],
        seq_len=size["window"], batch_size=size["batch"], mode=mode, learning_rate=LEARNING_RATE,
        clip_norm=CLIP_NORM, seed=0,
    )
    model = build_model(config, VOCAB_SIZE)
    if not fused:
        if not all(hasattr(layer, "fused") for layer in model.recurrent_layers):
            return None
        for layer in model.recurrent_layers:
            layer.fused = False
    ids = np.zeros(4 * size["window"], np.int32)
    trainer = Trainer(model, config, train_ids=ids, val_ids=ids[:0], xla=xla)

    def step(inputs, targets):
        loss, _, _ = trainer._train_step(inputs, targets, None)
        return loss

    return step, model.count_params()


def keras_step(cell: str, size: dict, xla: bool = False):
    """The built-in equivalent, trained by the same step written out; returns (step function, parameter count)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    recurrent = {
        "rnn": lambda: keras.layers.SimpleRNN(size["units"], return_sequences=True),
        "gru": lambda: keras.layers.GRU(size["units"], return_sequences=True, reset_after=False),
        "lstm": lambda: keras.layers.LSTM(size["units"], return_sequences=True),
    }[cell]
    model = keras.Sequential(
        [keras.Input((size["window"],), dtype="int32"), keras.layers.Embedding(VOCAB_SIZE, size["embedding"])]
        + [recurrent() for _ in range(size["layers"])]
        + [keras.layers.Dense(VOCAB_SIZE)]
    )
    optimizer = keras.optimizers.Adam(learning_rate=LEARNING_RATE, global_clipnorm=CLIP_NORM)
    optimizer.build(model.trainable_variables)

    @tf.function(reduce_retracing=True, jit_compile=xla)
    def step(inputs, targets):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            losses = keras.ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
            loss = keras.ops.sum(losses) / tf.cast(tf.size(targets), logits.dtype)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return step, model.count_params()


def measure_cell(cell: str, size: dict, log=print) -> dict:
    """Compile the steps of one cell, then time them in interleaved rounds."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    shape = (size["batch"], size["window"])
    inputs = tf.constant(rng.integers(0, VOCAB_SIZE, shape), tf.int32)
    targets = tf.constant(rng.integers(0, VOCAB_SIZE, shape), tf.int32)
    variants = {}
    for name, build in (
        ("keras", lambda: keras_step(cell, size)),
        ("keras, XLA", lambda: keras_step(cell, size, xla=True)),
        ("chargen bptt", lambda: chargen_step(cell, "bptt", size)),
        ("chargen teacher-forcing", lambda: chargen_step(cell, "teacher-forcing", size)),
        ("chargen bptt, no XLA", lambda: chargen_step(cell, "bptt", size, xla=False)),
        ("chargen teacher-forcing, no XLA", lambda: chargen_step(cell, "teacher-forcing", size, xla=False)),
        ("chargen bptt, generic path", lambda: chargen_step(cell, "bptt", size, fused=False)),
        ("chargen teacher-forcing, generic path", lambda: chargen_step(cell, "teacher-forcing", size, fused=False)),
    ):
        built = build()
        if built is None:
            continue
        step, parameters = built
        compile_seconds = time_once(lambda step=step: float(step(inputs, targets)))
        for _ in range(size["warmup"]):
            float(step(inputs, targets))
        variants[name] = {"step": step, "parameters": parameters, "compile_seconds": compile_seconds, "times": []}
        log(f"    {cell}: {name} compiled in {compile_seconds:.1f} s")
    counts = {v["parameters"] for v in variants.values()}
    if len(counts) != 1:
        raise RuntimeError(f"{cell}: the models differ in size: {[(n, v['parameters']) for n, v in variants.items()]}")
    for variant in variants.values():  # one untimed round after all are built, then a clean heap
        float(variant["step"](inputs, targets))
    gc.collect()
    for _ in range(size["rounds"]):
        for variant in variants.values():
            variant["times"].append(time_once(lambda step=variant["step"]: float(step(inputs, targets))))
    characters = size["batch"] * size["window"]
    rows = []
    keras_seconds = summary(variants["keras"]["times"])["median"]
    best_keras_seconds = min(keras_seconds, summary(variants["keras, XLA"]["times"])["median"])
    for name, variant in variants.items():
        timing = summary(variant["times"])
        rows.append({
            "cell": cell,
            "variant": name,
            "parameters": variant["parameters"],
            "compile_seconds": variant["compile_seconds"],
            "seconds_per_step": timing,
            "chars_per_second": characters / timing["median"],
            "ratio_to_keras": keras_seconds / timing["median"],
            "ratio_to_faster_keras": best_keras_seconds / timing["median"],
        })
    variants.clear()
    gc.collect()
    return rows


def run(quick: bool, cells=CELLS, layers: int | None = None, log=print) -> dict:
    size = sizes(quick) | ({"layers": layers} if layers else {})
    rows = []
    for cell in cells:
        rows.extend(measure_cell(cell, size, log))
    return {"sizes": size, "vocab": VOCAB_SIZE, "rows": rows}
