"""--precision: the layers compute in bfloat16 or float16, the weights, optimizer, logits and loss stay float32.

Tolerances are stated in units of the dtype's unit roundoff u, the largest relative error of one rounding:
2^-8 for bfloat16 (8 significant bits) and 2^-11 for float16 (11). A value that passes through n roundings
is off by up to about n * u of the magnitudes involved, so each bound below is a count of roundings.
"""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from chargen import corpus, fused
from chargen.cells import make_cell
from chargen.checkpoints import Run
from chargen.config import PRECISIONS, TrainingConfig
from chargen.generation import NumpyStepper, TensorFlowStepper, make_stepper
from chargen.model import CharModel
from chargen.recurrent import Recurrent
from chargen.training import Callback, Trainer, build_model, make_optimizer, scheduled_learning_rate
from chargen.vocab import Vocabulary

from cell_cases import CASES, randomize
from helpers import TINY, assert_user_error, run_cli, write_corpus

LOWER = [pytest.param("bfloat16", id="bfloat16"), pytest.param("float16", id="float16")]
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}
MODES = [pytest.param(True, id="bptt"), pytest.param(False, id="teacher-forcing")]
FLIPPED_SHARE = {"bfloat16": 0.1, "float16": 0.05}  # see the training step's test


def dtype_name(tensor) -> str:
    """"bfloat16" for a TensorFlow tensor or a Keras variable alike."""
    return keras.backend.standardize_dtype(tensor.dtype)


def relative_error(value, reference) -> float:
    """The largest difference, relative to the reference's largest magnitude (so a near-zero entry counts
    against the tensor's scale, as its rounding errors do)."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(value - reference).max() / np.abs(reference).max())


# The fused kernels equal the generic path in each precision ------------------------------------------


def _run_and_differentiate(path, cell, inputs, initial, upstream, final_upstream):
    """Outputs, final states and the gradients of a fixed linear loss of both, as float64 arrays."""
    with tf.GradientTape() as tape:
        tape.watch([inputs, *initial])
        outputs, final = path(inputs, initial)
        loss = tf.reduce_sum(tf.cast(outputs, upstream.dtype) * upstream)
        loss += sum(tf.reduce_sum(tf.cast(s, u.dtype) * u) for s, u in zip(final, final_upstream))
    sources = [inputs, *initial, *cell.trainable_weights]
    gradients = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return outputs.dtype, [np.asarray(tf.cast(t, tf.float64)) for t in (outputs, *final, *gradients)]


@pytest.mark.parametrize("through_time", MODES)
@pytest.mark.parametrize("kind, kwargs", CASES)
@pytest.mark.parametrize("precision", LOWER)
def test_fused_kernel_equals_the_generic_path_in_lower_precision(precision, kind, kwargs, through_time):
    """Both paths in bfloat16 or float16, each against the exact (float64) values of the same weights.

    9 steps of a cell round each state a few times per step, and a gradient goes back through the same
    chain: errors of a few tens of roundings of the largest magnitude are expected of either path (measured:
    up to 18 u), so the two paths must agree within 30 u, and each must be within 30 u of the exact values.
    """
    rng = np.random.default_rng(7)
    policy = PRECISIONS[precision]
    cell = make_cell(kind, 5, dtype=policy, **kwargs)
    layer = Recurrent(cell, fused=False, dtype=policy)
    inputs = tf.constant(rng.normal(size=(3, 9, 4)).astype("float32"))
    layer(inputs)
    randomize(cell, rng, scale=0.6)
    exact_cell = make_cell(kind, 5, dtype="float64", **kwargs)
    exact_layer = Recurrent(exact_cell, fused=False, dtype="float64")
    exact_layer(tf.cast(inputs, tf.float64))
    for exact, weight in zip(exact_cell.weights, cell.weights, strict=True):
        exact.assign(np.asarray(weight, np.float64))
    initial = [tf.constant(rng.normal(size=(3, 5)).astype("float32")) for _ in cell.state_size]
    upstream = tf.constant(rng.normal(size=(3, 9, 5)).astype("float32"))
    final_upstream = [tf.constant(rng.normal(size=(3, 5)).astype("float32")) for _ in cell.state_size]

    def generic(x, state):
        return layer(x, initial_state=state, through_time=through_time)

    def fast(x, state):  # called directly, outside any layer's __call__: nothing casts the weights for it
        return fused.run(cell, x, state, through_time)

    def exact(x, state):
        return exact_layer(x, initial_state=state, through_time=through_time)

    arguments = (inputs, initial, upstream, final_upstream)
    generic_dtype, reference = _run_and_differentiate(generic, cell, *arguments)
    fast_dtype, mine = _run_and_differentiate(fast, cell, *arguments)
    in_float64 = tf.nest.map_structure(lambda t: tf.cast(t, tf.float64), arguments)
    _, truth = _run_and_differentiate(exact, exact_cell, *in_float64)
    assert generic_dtype == fast_dtype == precision
    bound = 30 * UNIT_ROUNDOFF[precision]
    for index, (value, expected, exact_value) in enumerate(zip(mine, reference, truth, strict=True)):
        if not np.abs(exact_value).max():  # teacher forcing: no gradient reaches the initial state
            assert not np.abs(value).max() and not np.abs(expected).max()
            continue
        assert relative_error(value, expected) < bound, index
        assert relative_error(value, exact_value) < bound, index
        assert relative_error(expected, exact_value) < bound, index


# What computes in which dtype ---------------------------------------------------------------------------


@pytest.mark.parametrize("fused_flag", [pytest.param(False, id="generic"), pytest.param(True, id="fused")])
@pytest.mark.parametrize("precision", LOWER)
def test_the_cells_compute_in_the_lower_dtype_while_weights_logits_and_loss_stay_float32(precision, fused_flag,
                                                                                        monkeypatch):
    model = CharModel(11, cell="lstm", num_layers=2, units=6, embedding_dim=3, dtype=PRECISIONS[precision])
    model.build()
    seen = []  # (what, dtype) inside the loops: the dtypes the cells' arithmetic actually runs in
    if fused_flag:
        forward = fused._forward

        def recording_forward(unit, p, initial_state):
            seen.extend([("p", p.dtype), ("W_h", unit.W_h.dtype), ("state", initial_state[0].dtype)])
            return forward(unit, p, initial_state)

        monkeypatch.setattr(fused, "_forward", recording_forward)
    for layer in model.recurrent_layers:
        layer.fused = fused_flag
        cell_call = layer.cell.call

        def recording_call(inputs, states, training=False, cell=layer.cell, cell_call=cell_call):
            seen.extend([("x", inputs.dtype), ("W_h", keras.ops.convert_to_tensor(cell.recurrent_kernel).dtype),
                         ("state", states[0].dtype)])
            return cell_call(inputs, states, training=training)

        monkeypatch.setattr(layer.cell, "call", recording_call)
    ids = tf.constant(np.random.default_rng(0).integers(0, 11, size=(2, 5)))
    states = model.initial_states(2)
    assert {dtype_name(state) for layer in states for state in layer} == {precision}
    with tf.GradientTape() as tape:
        logits, final_states = model(ids, states=states, training=True)
        loss = tf.reduce_mean(keras.ops.sparse_categorical_crossentropy(ids, logits, from_logits=True))
    gradients = tape.gradient(loss, model.trainable_variables)

    assert len(seen) >= 3 * len(model.recurrent_layers)  # every layer was seen
    assert {keras.backend.standardize_dtype(dtype) for _, dtype in seen} == {precision}
    assert {dtype_name(state) for layer in final_states for state in layer} == {precision}
    assert dtype_name(logits) == dtype_name(loss) == "float32"
    assert {dtype_name(variable) for variable in model.weights} == {"float32"}
    assert {dtype_name(gradient) for gradient in gradients} == {"float32"}
    assert keras.config.dtype_policy().name == "float32"  # the process-wide policy is never touched


# One training step moves the weights as float32 does ----------------------------------------------------

TEXT = "".join(np.random.default_rng(4).choice(list("abcdefgh \n"), 3000))


def _trainer(precision: str, xla: bool = False, **overrides) -> Trainer:
    settings = dict(cell="lstm", num_layers=1, units=16, embedding_dim=8, seq_len=20, batch_size=8, steps=1,
                    eval_every=0, val_fraction=0.0, seed=5, precision=precision)
    config = TrainingConfig(**{**settings, **overrides})
    vocab = Vocabulary.from_text(TEXT)
    train_ids, val_ids = corpus.split_ids(vocab.encode(TEXT), config.val_fraction, config.seq_len)
    return Trainer(build_model(config, len(vocab)), config, train_ids, val_ids, xla=xla)


class _Losses(Callback):
    def __init__(self):
        self.values = []

    def on_step_end(self, trainer, logs):
        self.values.append(logs["loss"])


def _train_from(trainer: Trainer, start: list[np.ndarray]) -> tuple[list[float], list[np.ndarray]]:
    """Train from the weights `start` for the trainer's steps; returns the losses and every weight's change."""
    losses = _Losses()
    trainer.callbacks.append(losses)
    trainer.model.set_weights(start)
    trainer.fit()
    return losses.values, [w - s for w, s in zip(trainer.model.get_weights(), start, strict=True)]


@pytest.fixture(scope="module")
def float32_step():
    """The start weights, and the loss and every weight's change of one float32 step (without XLA) from them."""
    reference = _trainer("float32")
    start = reference.model.get_weights()
    losses, changes = _train_from(reference, start)
    return start, losses, changes


@pytest.mark.parametrize("xla", [pytest.param(False, id="no-xla"), pytest.param(True, id="xla")])
@pytest.mark.parametrize("precision", LOWER)
def test_a_training_step_in_lower_precision_moves_the_weights_as_float32_does(precision, xla, float32_step):
    """One step of a 1x16 LSTM from the same weights on the same batch, in float32 (without XLA) and lower.

    Adam's first step moves each weight by about the learning rate times the sign of its gradient, whatever the
    gradient's size, so the changes differ where a gradient is within rounding of zero and its sign flips: by
    2 x the learning rate there, a count of flips rather than a multiple of u. Each weight matrix's change is
    compared as a whole, ||change - float32's|| / ||float32's||: below 0.1 for bfloat16 and 0.05 for float16
    (measured at most 0.045 and 0.011, with or without XLA). The loss is float32's within a few roundings.
    """
    start, reference_losses, reference_changes = float32_step
    losses, changes = _train_from(_trainer(precision, xla=xla), start)
    assert losses[0] == pytest.approx(reference_losses[0], rel=4 * UNIT_ROUNDOFF[precision])
    for index, (change, expected) in enumerate(zip(changes, reference_changes, strict=True)):
        if not np.abs(expected).max():  # e.g. the embedding of a character the batch does not hold
            assert not np.abs(change).max(), index
            continue
        assert np.linalg.norm(change - expected) / np.linalg.norm(expected) < FLIPPED_SHARE[precision], index


def test_float16_scales_the_loss_and_the_schedule_reaches_adam_inside():
    trainer = _trainer("float16", steps=3)
    optimizer = trainer.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.Adam)
    assert optimizer.inner_optimizer.global_clipnorm == trainer.config.clip_norm
    trainer.fit()
    # the cosine schedule over 3 steps set the third step's rate on the optimizer: it must be Adam's
    third_rate = scheduled_learning_rate(trainer.config, 2 / 3)
    assert float(optimizer.inner_optimizer.learning_rate) == pytest.approx(third_rate)
    assert int(optimizer.inner_optimizer.iterations) == 3 and float(optimizer.dynamic_scale) == 2.0**15
    floating = {dtype_name(v) for v in optimizer.variables} - {"int32", "int64"}
    assert floating == {"float32"}  # Adam's slots, its learning rate and the loss scale
    for precision in ("float32", "bfloat16"):  # no loss scaling: bfloat16 has float32's range
        assert type(make_optimizer(TrainingConfig(precision=precision))) is keras.optimizers.Adam


def test_float16_clips_the_unscaled_gradients():
    """Keras's LossScaleOptimizer divides the gradients by the scale, then calls Adam's `apply`, which clips
    (keras/src/optimizers/loss_scale_optimizer.py, base_optimizer.py): the float16 optimizer given scaled
    gradients must move a weight exactly as float32's Adam given the true ones, clipped at the same norm."""
    config = TrainingConfig(precision="float16", clip_norm=1.0, learning_rate=0.1)
    scaled_optimizer, plain_optimizer = make_optimizer(config), make_optimizer(TrainingConfig(clip_norm=1.0,
                                                                                             learning_rate=0.1))
    scaled_weight, plain_weight = keras.Variable(np.zeros(2, np.float32)), keras.Variable(np.zeros(2, np.float32))
    scaled_optimizer.build([scaled_weight])
    plain_optimizer.build([plain_weight])
    scale = float(scaled_optimizer.dynamic_scale)
    # Norms 0.5, 5 and 0.5: only the second is clipped, while every scaled one (norm 0.5 * 2^15) is above 1.
    gradients = [np.array([0.3, 0.4]), np.array([3.0, -4.0]), np.array([0.0, 0.5])]
    for gradient in gradients:
        scaled_optimizer.apply([tf.constant(gradient * scale, tf.float32)], [scaled_weight])
        plain_optimizer.apply([tf.constant(gradient, tf.float32)], [plain_weight])
        np.testing.assert_allclose(np.asarray(scaled_weight), np.asarray(plain_weight), rtol=1e-6, atol=0)
    # What clipping the scaled gradients would have done instead: every gradient cut to norm 1 / scale.
    wrong_optimizer = keras.optimizers.Adam(learning_rate=0.1)
    wrong_weight = keras.Variable(np.zeros(2, np.float32))
    for gradient in gradients:
        clipped = gradient * scale / max(1.0, np.linalg.norm(gradient * scale))
        wrong_optimizer.apply([tf.constant(clipped / scale, tf.float32)], [wrong_weight])
    assert np.abs(np.asarray(wrong_weight) - np.asarray(plain_weight)).max() > 1e-3


def test_a_float16_step_whose_gradients_overflow_is_skipped_and_the_scale_halved():
    trainer = _trainer("float16")
    optimizer = trainer.optimizer
    optimizer.dynamic_scale.assign(2.0**120)  # the scaled loss stays finite in float32; float16 gradients cannot
    start = trainer.model.get_weights()
    trainer.fit()
    assert trainer.progress.step == 1  # the loss itself was finite: training went on
    for weight, before in zip(trainer.model.get_weights(), start, strict=True):
        np.testing.assert_array_equal(weight, before)
    assert float(optimizer.dynamic_scale) == 2.0**119
    assert int(optimizer.inner_optimizer.iterations) == 0


# Generation in each precision ---------------------------------------------------------------------------


def _walk(stepper, ids: np.ndarray):
    """Step through `ids` (batch, time); returns each step's logits and the nats of the next ids."""
    state, logits_seen, nats = stepper.initial_state(len(ids)), [], 0.0
    for t in range(ids.shape[1] - 1):
        logits, state = stepper.step(ids[:, t], state)
        logits_seen.append(logits)
        shifted = logits - logits.max(1, keepdims=True)
        log_probabilities = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        nats -= log_probabilities[np.arange(len(ids)), ids[:, t + 1]].sum()
    return logits_seen, state, nats / ids[:, 1:].size


def test_the_tensorflow_stepper_runs_the_model_in_the_precision_asked_for():
    rng = np.random.default_rng(3)
    model = CharModel(9, cell="gru", num_layers=2, units=12, embedding_dim=5)
    model.build()
    randomize(model, rng)
    ids = rng.integers(0, 9, size=(3, 12))
    numpy_logits, numpy_state, numpy_nats = _walk(make_stepper(model), ids)  # float32: the numpy reference
    assert isinstance(make_stepper(model), NumpyStepper)
    # In float32 the TensorFlow step computes what numpy does: its mechanics (state layout, feeding) are right.
    tensorflow_stepper = TensorFlowStepper(model)
    logits, state, _ = _walk(tensorflow_stepper, ids)
    for mine, expected in zip([*logits, *state], [*numpy_logits, *numpy_state], strict=True):
        np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-5)
    fed = tensorflow_stepper.feed(ids[:, :-1], tensorflow_stepper.initial_state(3))
    for mine, expected in zip(fed, state, strict=True):
        np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-5)
    for precision in UNIT_ROUNDOFF:
        stepper = make_stepper(model, precision)
        assert isinstance(stepper, TensorFlowStepper) and stepper.model.compute_dtype == precision
        _, _, nats = _walk(stepper, ids)
        # 11 steps of 2 layers, each rounding a state a few times: within 40 u of the nats per character
        assert nats == pytest.approx(numpy_nats, rel=40 * UNIT_ROUNDOFF[precision])
    assert model.compute_dtype == "float32"  # the model asked for is unchanged


# Through the command line ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bfloat16_run(tmp_path_factory):
    """A tiny run trained in bfloat16 through the CLI; read it, never change it."""
    folder = tmp_path_factory.mktemp("bfloat16")
    corpus_path = write_corpus(folder / "words.txt")
    checkpoint_dir = folder / "checkpoints"
    result = run_cli("train", corpus_path, *TINY, "--precision", "bfloat16", "--checkpoint-dir", checkpoint_dir,
                     "--run-name", "bf16")
    assert result.exit_code == 0, result.output
    return {"corpus": corpus_path, "checkpoint_dir": checkpoint_dir, "run": checkpoint_dir / "bf16", "result": result}


def test_a_bfloat16_run_records_its_precision_and_info_shows_it(bfloat16_run):
    assert "training lstm x1x16 (bptt, bfloat16) on" in bfloat16_run["result"].stderr
    config = json.loads((bfloat16_run["run"] / "config.json").read_text(encoding="utf-8"))
    assert config["training"]["precision"] == "bfloat16"
    shown = run_cli("info", bfloat16_run["run"])
    assert shown.exit_code == 0, shown.output
    assert "precision    bfloat16 (float32 weights, optimizer, logits and loss)" in shown.stdout
    assert json.loads(run_cli("info", bfloat16_run["run"], "--json").stdout)["precision"] == "bfloat16"


def _evaluate(run, text_path, *options) -> dict:
    result = run_cli("eval", run, text_path, "--checkpoint", "last", "--json", *options)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_bfloat16_run_evaluates_in_its_own_precision_and_in_float32(bfloat16_run, tmp_path):
    """In bfloat16, eval computes what training's evaluation did; in float32 (the default) it stays close."""
    run = Run.open(bfloat16_run["run"])
    vocab = run.vocabulary()
    _, val_ids = corpus.split_ids(vocab.encode(bfloat16_run["corpus"].read_text(encoding="utf-8")), 0.1, 16)
    tail = tmp_path / "tail.txt"
    tail.write_text(vocab.decode(val_ids), encoding="utf-8")
    trained_figure = run.metrics()[-1]["val_bpc"]
    in_bfloat16 = _evaluate(run.path, tail, "--precision", "bfloat16")
    assert in_bfloat16["precision"] == "bfloat16"
    assert in_bfloat16["bits_per_char"] == pytest.approx(trained_figure, abs=1e-6)
    in_float32 = _evaluate(run.path, tail)
    assert in_float32["precision"] == "float32"
    assert in_float32["bits_per_char"] == pytest.approx(trained_figure, abs=0.02)
    assert in_float32["bits_per_char"] != in_bfloat16["bits_per_char"]  # it did compute in float32


@pytest.mark.parametrize("run_precision", ["float32", "bfloat16"])
def test_a_run_samples_and_evaluates_in_every_precision(run_precision, trained, bfloat16_run):
    """A run trained in one precision samples and evaluates in each other; its figures agree within 0.02 bpc.

    Both for `eval` and for the generation engines (issue 9's rule): the log-probability of a fixed text,
    stepped through the bfloat16 and float16 TensorFlow engines, stays within 0.02 bits per character of the
    float32 numpy engine's.
    """
    run = (trained if run_precision == "float32" else bfloat16_run)["run"]
    figures = {precision: _evaluate(run, trained["corpus"], "--precision", precision)["bits_per_char"]
               for precision in PRECISIONS}
    assert max(figures.values()) - min(figures.values()) < 0.02, figures
    saved = Run.open(run)
    model = saved.load_model("last")
    text = saved.vocabulary().encode(trained["corpus"].read_text(encoding="utf-8")[:150])[None]  # (1, 150)
    bits = {precision: _walk(make_stepper(model, precision), text)[2] / np.log(2) for precision in PRECISIONS}
    for precision in UNIT_ROUNDOFF:  # the lower precisions
        assert abs(bits[precision] - bits["float32"]) < 0.02, bits
    for precision in PRECISIONS:
        result = run_cli("sample", run, "--seed", 1, "--length", 30, "--prime", "cedar ", "--precision", precision)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("cedar ") and len(result.stdout) == len("cedar ") + 30 + 1


def test_a_resumed_run_keeps_its_precision_and_refuses_another(bfloat16_run, tmp_path):
    checkpoint_dir = tmp_path / "checkpoints"
    shutil.copytree(bfloat16_run["checkpoint_dir"], checkpoint_dir)
    resumed = run_cli("train", bfloat16_run["corpus"], "--resume", "--steps", 6, "--no-xla", "--quiet",
                      "--checkpoint-dir", checkpoint_dir, "--run-name", "bf16")
    assert resumed.exit_code == 0, resumed.output
    assert "(bptt, bfloat16)" in resumed.stderr and "from step 4" in resumed.stderr
    run = Run.open(checkpoint_dir / "bf16")
    assert run.config["training"]["precision"] == "bfloat16" and run.load_progress("last")["step"] == 6
    assert run.load_model("last").compute_dtype == "bfloat16"
    refused = run_cli("train", bfloat16_run["corpus"], "--resume", "--precision", "float16", "--no-xla",
                      "--checkpoint-dir", checkpoint_dir, "--run-name", "bf16")
    assert_user_error(refused, "--precision float16 differs from the resumed run's bfloat16")
