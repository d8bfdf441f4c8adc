"""The loop over time: initial and final states, and the two training modes.

Teacher forcing (`through_time=False`) must compute the same values as backpropagation through time
(BPTT) and differ only in the gradient, exactly as recurrent.py claims: the state entering each step is
a constant, so a step's loss reaches the weights through that step alone. Each gradient is checked
against a reference computed here independently (a hand-unrolled loop, single cell calls on constant
states, central finite differences).
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from chargen.cells import make_cell
from chargen.recurrent import Recurrent

from cell_cases import CASES, random_states, randomize
from gradcheck import central_difference, relative_error


def setup(kind, kwargs, seed, batch=2, steps=6, input_dim=3, units=4, dtype="float32", scale=0.5):
    """A built Recurrent layer with random weights, a random input and a random non-zero initial state."""
    rng = np.random.default_rng(seed)
    cell = make_cell(kind, units, dtype=dtype, **kwargs)
    layer = Recurrent(cell, dtype=dtype)
    layer.build((batch, steps, input_dim))
    randomize(cell, rng, scale)
    x = tf.constant(rng.normal(size=(batch, steps, input_dim)).astype(dtype))
    return rng, cell, layer, x, random_states(cell, rng, batch, dtype)


def python_loop(cell, x, states):
    """The reference loop: one cell call per step, in plain Python."""
    outputs = []
    for t in range(x.shape[1]):
        output, states = cell(x[:, t], list(states))
        outputs.append(output)
    return tf.stack(outputs, axis=1), list(states)


# --- States --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, kwargs", CASES)
def test_initial_state_is_honoured(kind, kwargs):
    _, cell, layer, x, initial = setup(kind, kwargs, seed=10)

    from_zero, _ = layer(x)
    outputs, final = layer(x, initial_state=initial)
    assert np.abs(outputs - from_zero).max() > 1e-3

    expected, expected_final = python_loop(cell, x, initial)
    np.testing.assert_allclose(outputs, expected, rtol=1e-6, atol=1e-6)
    assert len(final) == len(cell.state_size)
    for got, want in zip(final, expected_final):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    # No initial state means zeros.
    zeros = [tf.zeros_like(s) for s in initial]
    explicit_zero, _ = layer(x, initial_state=zeros)
    np.testing.assert_allclose(from_zero, explicit_zero, rtol=0, atol=1e-7)
    np.testing.assert_allclose(from_zero, python_loop(cell, x, zeros)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind, kwargs", CASES)
@pytest.mark.parametrize("through_time", [True, False], ids=["bptt", "teacher_forcing"])
def test_final_state_is_the_state_after_the_last_step(kind, kwargs, through_time):
    _, cell, layer, x, initial = setup(kind, kwargs, seed=11)
    outputs, final = layer(x, initial_state=initial, through_time=through_time)
    np.testing.assert_allclose(final[0], outputs[:, -1], rtol=0, atol=1e-6)  # h is the output
    # Running the first steps, then the last one from the state they leave, gives the same state.
    _, before_last = layer(x[:, :-1], initial_state=initial)
    _, after_last = cell(x[:, -1], before_last)
    for got, want in zip(final, after_last):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind, kwargs", CASES)
def test_teacher_forcing_computes_the_same_values(kind, kwargs):
    _, cell, layer, x, initial = setup(kind, kwargs, seed=12, steps=8)
    bptt, bptt_final = layer(x, initial_state=initial, through_time=True)
    forced, forced_final = layer(x, initial_state=initial, through_time=False)
    assert forced.shape == bptt.shape
    np.testing.assert_allclose(forced, bptt, rtol=0, atol=1e-6)
    assert len(forced_final) == len(bptt_final)
    for a, b in zip(forced_final, bptt_final):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # Default initial state too.
    np.testing.assert_allclose(layer(x, through_time=False)[0], layer(x)[0], rtol=0, atol=1e-6)


# --- The two modes' gradients ----------------------------------------------------------------------------


def layer_gradients(layer, x, initial, loss_of_outputs, through_time):
    """Gradients of `loss_of_outputs(outputs)` w.r.t. inputs, initial state and the cell's weights."""
    with tf.GradientTape() as tape:
        tape.watch([x, *initial])
        outputs, _ = layer(x, initial_state=initial, through_time=through_time)
        loss = loss_of_outputs(outputs)
    weights = layer.cell.trainable_weights
    grads = tape.gradient(loss, [x, *initial, *weights], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    d_x, d_initial, d_weights = grads[0], grads[1:1 + len(initial)], grads[1 + len(initial):]
    return d_x.numpy(), [g.numpy() for g in d_initial], {w.name: g.numpy() for w, g in zip(weights, d_weights)}


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_last_step_loss_separates_the_modes(kind):
    rng, cell, layer, x, initial = setup(kind, {}, seed=13, steps=5, dtype="float64", scale=0.8)
    probe = tf.constant(rng.normal(size=(2, cell.units)))

    def last_step_loss(outputs):  # depends on the output at the last step only
        return tf.reduce_sum(outputs[:, -1] * probe)

    forced_x, forced_init, forced = layer_gradients(layer, x, initial, last_step_loss, through_time=False)
    bptt_x, bptt_init, bptt = layer_gradients(layer, x, initial, last_step_loss, through_time=True)

    # Teacher forcing: exactly the one-step term. Run the loop to the state entering the last step,
    # make it a constant, and differentiate a single cell call.
    _, entering = python_loop(cell, x[:, :-1], initial)
    entering = [tf.constant(s.numpy()) for s in entering]
    with tf.GradientTape() as tape:
        output, _ = cell(x[:, -1], entering)
        loss = tf.reduce_sum(output * probe)
    one_step = tape.gradient(loss, cell.recurrent_kernel).numpy()
    np.testing.assert_allclose(forced["recurrent_kernel"], one_step, rtol=1e-10, atol=1e-12)

    # BPTT: the full sum through time, (b) from a hand-unrolled loop under a tape ...
    with tf.GradientTape() as tape:
        outputs, _ = python_loop(cell, x, initial)
        loss = last_step_loss(outputs)
    unrolled = tape.gradient(loss, cell.recurrent_kernel).numpy()
    np.testing.assert_allclose(bptt["recurrent_kernel"], unrolled, rtol=1e-10, atol=1e-12)
    # ... and (a) from central finite differences.
    numeric = central_difference(lambda: last_step_loss(layer(x, initial_state=initial)[0]), cell.recurrent_kernel)
    assert relative_error(bptt["recurrent_kernel"], numeric) < 1e-6

    # The two really differ: BPTT adds the terms through earlier steps.
    difference = np.abs(bptt["recurrent_kernel"] - forced["recurrent_kernel"]).max()
    assert difference > 1e-3
    assert relative_error(bptt["recurrent_kernel"], forced["recurrent_kernel"]) > 1e-2

    # Inputs: teacher forcing reaches only the last step's input; BPTT reaches every step's.
    np.testing.assert_array_equal(forced_x[:, :-1], 0.0)
    for t in range(x.shape[1]):
        assert np.abs(bptt_x[:, t]).max() > 1e-4, t
    np.testing.assert_allclose(forced_x[:, -1], bptt_x[:, -1], rtol=1e-10, atol=1e-12)
    assert np.abs(forced_x[:, -1]).max() > 1e-3
    # The initial state is a constant for teacher forcing, a leaf of the chain for BPTT.
    for forced_g in forced_init:
        np.testing.assert_array_equal(forced_g, 0.0)
    assert np.abs(bptt_init[0]).max() > 1e-4


@pytest.mark.parametrize("kind, kwargs", CASES)
def test_teacher_forcing_gradient_is_the_sum_of_one_step_terms(kind, kwargs):
    """With a loss over every step, each step trains the weights through that step alone."""
    rng, cell, layer, x, initial = setup(kind, kwargs, seed=14, steps=4, dtype="float64")
    probe = tf.constant(rng.normal(size=(2, 4, cell.units)))
    _, _, forced = layer_gradients(layer, x, initial, lambda out: tf.reduce_sum(out * probe), through_time=False)
    _, _, bptt = layer_gradients(layer, x, initial, lambda out: tf.reduce_sum(out * probe), through_time=True)

    weights = cell.trainable_weights
    expected = {w.name: np.zeros(tuple(w.shape)) for w in weights}
    states = list(initial)
    for t in range(x.shape[1]):
        constant_states = [tf.constant(s.numpy()) for s in states]
        with tf.GradientTape() as tape:
            output, new_states = cell(x[:, t], constant_states)
            loss = tf.reduce_sum(output * probe[:, t])
        for w, g in zip(weights, tape.gradient(loss, weights)):
            expected[w.name] += g.numpy()
        states = new_states

    for name, value in expected.items():
        np.testing.assert_allclose(forced[name], value, rtol=1e-10, atol=1e-12, err_msg=name)
    assert relative_error(forced["recurrent_kernel"], bptt["recurrent_kernel"]) > 1e-2


# --- Configuration and checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, kwargs", CASES)
def test_config_round_trip(kind, kwargs):
    rng = np.random.default_rng(15)
    cell = make_cell(kind, 4, bias_initializer="ones", **kwargs)
    layer = Recurrent(cell, name="loop")
    config = layer.get_config()
    json.dumps(config)
    assert config["name"] == "loop"
    assert config["cell"]["config"] == cell.get_config()

    clone = Recurrent.from_config(config)
    assert type(clone.cell) is type(cell)
    assert clone.cell is not cell
    assert clone.get_config() == config
    assert clone.cell.get_config() == cell.get_config()

    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is Recurrent
    assert revived.get_config() == config

    x = tf.constant(rng.normal(size=(2, 5, 3)).astype("float32"))
    initial = [tf.constant(rng.normal(size=(2, s)).astype("float32")) for s in cell.state_size]
    layer.build(x.shape)
    randomize(cell, rng)
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    outputs, final = layer(x, initial_state=initial)
    clone_outputs, clone_final = clone(x, initial_state=initial)
    np.testing.assert_array_equal(outputs, clone_outputs)
    for a, b in zip(final, clone_final):
        np.testing.assert_array_equal(a, b)


def test_config_of_a_built_layer_round_trips():
    """A built layer's config nests the cell's build_config, so the clone's cell comes back built."""
    layer = Recurrent(make_cell("lstm", 3))
    x = tf.ones((2, 4, 2))
    outputs, _ = layer(x)
    clone = Recurrent.from_config(layer.get_config())
    clone_outputs, _ = clone(x)  # the cell, built already, is not built a second time
    assert clone_outputs.shape == outputs.shape


def test_accepts_an_already_built_cell():
    cell = make_cell("gru", 3)
    cell.build((None, 2))
    outputs, _ = Recurrent(cell)(tf.ones((2, 4, 2)))
    assert outputs.shape == (2, 4, 3)


@pytest.mark.parametrize("not_a_cell", ["lstm", keras.layers.Dense(3)], ids=["str", "dense"])
def test_rejects_what_is_not_a_cell(not_a_cell):
    with pytest.raises(ValueError, match="Received: cell="):
        Recurrent(not_a_cell)


def test_output_shapes():
    layer = Recurrent(make_cell("lstm", 5))
    outputs, (h, c) = layer(tf.ones((3, 7, 2)))
    assert outputs.shape == (3, 7, 5)
    assert h.shape == c.shape == (3, 5)
