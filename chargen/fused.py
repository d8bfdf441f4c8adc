"""Teacher forcing's fast path: a fused loop per cell type with a hand-written, batched backward pass.

Teacher forcing holds the state entering each step constant for the gradient, so the gradient of a
step needs only that step's own activations. The generic path (`recurrent.Recurrent`) gets it by
running the loop, then recomputing every step at once under automatic differentiation, which
computes the whole forward pass twice. Here the loop saves each step's gate activations as it goes,
and the backward pass is written out from the equations in `cells.py`: every weight gradient is one
large matrix product over all batch x time steps, with no chain through time and no recomputation.

The generic path stays the reference: tests hold this one's outputs and gradients equal to it for
every cell. TensorFlow only, like cuDNN's kernels are to Keras's LSTM: `fusable(cell)` tells the
caller whether a cell has a fused path.
"""

from __future__ import annotations

import tensorflow as tf

from chargen.cells import GRUCell, LSTMCell, SimpleRNNCell


def fusable(cell) -> bool:
    return type(cell) in (SimpleRNNCell, GRUCell, LSTMCell)


def teacher_forced(cell, inputs, initial_state):
    """Teacher-forced outputs `(batch, time, units)` and final states, with the fused gradient."""
    weights = [tf.convert_to_tensor(cell.input_kernel), tf.convert_to_tensor(cell.recurrent_kernel),
               tf.convert_to_tensor(cell.bias)]
    if getattr(cell, "reset_after", False):
        weights.append(tf.convert_to_tensor(cell.recurrent_bias))
    kind = "gru_reset_after" if getattr(cell, "reset_after", False) else type(cell).__name__
    forward, backward, num_saved = _KERNELS[kind]
    initial_state = [tf.stop_gradient(s) for s in initial_state]

    @tf.custom_gradient
    def fused(inputs, *weights):
        batch, time, features = tf.shape(inputs)[0], tf.shape(inputs)[1], inputs.shape[-1]
        flat_inputs = tf.reshape(inputs, (-1, features))  # (batch * time, features)
        projected = tf.reshape(flat_inputs @ weights[0] + weights[2], (batch, time, -1))  # W_x x_t + b
        outputs, final_state, saved = _loop(forward, num_saved, projected, initial_state, weights)
        units = outputs.shape[-1]
        entering = tf.concat([initial_state[0][:, None], outputs[:, :-1]], axis=1)  # h_{t-1}, (batch, time, units)

        def gradient(d_outputs, *unused_final_state_gradients):
            flat = [tf.reshape(t, (-1, t.shape[-1])) for t in (d_outputs, entering, outputs, *saved)]
            d_pre, d_weights = backward(*flat, initial_state, weights, units)  # d_pre: (batch * time, gates * units)
            d_inputs = tf.reshape(d_pre @ tf.transpose(weights[0]), tf.shape(inputs))
            d_input_kernel = tf.transpose(flat_inputs) @ d_pre
            return (d_inputs, d_input_kernel, *d_weights)

        return (outputs, *final_state), gradient

    outputs, *final_state = fused(inputs, *weights)
    return outputs, [tf.stop_gradient(s) for s in final_state]


def _loop(step, num_saved, projected, initial_state, weights):
    """Run `step` over time; returns outputs (batch, time, units), final state, saved activations."""
    time_major = tf.transpose(projected, (1, 0, 2))  # (time, batch, gates * units)
    steps = tf.shape(time_major)[0]
    by_step = tf.TensorArray(projected.dtype, size=steps).unstack(time_major)
    collected = tuple(tf.TensorArray(projected.dtype, size=steps) for _ in range(1 + num_saved))

    def body(t, state, collected):
        new_state, saved = step(by_step.read(t), list(state), weights)
        values = (new_state[0], *saved)
        return t + 1, tuple(new_state), tuple(ta.write(t, v) for ta, v in zip(collected, values))

    _, final_state, collected = tf.while_loop(
        lambda t, *_: t < steps, body, (tf.constant(0), tuple(initial_state), collected)
    )
    stacked = [tf.transpose(ta.stack(), (1, 0, 2)) for ta in collected]  # each (batch, time, size)
    return stacked[0], list(final_state), stacked[1:]


# SimpleRNN: h = tanh(p + h_prev W_hh), where p = W_xh x + b_h ---------------------------------------

def _rnn_forward(p, state, weights):
    h = tf.tanh(p + state[0] @ weights[1])
    return [h], ()


def _rnn_backward(d_h, h_prev, h, initial_state, weights, units):
    d_pre = d_h * (1.0 - h * h)
    return d_pre, (tf.transpose(h_prev) @ d_pre, tf.reduce_sum(d_pre, 0))


# LSTM, gates i, f, g, o: c = f c_prev + i g, h = o tanh(c) -------------------------------------------

def _lstm_forward(p, state, weights):
    h_prev, c_prev = state
    i, f, g, o = tf.split(p + h_prev @ weights[1], 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c_prev + i * g
    h = o * tf.tanh(c)
    return [h, c], (tf.concat([i, f, g, o], -1), c)


def _lstm_backward(d_h, h_prev, h, gates, c, initial_state, weights, units):
    i, f, g, o = tf.split(gates, 4, axis=-1)
    batch = tf.shape(initial_state[1])[0]
    c_by_step = tf.reshape(c, (batch, -1, units))
    c_prev = tf.reshape(tf.concat([initial_state[1][:, None], c_by_step[:, :-1]], 1), (-1, units))
    tanh_c = tf.tanh(c)
    d_c = d_h * o * (1.0 - tanh_c * tanh_c)  # no gradient arrives from c_t's future: it is cut
    d_pre = tf.concat([
        d_c * g * i * (1.0 - i),
        d_c * c_prev * f * (1.0 - f),
        d_c * i * (1.0 - g * g),
        d_h * tanh_c * o * (1.0 - o),
    ], -1)  # (batch * time, 4 * units)
    return d_pre, (tf.transpose(h_prev) @ d_pre, tf.reduce_sum(d_pre, 0))


# GRU, gates z, r, h: h = z h_prev + (1 - z) n, n = tanh(p_h + (r h_prev) W_hh) -----------------------

def _gru_forward(p, state, weights):
    (h_prev,) = state
    units = h_prev.shape[-1]
    kernel_zr, kernel_h = weights[1][:, :2 * units], weights[1][:, 2 * units:]
    z, r = tf.split(tf.sigmoid(p[:, :2 * units] + h_prev @ kernel_zr), 2, axis=-1)
    n = tf.tanh(p[:, 2 * units:] + (r * h_prev) @ kernel_h)
    h = z * h_prev + (1.0 - z) * n
    return [h], (tf.concat([z, r, n], -1),)


def _gru_backward(d_h, h_prev, h, gates, initial_state, weights, units):
    z, r, n = tf.split(gates, 3, axis=-1)
    d_n_pre = d_h * (1.0 - z) * (1.0 - n * n)
    d_z_pre = d_h * (h_prev - n) * z * (1.0 - z)
    d_r_pre = (d_n_pre @ tf.transpose(weights[1][:, 2 * units:])) * h_prev * r * (1.0 - r)
    d_pre = tf.concat([d_z_pre, d_r_pre, d_n_pre], -1)  # (batch * time, 3 * units)
    d_recurrent = tf.concat([tf.transpose(h_prev) @ d_pre[:, :2 * units], tf.transpose(r * h_prev) @ d_n_pre], -1)
    return d_pre, (d_recurrent, tf.reduce_sum(d_pre, 0))


# GRU with reset_after: n = tanh(p_h + r (h_prev W_hh + b'_h)) ----------------------------------------

def _gru_reset_after_forward(p, state, weights):
    (h_prev,) = state
    units = h_prev.shape[-1]
    recurrent = h_prev @ weights[1] + weights[3]  # (batch, 3 * units)
    z, r = tf.split(tf.sigmoid(p[:, :2 * units] + recurrent[:, :2 * units]), 2, axis=-1)
    n = tf.tanh(p[:, 2 * units:] + r * recurrent[:, 2 * units:])
    h = z * h_prev + (1.0 - z) * n
    return [h], (tf.concat([z, r, n], -1), recurrent[:, 2 * units:])


def _gru_reset_after_backward(d_h, h_prev, h, gates, recurrent_h, initial_state, weights, units):
    z, r, n = tf.split(gates, 3, axis=-1)
    d_n_pre = d_h * (1.0 - z) * (1.0 - n * n)
    d_z_pre = d_h * (h_prev - n) * z * (1.0 - z)
    d_r_pre = d_n_pre * recurrent_h * r * (1.0 - r)
    d_pre = tf.concat([d_z_pre, d_r_pre, d_n_pre], -1)  # input side, (batch * time, 3 * units)
    d_recurrent_pre = tf.concat([d_z_pre, d_r_pre, d_n_pre * r], -1)  # recurrent side
    return d_pre, (tf.transpose(h_prev) @ d_recurrent_pre, tf.reduce_sum(d_pre, 0), tf.reduce_sum(d_recurrent_pre, 0))


_KERNELS = {  # kind: (forward step, backward, how many activations the step saves)
    "SimpleRNNCell": (_rnn_forward, _rnn_backward, 0),
    "LSTMCell": (_lstm_forward, _lstm_backward, 2),
    "GRUCell": (_gru_forward, _gru_backward, 1),
    "gru_reset_after": (_gru_reset_after_forward, _gru_reset_after_backward, 2),
}
