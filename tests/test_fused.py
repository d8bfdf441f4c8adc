"""The fused kernels are held equal to the generic path, outputs and gradients, per cell and mode."""

import numpy as np
import pytest
import tensorflow as tf

from chargen import fused
from chargen.cells import make_cell
from chargen.model import CharModel
from chargen.recurrent import Recurrent

from cell_cases import ACTIVATION_CASES, CASES, PATHS

MODES = [pytest.param(True, id="bptt"), pytest.param(False, id="teacher-forcing")]


@pytest.mark.parametrize("through_time", MODES)
@pytest.mark.parametrize("kind, kwargs", CASES + ACTIVATION_CASES)
def test_fused_kernel_equals_the_generic_path(kind, kwargs, through_time):
    rng = np.random.default_rng(7)
    cell = make_cell(kind, 5, dtype="float64", **kwargs)
    layer = Recurrent(cell, fused=False, dtype="float64")
    inputs = tf.constant(rng.normal(size=(3, 9, 4)))
    layer(inputs)
    for weight in cell.weights:  # non-trivial weights, every bias too
        weight.assign(rng.normal(scale=0.6, size=weight.shape))
    initial = [tf.constant(rng.normal(size=(3, 5))) for _ in cell.state_size]
    upstream = tf.constant(rng.normal(size=(3, 9, 5)))
    final_upstream = [tf.constant(rng.normal(size=(3, 5))) for _ in cell.state_size]

    def run(path):
        with tf.GradientTape() as tape:
            tape.watch([inputs, *initial])
            outputs, final = path()
            # The loss reads the final states too, so their gradient path is checked as well.
            loss = tf.reduce_sum(outputs * upstream) + sum(tf.reduce_sum(s * u) for s, u in zip(final, final_upstream))
        sources = [inputs, *initial, *cell.trainable_weights]
        gradients = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return outputs, final, gradients

    reference = run(lambda: layer(inputs, initial_state=initial, through_time=through_time))
    fast = run(lambda: fused.run(cell, inputs, initial, through_time))
    np.testing.assert_allclose(fast[0], reference[0], rtol=0, atol=1e-12)
    for mine, theirs in zip(fast[1], reference[1]):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-12)
    assert len(fast[2]) == len(reference[2]) == 1 + len(initial) + len(cell.trainable_weights)
    for index, (mine, theirs) in enumerate(zip(fast[2], reference[2])):
        if through_time or not 1 <= index <= len(initial):  # teacher forcing: no gradient into the initial state
            assert np.abs(theirs).max() > 1e-3  # every gradient is exercised
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("through_time", MODES)
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_model_uses_the_fused_kernel_and_gets_the_reference_gradient(cell, through_time, monkeypatch):
    called_with = []  # the cell of every call to fused.run

    def counted_run(cell, *args):
        called_with.append(cell)
        return run(cell, *args)

    run = fused.run
    monkeypatch.setattr(fused, "run", counted_run)
    ids = tf.constant(np.random.default_rng(1).integers(0, 11, size=(2, 8)))
    model = CharModel(11, cell=cell, num_layers=2, units=6, embedding_dim=3)
    model.build()
    generic = CharModel(11, cell=cell, num_layers=2, units=6, embedding_dim=3)
    generic.build()
    generic.set_weights(model.get_weights())
    for layer in generic.recurrent_layers:
        layer.fused = False

    def gradients(model):
        with tf.GradientTape() as tape:
            logits, _ = model(ids, through_time=through_time)
            loss = tf.reduce_mean(logits**2)
        return tape.gradient(loss, model.trainable_variables)

    fast = gradients(model)
    assert called_with == [layer.cell for layer in model.recurrent_layers]  # each layer once, by default
    reference = gradients(generic)
    assert len(called_with) == 2  # the generic path never calls it
    assert len(fast) == len(reference) == len(model.trainable_variables)
    for mine, theirs in zip(fast, reference):
        np.testing.assert_allclose(tf.convert_to_tensor(mine), tf.convert_to_tensor(theirs), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused_flag", PATHS)
def test_a_traced_model_with_a_fixed_batch_of_one_runs(fused_flag):
    # The second layer's inputs come out of the first layer's loop with an unknown batch size,
    # while the states given to it have a known one: the loop must accept both.
    model = CharModel(10, cell="rnn", num_layers=2, units=8, embedding_dim=4)
    model.build()
    for layer in model.recurrent_layers:
        layer.fused = fused_flag
    traced = tf.function(lambda ids, states: model(ids, states=states))
    logits, states = traced(tf.zeros((1, 3), tf.int32), model.initial_states(1))
    assert logits.shape == (1, 3, 10) and states[1][0].shape == (1, 8)
