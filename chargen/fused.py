"""The fast path: a fused loop per cell type with a hand-written backward pass, for both training modes.

Automatic differentiation of the generic loop (`recurrent.run_cell`) does, at every step of the
backward pass, three matrix products: the gradient of the recurrent kernel, of the input and of the
previous state. Only the last of these is needed inside the loop. Here the forward loop saves each
step's gate activations; the backward pass then runs through time doing only what the chain needs
(the previous state's gradient), and afterwards computes every weight gradient as one large matrix
product over all batch x time steps:

  - bptt: the backward loop carries dL/dh (and dL/dc for the LSTM) from step t to step t-1;
  - teacher forcing: nothing is carried (the state entering a step is a constant), so the backward
    pass has no loop at all: every step's pre-activation gradient is computed at once.

The input projection W_x x_t + b is computed for the whole window up front, outside the loop.

The generic path stays the reference: tests hold this one's outputs and gradients equal to it for
every cell, in both modes. TensorFlow only, as cuDNN's kernels are for Keras's own LSTM;
`fusable(cell)` says whether a cell has a fused path.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from chargen.cells import GRUCell, LSTMCell, SimpleRNNCell


def fusable(cell) -> bool:
    return type(cell) in (SimpleRNNCell, GRUCell, LSTMCell)


def run(cell, inputs, initial_state, through_time: bool):
    """Outputs `(batch, time, units)` and final states of `cell` over `inputs`, with the fused gradient.

    Same values and gradients as the generic path: BPTT (`through_time=True`) differentiates through
    every step and into the initial state; teacher forcing cuts the gradient at each step's incoming
    state, and its final states carry no gradient.
    """
    reset_after = bool(getattr(cell, "reset_after", False))
    kernel = _GRU_RESET_AFTER if reset_after else _KERNELS[type(cell)]
    weights = [tf.convert_to_tensor(w) for w in (cell.input_kernel, cell.recurrent_kernel, cell.bias)]
    if reset_after:
        weights.append(tf.convert_to_tensor(cell.recurrent_bias))
    num_states = len(initial_state)
    if not through_time:
        initial_state = [tf.stop_gradient(s) for s in initial_state]

    @tf.custom_gradient
    def fused(inputs, *state_and_weights):
        initial, weights = list(state_and_weights[:num_states]), list(state_and_weights[num_states:])
        steps, features = tf.shape(inputs)[1], inputs.shape[-1]
        time_major = tf.transpose(inputs, (1, 0, 2))  # (time, batch, features)
        flat_inputs = tf.reshape(time_major, (-1, features))  # (time * batch, features)
        projected = tf.reshape(flat_inputs @ weights[0] + weights[2], (steps, -1, weights[0].shape[-1]))
        outputs, final_state, saved = _forward(kernel, projected, initial, weights)  # time-major
        units = outputs.shape[-1]
        previous = [tf.concat([s[None], seq[:-1]], 0) for s, seq in zip(initial, (outputs, *kernel.state_sequences(saved)))]

        def gradient(d_outputs, *d_final_state):
            d_outputs = tf.transpose(d_outputs, (1, 0, 2))  # (time, batch, units)
            if through_time:
                d_pre, d_initial = _backward_through_time(kernel, d_outputs, d_final_state, outputs, saved, previous, weights, units)
            else:
                flat = [tf.reshape(t, (-1, t.shape[-1])) for t in (d_outputs, outputs, *saved, *previous)]
                d_pre, _ = kernel.step_gradients(flat[0], None, flat[1], flat[2:2 + len(saved)], flat[2 + len(saved):], weights, units, chain=False)
                d_initial = [None] * num_states
            flat_saved = [tf.reshape(t, (-1, t.shape[-1])) for t in saved]
            flat_previous_h = tf.reshape(previous[0], (-1, units))
            d_inputs = tf.transpose(tf.reshape(d_pre @ tf.transpose(weights[0]), (steps, -1, features)), (1, 0, 2))
            d_weights = (tf.transpose(flat_inputs) @ d_pre, *kernel.recurrent_gradients(d_pre, flat_previous_h, flat_saved, weights, units))
            return (d_inputs, *d_initial, *d_weights)

        batch_major = tf.transpose(outputs, (1, 0, 2))  # (batch, time, units)
        return (batch_major, *final_state), gradient

    outputs, *final_state = fused(inputs, *initial_state, *weights)
    if not through_time:
        final_state = [tf.stop_gradient(s) for s in final_state]
    return outputs, final_state


def _forward(kernel, projected, initial_state, weights):
    """The loop: returns outputs (time, batch, units), the final state and the saved activations (time-major)."""
    steps = tf.shape(projected)[0]
    by_step = tf.TensorArray(projected.dtype, size=steps).unstack(projected)
    collected = tuple(tf.TensorArray(projected.dtype, size=steps) for _ in range(1 + kernel.num_saved))

    def body(t, state, collected):
        new_state, saved = kernel.step(by_step.read(t), list(state), weights)
        keep_shapes(new_state, state)
        values = (new_state[0], *saved)
        return t + 1, tuple(new_state), tuple(ta.write(t, v) for ta, v in zip(collected, values))

    _, final_state, collected = tf.while_loop(
        lambda t, *_: t < steps, body, (tf.constant(0), tuple(initial_state), collected)
    )
    stacked = [ta.stack() for ta in collected]  # each (time, batch, size)
    return stacked[0], list(final_state), stacked[1:]


def keep_shapes(new_state, state) -> None:
    """Give a loop's new state the static shape it entered with.

    A state whose batch size is known can meet inputs whose batch size is not (a layer above the
    first reads the layer below's stacked outputs); `tf.while_loop` refuses a loop variable whose
    shape gets less specific, though at run time the sizes agree.
    """
    for new, old in zip(new_state, state):
        new.set_shape(old.shape)


def _backward_through_time(kernel, d_outputs, d_final_state, outputs, saved, previous, weights, units):
    """Carry the state gradients from the last step to the first; returns d_pre (time * batch, gates * units)."""
    steps = tf.shape(d_outputs)[0]
    carried = tuple(tf.zeros_like(s[0]) if d is None else d for d, s in zip(d_final_state, previous))
    collected = tf.TensorArray(d_outputs.dtype, size=steps)

    def body(t, carried, collected):
        d_h = d_outputs[t] + carried[0]
        d_pre, d_previous = kernel.step_gradients(
            d_h, carried[1] if len(carried) > 1 else None, outputs[t], [s[t] for s in saved],
            [p[t] for p in previous], weights, units, chain=True,
        )
        keep_shapes(d_previous, carried)
        return t - 1, tuple(d_previous), collected.write(t, d_pre)

    _, d_initial, collected = tf.while_loop(
        lambda t, *_: t >= 0, body, (steps - 1, carried, collected)
    )
    d_pre = collected.stack()  # (time, batch, gates * units)
    return tf.reshape(d_pre, (-1, d_pre.shape[-1])), list(d_initial)


class _Kernel(NamedTuple):
    """One cell type's fused step and its derivatives, written from the equations in `cells.py`.

    step(p, state, weights) -> (new_state, saved): one step given p = W_x x_t + b.
    step_gradients(d_h, d_c, h, saved, previous, weights, units, chain) -> (d_pre, d_previous):
        the gradient of the step's pre-activations (input side) and, if `chain`, of the states it received.
    recurrent_gradients(d_pre, h_previous, saved, weights, units) -> gradients of weights[1:].
    state_sequences(saved) -> the state sequences besides h (LSTM: c), to form each step's incoming state.
    """

    step: object
    step_gradients: object
    recurrent_gradients: object
    num_saved: int
    state_sequences: object = lambda saved: ()


# SimpleRNN: h = tanh(p + h_prev W_hh) ----------------------------------------------------------------

def _rnn_step(p, state, weights):
    h = tf.tanh(p + state[0] @ weights[1])
    return [h], ()


def _rnn_step_gradients(d_h, d_c, h, saved, previous, weights, units, chain):
    d_pre = d_h * (1.0 - h * h)
    return d_pre, ([d_pre @ tf.transpose(weights[1])] if chain else None)


def _plain_recurrent_gradients(d_pre, h_previous, saved, weights, units):
    return tf.transpose(h_previous) @ d_pre, tf.reduce_sum(d_pre, 0)


# LSTM, gates i, f, g, o: c = f c_prev + i g, h = o tanh(c) -------------------------------------------

def _lstm_step(p, state, weights):
    h_prev, c_prev = state
    i, f, g, o = tf.split(p + h_prev @ weights[1], 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c_prev + i * g
    return [o * tf.tanh(c), c], (tf.concat([i, f, g, o], -1), c)


def _lstm_step_gradients(d_h, d_c, h, saved, previous, weights, units, chain):
    gates, c = saved
    c_prev = previous[1]
    i, f, g, o = tf.split(gates, 4, axis=-1)
    tanh_c = tf.tanh(c)
    d_c = d_h * o * (1.0 - tanh_c * tanh_c) + (0.0 if d_c is None else d_c)
    d_pre = tf.concat([
        d_c * g * i * (1.0 - i),
        d_c * c_prev * f * (1.0 - f),
        d_c * i * (1.0 - g * g),
        d_h * tanh_c * o * (1.0 - o),
    ], -1)  # (rows, 4 * units)
    return d_pre, ([d_pre @ tf.transpose(weights[1]), d_c * f] if chain else None)


# GRU, gates z, r, h: h = z h_prev + (1 - z) n, n = tanh(p_h + (r h_prev) W_hh) -----------------------

def _gru_step(p, state, weights):
    (h_prev,) = state
    units = h_prev.shape[-1]
    z, r = tf.split(tf.sigmoid(p[:, :2 * units] + h_prev @ weights[1][:, :2 * units]), 2, axis=-1)
    n = tf.tanh(p[:, 2 * units:] + (r * h_prev) @ weights[1][:, 2 * units:])
    return [z * h_prev + (1.0 - z) * n], (tf.concat([z, r, n], -1),)


def _gru_step_gradients(d_h, d_c, h, saved, previous, weights, units, chain):
    z, r, n = tf.split(saved[0], 3, axis=-1)
    h_prev = previous[0]
    d_n_pre = d_h * (1.0 - z) * (1.0 - n * n)
    d_reset_h = d_n_pre @ tf.transpose(weights[1][:, 2 * units:])  # gradient of r * h_prev
    d_zr_pre = tf.concat([d_h * (h_prev - n) * z * (1.0 - z), d_reset_h * h_prev * r * (1.0 - r)], -1)
    d_pre = tf.concat([d_zr_pre, d_n_pre], -1)  # (rows, 3 * units)
    if not chain:
        return d_pre, None
    return d_pre, [d_h * z + d_reset_h * r + d_zr_pre @ tf.transpose(weights[1][:, :2 * units])]


def _gru_recurrent_gradients(d_pre, h_previous, saved, weights, units):
    r = saved[0][:, units:2 * units]
    d_kernel = tf.concat([tf.transpose(h_previous) @ d_pre[:, :2 * units], tf.transpose(r * h_previous) @ d_pre[:, 2 * units:]], -1)
    return d_kernel, tf.reduce_sum(d_pre, 0)


# GRU with reset_after: n = tanh(p_h + r (h_prev W_hh + b'_h)) ----------------------------------------

def _gru_ra_step(p, state, weights):
    (h_prev,) = state
    units = h_prev.shape[-1]
    recurrent = h_prev @ weights[1] + weights[3]  # (batch, 3 * units)
    z, r = tf.split(tf.sigmoid(p[:, :2 * units] + recurrent[:, :2 * units]), 2, axis=-1)
    n = tf.tanh(p[:, 2 * units:] + r * recurrent[:, 2 * units:])
    return [z * h_prev + (1.0 - z) * n], (tf.concat([z, r, n], -1), recurrent[:, 2 * units:])


def _gru_ra_recurrent_side(d_pre, saved, units):
    """The gradient of h_prev W_hh + b'_h: as the input side, but the candidate's part is scaled by r."""
    r = saved[0][:, units:2 * units]
    return tf.concat([d_pre[:, :2 * units], d_pre[:, 2 * units:] * r], -1)


def _gru_ra_step_gradients(d_h, d_c, h, saved, previous, weights, units, chain):
    (z, r, n), recurrent_h = tf.split(saved[0], 3, axis=-1), saved[1]
    h_prev = previous[0]
    d_n_pre = d_h * (1.0 - z) * (1.0 - n * n)
    d_pre = tf.concat([d_h * (h_prev - n) * z * (1.0 - z), d_n_pre * recurrent_h * r * (1.0 - r), d_n_pre], -1)
    if not chain:
        return d_pre, None
    return d_pre, [d_h * z + _gru_ra_recurrent_side(d_pre, saved, units) @ tf.transpose(weights[1])]


def _gru_ra_recurrent_gradients(d_pre, h_previous, saved, weights, units):
    d_recurrent = _gru_ra_recurrent_side(d_pre, saved, units)
    return tf.transpose(h_previous) @ d_recurrent, tf.reduce_sum(d_pre, 0), tf.reduce_sum(d_recurrent, 0)


_KERNELS = {
    SimpleRNNCell: _Kernel(_rnn_step, _rnn_step_gradients, _plain_recurrent_gradients, 0),
    LSTMCell: _Kernel(_lstm_step, _lstm_step_gradients, _plain_recurrent_gradients, 2, lambda saved: (saved[1],)),
    GRUCell: _Kernel(_gru_step, _gru_step_gradients, _gru_recurrent_gradients, 1),
}
_GRU_RESET_AFTER = _Kernel(_gru_ra_step, _gru_ra_step_gradients, _gru_ra_recurrent_gradients, 2)
