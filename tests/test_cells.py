"""The cells' equations, checked four independent ways.

1. Against Keras's built-in cells given the same weights: outputs, final states and gradients.
2. Against central finite differences in float64: gradients w.r.t. inputs, initial state and weights.
3. Against a two-step case worked out by hand on Python floats (no keras.ops involved).
4. Configuration: `from_config(get_config())` rebuilds the same cell, and the initial biases.

1 to 3 run each cell over both paths of the loop: the reference (the cell's `call`, differentiated
automatically) and the fused kernels with their hand-written gradients.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from chargen.cells import GRUCell, LSTMCell, SimpleRNNCell, make_cell
from chargen.recurrent import Recurrent

from cell_cases import ACTIVATION_CASES, CASES, PATHS, random_states, randomize
from gradcheck import central_difference, relative_error

KERAS_CELLS = {
    SimpleRNNCell: keras.layers.SimpleRNNCell,
    GRUCell: keras.layers.GRUCell,
    LSTMCell: keras.layers.LSTMCell,
}


def keras_twin(cell, input_dim):
    """Keras's own cell of the same kind inside `keras.layers.RNN`, holding a copy of `cell`'s weights.

    Keras stacks the gates in the same order as the chargen docstrings state (LSTM i, f, c, o; GRU z, r,
    h), so the fused kernels copy over unchanged; Keras's reset_after GRU keeps both biases in one
    (2, 3 * units) tensor, input bias first.
    """
    extra = {"reset_after": cell.reset_after} if isinstance(cell, GRUCell) else {}
    if isinstance(cell, SimpleRNNCell):
        extra = {"activation": cell.activation}
    twin = KERAS_CELLS[type(cell)](cell.units, **extra)
    rnn = keras.layers.RNN(twin, return_sequences=True, return_state=True)
    rnn.build((None, None, input_dim))
    twin.kernel.assign(cell.input_kernel)
    twin.recurrent_kernel.assign(cell.recurrent_kernel)
    if isinstance(cell, GRUCell) and cell.reset_after:
        twin.bias.assign(np.stack([cell.bias.numpy(), cell.recurrent_bias.numpy()]))
    else:
        twin.bias.assign(cell.bias)
    return rnn, twin


# --- 1. Agreement with Keras's built-in cells -------------------------------------------------------


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("kind, kwargs", CASES + ACTIVATION_CASES)
def test_matches_keras_builtin_cell(kind, kwargs, fused):
    rng = np.random.default_rng(0)
    batch, steps, input_dim, units = 3, 20, 4, 5
    cell = make_cell(kind, units, **kwargs)
    layer = Recurrent(cell, fused=fused)
    layer.build((batch, steps, input_dim))
    randomize(cell, rng)
    keras_rnn, twin = keras_twin(cell, input_dim)

    x = tf.constant(rng.normal(size=(batch, steps, input_dim)).astype("float32"))
    initial = random_states(cell, rng, batch)
    probe = tf.constant(rng.normal(size=(batch, steps, units)).astype("float32"))
    state_probes = [tf.constant(rng.normal(size=(batch, units)).astype("float32")) for _ in initial]

    def objective(outputs, states):
        return tf.reduce_sum(outputs * probe) + sum(tf.reduce_sum(s * p) for s, p in zip(states, state_probes))

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, *initial])
        ours, our_states = layer(x, initial_state=initial)
        ours_loss = objective(ours, our_states)
        theirs, *their_states = keras_rnn(x, initial_state=initial)
        theirs_loss = objective(theirs, their_states)

    assert ours.shape == (batch, steps, units)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert len(our_states) == len(their_states) == len(cell.state_size)
    for mine, keras_state in zip(our_states, their_states):
        np.testing.assert_allclose(mine, keras_state, rtol=1e-5, atol=1e-5)

    # Gradients w.r.t. the inputs and the initial state.
    for mine, keras_grad in zip(tape.gradient(ours_loss, [x, *initial]), tape.gradient(theirs_loss, [x, *initial])):
        assert np.abs(mine).max() > 1e-3
        np.testing.assert_allclose(mine, keras_grad, rtol=1e-5, atol=1e-5)

    # Gradients w.r.t. every weight, mapped onto Keras's names.
    our_weights = {w.name: w for w in cell.trainable_weights}
    our_grads = dict(zip(our_weights, tape.gradient(ours_loss, list(our_weights.values()))))
    their_weights = {"kernel": twin.kernel, "recurrent_kernel": twin.recurrent_kernel, "bias": twin.bias}
    keras_grads = dict(zip(their_weights, tape.gradient(theirs_loss, list(their_weights.values()))))
    expected = {
        "input_kernel": keras_grads["kernel"],
        "recurrent_kernel": keras_grads["recurrent_kernel"],
    }
    if "recurrent_bias" in our_grads:
        expected["bias"], expected["recurrent_bias"] = keras_grads["bias"][0], keras_grads["bias"][1]
    else:
        expected["bias"] = keras_grads["bias"]
    assert set(our_grads) == set(expected)
    for name, keras_grad in expected.items():
        assert np.abs(our_grads[name]).max() > 1e-3, name
        np.testing.assert_allclose(our_grads[name], keras_grad, rtol=1e-5, atol=1e-5, err_msg=name)
    del tape


# --- 2. Finite differences ----------------------------------------------------------------------------


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("kind, kwargs", CASES + ACTIVATION_CASES)
def test_gradients_match_central_differences(kind, kwargs, fused):
    rng = np.random.default_rng(1)
    batch, steps, input_dim, units = 2, 3, 2, 3
    cell = make_cell(kind, units, dtype="float64", **kwargs)
    layer = Recurrent(cell, fused=fused, dtype="float64")
    layer.build((batch, steps, input_dim))
    randomize(cell, rng, scale=0.7)

    x = tf.Variable(rng.normal(size=(batch, steps, input_dim)))
    initial = [tf.Variable(rng.normal(0.0, 0.5, size=(batch, size))) for size in cell.state_size]
    probe = tf.constant(rng.normal(size=(batch, steps, units)))
    state_probes = [tf.constant(rng.normal(size=(batch, units))) for _ in initial]

    def loss():
        outputs, final = layer(tf.convert_to_tensor(x), initial_state=[tf.convert_to_tensor(s) for s in initial])
        return tf.reduce_sum(outputs * probe) + sum(tf.reduce_sum(s * p) for s, p in zip(final, state_probes))

    variables = [x, *initial, *cell.trainable_weights]
    with tf.GradientTape() as tape:
        value = loss()
    assert value.dtype == tf.float64
    analytic = tape.gradient(value, variables)
    traced_loss = tf.function(loss)  # the same loss, traced once: the differences call it hundreds of times
    for variable, grad in zip(variables, analytic):
        numeric = central_difference(traced_loss, variable)
        assert np.linalg.norm(numeric) > 1e-3, variable.name
        assert relative_error(grad, numeric) < 1e-6, variable.name


# --- 3. Hand-computed two-step cases --------------------------------------------------------------------


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def affine(x, w, h, u, b):
    """[sum_i x_i w[i][j] + sum_k h_k u[k][j] + b_j for each j] on Python lists."""
    return [
        sum(x[i] * w[i][j] for i in range(len(x))) + sum(h[k] * u[k][j] for k in range(len(h))) + b[j]
        for j in range(len(b))
    ]


def fuse(*blocks):
    """Stack per-gate matrices (lists of rows) or vectors side by side, in the order given."""
    if isinstance(blocks[0][0], list):
        return [sum((block[row] for block in blocks), []) for row in range(len(blocks[0]))]
    return sum(blocks, [])


def layer_for(cell, xs, initial, fused):
    """A float64 `Recurrent` around `cell`, with the batch-of-one input and initial state as tensors."""
    layer = Recurrent(cell, fused=fused, dtype="float64")
    x = tf.constant([xs], dtype=tf.float64)  # (1, time, input_dim)
    layer.build(x.shape)
    return layer, x, [tf.constant([s], dtype=tf.float64) for s in initial]


def assign(cell, **weights):
    for name, value in weights.items():
        getattr(cell, name).assign(np.array(value, dtype="float64"))


def check(layer, x, initial, expected_outputs, expected_states):
    outputs, final = layer(x, initial_state=initial)
    np.testing.assert_allclose(outputs.numpy()[0], expected_outputs, rtol=1e-12, atol=1e-14)
    assert len(final) == len(expected_states)
    for got, want in zip(final, expected_states):
        np.testing.assert_allclose(got.numpy()[0], want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fused", PATHS)
def test_simple_rnn_by_hand(fused):
    w = [[0.5, -0.4]]  # W_xh, (input 1, units 2)
    u = [[0.3, -0.2], [0.1, 0.6]]  # W_hh
    b = [0.1, -0.05]
    xs = [[1.0], [-0.5]]
    h = [0.2, -0.1]
    cell = SimpleRNNCell(2, dtype="float64")
    layer, x, initial = layer_for(cell, xs, [h], fused)
    assign(cell, input_kernel=w, recurrent_kernel=u, bias=b)

    outputs = []
    for x_t in xs:
        h = [math.tanh(a) for a in affine(x_t, w, h, u, b)]
        outputs.append(h)
    check(layer, x, initial, outputs, [h])


GRU_WEIGHTS = dict(
    w_z=[[0.2, -0.3], [0.4, 0.1]], w_r=[[-0.5, 0.25], [0.3, 0.6]], w_h=[[0.7, -0.2], [-0.1, 0.45]],
    u_z=[[0.1, 0.3], [-0.2, 0.15]], u_r=[[0.35, -0.4], [0.05, 0.2]], u_h=[[-0.3, 0.5], [0.6, -0.25]],
    b_z=[0.05, -0.1], b_r=[0.2, 0.0], b_h=[-0.15, 0.1],
    rb_z=[0.3, -0.2], rb_r=[-0.1, 0.25], rb_h=[0.4, -0.35],  # reset_after's recurrent biases
)


@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("reset_after", [False, True], ids=["gru", "gru-reset_after"])
def test_gru_by_hand(reset_after, fused):
    g = GRU_WEIGHTS
    xs = [[1.0, -0.5], [0.25, 2.0]]
    h = [0.3, -0.6]
    cell = GRUCell(2, reset_after=reset_after, dtype="float64")
    layer, x, initial = layer_for(cell, xs, [h], fused)
    assign(
        cell,
        input_kernel=fuse(g["w_z"], g["w_r"], g["w_h"]),
        recurrent_kernel=fuse(g["u_z"], g["u_r"], g["u_h"]),
        bias=fuse(g["b_z"], g["b_r"], g["b_h"]),
    )
    if reset_after:
        assign(cell, recurrent_bias=fuse(g["rb_z"], g["rb_r"], g["rb_h"]))

    outputs = []
    zero = [0.0, 0.0]
    for x_t in xs:
        if reset_after:
            z = [sigmoid(a) for a in affine(x_t, g["w_z"], h, g["u_z"], [p + q for p, q in zip(g["b_z"], g["rb_z"])])]
            r = [sigmoid(a) for a in affine(x_t, g["w_r"], h, g["u_r"], [p + q for p, q in zip(g["b_r"], g["rb_r"])])]
            from_input = affine(x_t, g["w_h"], zero, g["u_h"], g["b_h"])  # W_xh x + b_h
            from_state = affine(zero, g["w_h"], h, g["u_h"], g["rb_h"])  # W_hh h + b'_h
            candidate = [math.tanh(a + r_j * s) for a, r_j, s in zip(from_input, r, from_state)]
        else:
            z = [sigmoid(a) for a in affine(x_t, g["w_z"], h, g["u_z"], g["b_z"])]
            r = [sigmoid(a) for a in affine(x_t, g["w_r"], h, g["u_r"], g["b_r"])]
            reset_h = [r_j * h_j for r_j, h_j in zip(r, h)]
            candidate = [math.tanh(a) for a in affine(x_t, g["w_h"], reset_h, g["u_h"], g["b_h"])]
        h = [z_j * h_j + (1.0 - z_j) * c_j for z_j, h_j, c_j in zip(z, h, candidate)]
        outputs.append(h)
    check(layer, x, initial, outputs, [h])


@pytest.mark.parametrize("fused", PATHS)
def test_lstm_by_hand(fused):
    w = dict(  # W_x*, per gate
        i=[[0.3, -0.2], [0.1, 0.4]], f=[[-0.25, 0.5], [0.2, -0.1]],
        g=[[0.6, 0.05], [-0.35, 0.2]], o=[[0.15, -0.45], [0.3, 0.25]],
    )
    u = dict(  # W_h*
        i=[[0.2, 0.1], [-0.3, 0.4]], f=[[0.05, -0.2], [0.25, 0.1]],
        g=[[-0.4, 0.3], [0.2, 0.5]], o=[[0.1, 0.35], [-0.15, -0.2]],
    )
    b = dict(i=[0.1, -0.1], f=[1.0, 0.8], g=[0.0, 0.2], o=[-0.05, 0.15])
    xs = [[0.5, -1.0], [1.5, 0.25]]
    h, c = [-0.2, 0.4], [0.5, -0.3]
    cell = LSTMCell(2, dtype="float64")
    layer, x, initial = layer_for(cell, xs, [h, c], fused)
    order = "ifgo"
    assign(
        cell,
        input_kernel=fuse(*(w[k] for k in order)),
        recurrent_kernel=fuse(*(u[k] for k in order)),
        bias=fuse(*(b[k] for k in order)),
    )

    outputs = []
    for x_t in xs:
        i = [sigmoid(a) for a in affine(x_t, w["i"], h, u["i"], b["i"])]
        f = [sigmoid(a) for a in affine(x_t, w["f"], h, u["f"], b["f"])]
        g = [math.tanh(a) for a in affine(x_t, w["g"], h, u["g"], b["g"])]
        o = [sigmoid(a) for a in affine(x_t, w["o"], h, u["o"], b["o"])]
        c = [f_j * c_j + i_j * g_j for f_j, c_j, i_j, g_j in zip(f, c, i, g)]
        h = [o_j * math.tanh(c_j) for o_j, c_j in zip(o, c)]
        outputs.append(h)
    check(layer, x, initial, outputs, [h, c])


# --- 4. Configuration and initial values -------------------------------------------------------------------


@pytest.mark.parametrize("kind, kwargs", CASES + ACTIVATION_CASES)
def test_config_round_trip(kind, kwargs):
    rng = np.random.default_rng(2)
    cell = make_cell(
        kind,
        3,
        kernel_initializer="he_normal",
        recurrent_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=4),
        bias_initializer=keras.initializers.Constant(0.25),
        **kwargs,
    )
    config = cell.get_config()
    json.dumps(config)  # a saved model stores it as JSON
    assert config["units"] == 3
    for key, value in kwargs.items():
        assert config[key] == value

    clone = type(cell).from_config(config)
    assert type(clone) is type(cell)
    assert clone.get_config() == config
    # The registered name brings the class back without naming it.
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cell))
    assert type(revived) is type(cell)
    assert revived.get_config() == config

    x = tf.constant(rng.normal(size=(2, 4)).astype("float32"))
    states = random_states(cell, rng, 2)
    cell.build(x.shape)
    randomize(cell, rng)
    clone.build(x.shape)
    assert [(w.name, tuple(w.shape)) for w in clone.weights] == [(w.name, tuple(w.shape)) for w in cell.weights]
    clone.set_weights(cell.get_weights())
    out, new_states = cell(x, states)
    clone_out, clone_states = clone(x, states)
    np.testing.assert_array_equal(out, clone_out)
    for a, b in zip(new_states, clone_states):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind, kwargs", CASES)
def test_weight_shapes(kind, kwargs):
    cell = make_cell(kind, 5, **kwargs)
    cell.build((None, 3))
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    shapes = {w.name: tuple(w.shape) for w in cell.weights}
    expected = {"input_kernel": (3, gates * 5), "recurrent_kernel": (5, gates * 5), "bias": (gates * 5,)}
    if kwargs.get("reset_after"):
        expected["recurrent_bias"] = (gates * 5,)
    assert shapes == expected
    assert list(cell.state_size) == [5] * (2 if kind == "lstm" else 1)
    assert cell.output_size == 5


def test_lstm_forget_bias_starts_at_one():
    units = 3
    cell = LSTMCell(units)
    cell.build((None, 2))
    bias = cell.bias.numpy()
    i, f, g, o = (bias[k * units:(k + 1) * units] for k in range(4))
    np.testing.assert_array_equal(f, np.ones(units))
    for gate in (i, g, o):
        np.testing.assert_array_equal(gate, np.zeros(units))


def test_lstm_forget_bias_keeps_the_other_gates_initializer():
    units = 2
    cell = LSTMCell(units, bias_initializer=keras.initializers.Constant(0.25))
    cell.build((None, 2))
    np.testing.assert_array_equal(cell.bias.numpy(), [0.25, 0.25, 1.0, 1.0, 0.25, 0.25, 0.25, 0.25])


def test_lstm_without_unit_forget_bias_starts_at_zero():
    cell = LSTMCell(3, unit_forget_bias=False)
    cell.build((None, 2))
    np.testing.assert_array_equal(cell.bias.numpy(), np.zeros(12))


@pytest.mark.parametrize("kind, kwargs", [c for c in CASES if c.values[0] != "lstm"])
def test_other_biases_start_at_zero(kind, kwargs):
    cell = make_cell(kind, 3, **kwargs)
    cell.build((None, 2))
    biases = [w for w in cell.weights if "bias" in w.name]
    assert len(biases) == (2 if kwargs.get("reset_after") else 1)
    for bias in biases:
        np.testing.assert_array_equal(bias.numpy(), np.zeros(tuple(bias.shape)))


@pytest.mark.parametrize("units", [0, -3, 2.5, "8"])
def test_invalid_units_raise(units):
    with pytest.raises(ValueError, match="units="):
        SimpleRNNCell(units)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="kind='transformer'"):
        make_cell("transformer", 4)
