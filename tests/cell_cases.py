"""What the cell and loop tests share: the cell variants, the two paths of the loop, random weights and states."""

import pytest
import tensorflow as tf

# (kind for make_cell, extra constructor arguments); GRU is checked in both of its forms.
CASES = [
    pytest.param("rnn", {}, id="rnn"),
    pytest.param("gru", {"reset_after": False}, id="gru"),
    pytest.param("gru", {"reset_after": True}, id="gru-reset_after"),
    pytest.param("lstm", {}, id="lstm"),
]

# The SimpleRNN's other activations (tanh is "rnn" above), for the tests of its equations and fused path.
ACTIVATION_CASES = [pytest.param("rnn", {"activation": name}, id=f"rnn-{name}") for name in ("sigmoid", "relu")]

# `Recurrent(cell, fused=...)`: the reference (the cell's `call` in a loop) and the fast path (fused.py).
PATHS = [pytest.param(False, id="reference"), pytest.param(True, id="fused")]


def randomize(layer, rng, scale=0.5):
    """Give every weight of `layer` random, non-trivial values (biases included)."""
    for weight in layer.weights:
        weight.assign(rng.normal(0.0, scale, size=tuple(weight.shape)).astype(weight.dtype))


def random_states(cell, rng, batch, dtype="float32", scale=0.5):
    """A random, non-zero initial state for `cell`: one `(batch, size)` tensor per entry of `state_size`."""
    return [tf.constant(rng.normal(0.0, scale, size=(batch, size)).astype(dtype)) for size in cell.state_size]
