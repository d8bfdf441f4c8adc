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

With lower precisions asked for (`precisions`, default float32 only), each adds the same steps under
that dtype policy, for chargen and for Keras alike: chargen's `--precision` (`TrainingConfig.precision`),
and Keras's layers built with `dtype="mixed_bfloat16"` / `"mixed_float16"` (embedding and recurrent
layers; the output layer and the loss stay float32, as in chargen), float16 with Keras's
`LossScaleOptimizer` on both sides. Every step is compared with Keras's under the same policy and with
its own float32 self.

The matrix products' peak: a large product (the issue's 6400 x 2048 by 2048 x 2048, smaller with
`quick`) is timed in each precision in the same run, and each step's share of that peak is reported:
its matrix products' arithmetic (6 x batch x window x the weight matrices' entries: 2 for the forward
product, 4 for the backward products giving the inputs' and the weights' gradients) per second over
the peak's.

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
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def sizes(quick: bool) -> dict:
    """The network and the timing; `product` is the (rows, inner, columns) of the peak's matrix product."""
    if quick:
        return {"layers": 2, "units": 128, "embedding": 64, "batch": 32, "window": 50, "rounds": 4, "warmup": 2,
                "product": (3200, 1024, 1024)}
    return {"layers": 2, "units": 512, "embedding": 64, "batch": 64, "window": 100, "rounds": 9, "warmup": 2,
            "product": (6400, 2048, 2048)}


def chargen_step(cell: str, mode: str, size: dict, fused: bool = True, xla: bool = True, precision: str = "float32"):
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
        clip_norm=CLIP_NORM, seed=0, precision=precision,
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


def keras_step(cell: str, size: dict, xla: bool = False, precision: str = "float32"):
    """The built-in equivalent, trained by the same step written out; returns (step function, parameter count).

    Under a lower precision the embedding and recurrent layers take chargen's dtype policy and the output
    layer stays float32, as chargen's does; float16 scales the loss (Keras's `LossScaleOptimizer`, as
    chargen's trainer).
    """
    import keras
    import tensorflow as tf

    from chargen.config import PRECISIONS

    keras.utils.set_random_seed(0)
    policy = PRECISIONS[precision]
    recurrent = {
        "rnn": lambda: keras.layers.SimpleRNN(size["units"], return_sequences=True, dtype=policy),
        "gru": lambda: keras.layers.GRU(size["units"], return_sequences=True, reset_after=False, dtype=policy),
        "lstm": lambda: keras.layers.LSTM(size["units"], return_sequences=True, dtype=policy),
    }[cell]
    model = keras.Sequential(
        [keras.Input((size["window"],), dtype="int32"),
         keras.layers.Embedding(VOCAB_SIZE, size["embedding"], dtype=policy)]
        + [recurrent() for _ in range(size["layers"])]
        + [keras.layers.Dense(VOCAB_SIZE)]
    )
    optimizer = keras.optimizers.Adam(learning_rate=LEARNING_RATE, global_clipnorm=CLIP_NORM)
    if precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)

    @tf.function(reduce_retracing=True, jit_compile=xla)
    def step(inputs, targets):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=True)
            losses = keras.ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
            loss = keras.ops.sum(losses) / tf.cast(tf.size(targets), logits.dtype)
            scaled_loss = optimizer.scale_loss(loss)  # the loss itself unless float16 scales it
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    return step, model.count_params()


def matrix_flops_per_step(cell: str, size: dict) -> int:
    """The arithmetic of one training step's matrix products: 6 x characters x the weight matrices' entries.

    Each entry of a weight matrix is used once per character in the forward product (2 operations:
    multiply, add) and twice in the backward ones (the inputs' gradient and the weight's own, 4 more);
    teacher forcing runs the same products, batched differently.
    """
    entries, features = 0, size["embedding"]
    for _ in range(size["layers"]):
        entries += (features + size["units"]) * GATES[cell] * size["units"]  # input and recurrent kernels
        features = size["units"]
    entries += size["units"] * VOCAB_SIZE  # the output layer
    return 6 * size["batch"] * size["window"] * entries


def matmul_peak(precision: str, shape: tuple[int, int, int], repeats: int = 5) -> dict:
    """A large matrix product in `precision` (TensorFlow, no XLA), the fastest of `repeats` after one warm-up:
    the arithmetic rate a training step's own products can at best approach on this machine. (The fastest,
    not the median: a peak is what the machine can do, and on a shared machine other work only slows it.)"""
    import tensorflow as tf

    rows, inner, columns = shape
    left = tf.cast(tf.random.stateless_normal((rows, inner), seed=(0, 1)), precision)
    right = tf.cast(tf.random.stateless_normal((inner, columns), seed=(0, 2)), precision)
    product = tf.function(tf.linalg.matmul)
    product(left, right).numpy()
    timing = summary([time_once(lambda: product(left, right).numpy()) for _ in range(repeats)])
    return {"precision": precision, "shape": list(shape), "seconds": timing,
            "gflops": 2 * rows * inner * columns / timing["min"] / 1e9}


def variant_builders(cell: str, size: dict, precisions=("float32",)) -> dict:
    """name -> (precision, build): the float32 steps, then four per lower precision (named "..., bfloat16")."""
    builders = {
        "keras": ("float32", lambda: keras_step(cell, size)),
        "keras, XLA": ("float32", lambda: keras_step(cell, size, xla=True)),
        "chargen bptt": ("float32", lambda: chargen_step(cell, "bptt", size)),
        "chargen teacher-forcing": ("float32", lambda: chargen_step(cell, "teacher-forcing", size)),
        "chargen bptt, no XLA": ("float32", lambda: chargen_step(cell, "bptt", size, xla=False)),
        "chargen teacher-forcing, no XLA": ("float32", lambda: chargen_step(cell, "teacher-forcing", size, xla=False)),
        "chargen bptt, generic path": ("float32", lambda: chargen_step(cell, "bptt", size, fused=False)),
        "chargen teacher-forcing, generic path": (
            "float32", lambda: chargen_step(cell, "teacher-forcing", size, fused=False)),
    }
    for precision in precisions:
        if precision == "float32":
            continue
        builders |= {
            f"keras, {precision}": (precision, lambda p=precision: keras_step(cell, size, precision=p)),
            f"keras, XLA, {precision}": (precision, lambda p=precision: keras_step(cell, size, True, p)),
            f"chargen bptt, {precision}": (
                precision, lambda p=precision: chargen_step(cell, "bptt", size, precision=p)),
            f"chargen teacher-forcing, {precision}": (
                precision, lambda p=precision: chargen_step(cell, "teacher-forcing", size, precision=p)),
        }
    return builders


def time_variants(cell: str, size: dict, builders: dict, log=print) -> dict:
    """Compile the given steps of one cell, then time them in interleaved rounds.

    Returns name -> {precision, parameters, compile_seconds, times (seconds per step)}.
    """
    import tensorflow as tf

    rng = np.random.default_rng(0)
    shape = (size["batch"], size["window"])
    inputs = tf.constant(rng.integers(0, VOCAB_SIZE, shape), tf.int32)
    targets = tf.constant(rng.integers(0, VOCAB_SIZE, shape), tf.int32)
    variants = {}
    for name, (precision, build) in builders.items():
        built = build()
        if built is None:
            continue
        step, parameters = built
        compile_seconds = time_once(lambda step=step: float(step(inputs, targets)))
        for _ in range(size["warmup"]):
            float(step(inputs, targets))
        variants[name] = {"step": step, "precision": precision, "parameters": parameters,
                          "compile_seconds": compile_seconds, "times": []}
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
    for variant in variants.values():
        del variant["step"]
    gc.collect()
    return variants


def _suffix(precision: str) -> str:
    return "" if precision == "float32" else f", {precision}"


def rows_from_times(cell: str, variants: dict, size: dict, peaks: dict | None = None) -> list[dict]:
    """One row per timed step: throughput, and ratios to Keras under the same precision, to the same step in
    float32, and to the matrix-product peak of its precision (`peaks`: precision -> GFLOP/s)."""
    medians = {name: summary(variant["times"])["median"] for name, variant in variants.items()}
    characters = size["batch"] * size["window"]
    flops = matrix_flops_per_step(cell, size)
    rows = []
    for name, variant in variants.items():
        precision, seconds = variant["precision"], medians[name]
        suffix = _suffix(precision)
        keras_seconds = medians.get(f"keras{suffix}")
        kerases = [medians[k] for k in (f"keras{suffix}", f"keras, XLA{suffix}") if k in medians]
        float32_seconds = medians.get(name[:len(name) - len(suffix)] if suffix else name)
        peak = (peaks or {}).get(precision)
        gflops = flops / seconds / 1e9
        rows.append({
            "cell": cell,
            "variant": name,
            "precision": precision,
            "parameters": variant["parameters"],
            "compile_seconds": variant["compile_seconds"],
            "seconds_per_step": summary(variant["times"]),
            "chars_per_second": characters / seconds,
            "ratio_to_keras": keras_seconds / seconds if keras_seconds else None,
            "ratio_to_faster_keras": min(kerases) / seconds if kerases else None,
            "ratio_to_float32": float32_seconds / seconds if float32_seconds else None,
            "matrix_gflops": gflops,
            "peak_fraction": gflops / peak if peak else None,
        })
    return rows


def measure_cell(cell: str, size: dict, precisions=("float32",), peaks: dict | None = None, log=print) -> list[dict]:
    """Every step of one cell in every precision asked for, timed together; one row each."""
    variants = time_variants(cell, size, variant_builders(cell, size, precisions), log)
    return rows_from_times(cell, variants, size, peaks)


def run(quick: bool, cells=CELLS, layers: int | None = None, precisions=("float32",), log=print) -> dict:
    """The training rows of every cell; float32 always, and each lower precision in `precisions`."""
    size = sizes(quick) | ({"layers": layers} if layers else {})
    precisions = ["float32", *(p for p in precisions if p != "float32")]
    log(f"    the matrix-product peak, {' x '.join(map(str, size['product']))}, in {', '.join(precisions)} ...")
    peaks = {precision: matmul_peak(precision, size["product"]) for precision in precisions}
    rows = []
    for cell in cells:
        rows.extend(measure_cell(cell, size, precisions, {p: peak["gflops"] for p, peak in peaks.items()}, log))
    return {"sizes": size, "vocab": VOCAB_SIZE, "precisions": precisions, "peaks": peaks, "rows": rows}
