"""The fast path: one fused unit per cell type, with its backward pass written out by hand, for both modes.

Automatic differentiation of the generic loop (`recurrent.run_cell`) does three matrix products at every
step of the backward pass: the gradients of the recurrent kernel, of the input and of the previous
state. Only the last is needed inside the loop. So here:

  - the input projection p_t = x_t W_x + b is computed for the whole window up front;
  - the forward loop runs the unit's `step` and keeps each step's states and what the step saved
    for its `backward_step`;
  - bptt: the backward loop carries only dL/dh (and dL/dc for the LSTM) from step t to step t-1 and
    records each step's pre-activation gradients;
  - teacher forcing: nothing is carried (the state entering a step is a constant), so there is no
    backward loop: `backward_step` runs once over all batch x time rows;
  - every weight gradient is then one large product over all batch x time rows.

Each unit reads beside its cell in `cells.py`: the docstring states the forward equations and their
derivatives, and each line of `step` and `backward_step` computes one of them. The weights keep their
names from the equations: W_x (the cell's `input_kernel`), W_h (`recurrent_kernel`), b (`bias`), with
the gates side by side in the cell's order. Notation: p is a step's slice of the input projection;
d_v is dL/dv; for a gate (i, f, g, o, z, r, n) d_<gate> is the gradient of its pre-activation, what
goes into its sigmoid or tanh, and these side by side make d_p, the gradient of p.

The generic path stays the reference: tests hold this one's outputs and gradients equal to it for
every cell, in both modes. TensorFlow only, as cuDNN's kernels are for Keras's own LSTM.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import tensorflow as tf

from chargen.cells import GRUCell, LSTMCell, SimpleRNNCell


def fusable(cell) -> bool:
    """Whether `cell` has a fused unit (a subclass has not: it may have changed the equations)."""
    return type(cell) in _UNITS


def run(cell, inputs, initial_state, through_time: bool):
    """Runs `cell` over `inputs` with its fused unit: the generic path's values, the hand-written gradient.

    Forward and backward compute in the cell's compute dtype (bfloat16 or float16 under a mixed policy).

    Args:
        cell: a cell for which `fusable(cell)` holds.
        inputs: `(batch, time, features)`.
        initial_state: `[h]` or, for the LSTM, `[h, c]`, each `(batch, units)`.
        through_time: True for BPTT (the gradient reaches every earlier step and the initial state);
            False for teacher forcing (it stops at each step's incoming state, and the final state
            carries none).

    Returns `(outputs, final_state)`: outputs `(batch, time, units)`, final_state a list like `initial_state`.
    """
    unit_type = _unit_type(cell)
    names = [field.name for field in dataclasses.fields(unit_type)]
    # The cell's variables are read here, not in its `__call__`, so nothing casts them for us: under a mixed
    # policy they are float32 and are cast to the compute dtype here (their gradients come back as float32).
    dtype = cell.compute_dtype
    weights = [tf.cast(getattr(cell, _CELL_WEIGHTS[name]), dtype) for name in names]
    inputs = tf.cast(inputs, dtype)
    initial_state = [tf.cast(s, dtype) for s in initial_state]
    if not through_time:
        initial_state = [tf.stop_gradient(s) for s in initial_state]
    num_states = len(initial_state)

    @tf.custom_gradient
    def fused(inputs, *state_and_weights):
        unit = unit_type(*state_and_weights[num_states:])
        steps, features = tf.shape(inputs)[1], inputs.shape[-1]
        x = tf.reshape(tf.transpose(inputs, (1, 0, 2)), (-1, features))  # (time * batch, features)
        p = tf.reshape(x @ unit.W_x + unit.b, (steps, -1, unit.b.shape[-1]))  # (time, batch, gates * units)
        h_seq, final_state, record = _forward(unit, p, state_and_weights[:num_states])

        def gradient(d_outputs, *d_final_state):
            d_h_seq = tf.transpose(d_outputs, (1, 0, 2))  # (time, batch, units)
            if through_time:
                d_p, d_initial_state = _backward_through_time(unit, d_h_seq, d_final_state, record)
            else:  # the initial state is a constant
                d_p, d_initial_state = _backward_each_step(unit, d_h_seq, record), [None] * num_states
            d_x = tf.reshape(d_p @ tf.transpose(unit.W_x), (steps, -1, features))  # (time, batch, features)
            d_weights = {"W_x": tf.transpose(x) @ d_p, "b": tf.reduce_sum(d_p, 0)}
            d_weights |= unit.recurrent_gradients(d_p, tf.nest.map_structure(_rows, record))
            return (tf.transpose(d_x, (1, 0, 2)), *d_initial_state, *(d_weights[name] for name in names))

        return (tf.transpose(h_seq, (1, 0, 2)), *final_state), gradient

    outputs, *final_state = fused(inputs, *initial_state, *weights)
    if not through_time:
        final_state = [tf.stop_gradient(s) for s in final_state]
    return outputs, final_state


class _Record(NamedTuple):
    """What the backward pass knows of one step, or of every step at once (then each tensor holds rows)."""

    state_prev: tuple  # the state the step received: (h_prev,) or (h_prev, c_prev), each (batch, units)
    state: tuple  # the state it made: (h,) or (h, c)
    saved: tuple  # what its `step` saved, as the unit's `saved` names them


def _forward(unit, p, initial_state):
    """Returns h at every step `(time, batch, units)`, the final state, and the record of every step, stacked."""
    steps = tf.shape(p)[0]
    p_by_step = tf.TensorArray(p.dtype, size=steps).unstack(p)
    state_seq = tuple(tf.TensorArray(p.dtype, size=steps) for _ in unit.states)
    saved_seq = tuple(tf.TensorArray(p.dtype, size=steps) for _ in unit.saved)

    def body(t, state, state_seq, saved_seq):
        new_state, saved = unit.step(p_by_step.read(t), state)
        _keep_shapes(new_state, state)
        state_seq = tuple(seq.write(t, value) for seq, value in zip(state_seq, new_state))
        saved_seq = tuple(seq.write(t, value) for seq, value in zip(saved_seq, saved))
        return t + 1, new_state, state_seq, saved_seq

    _, final_state, state_seq, saved_seq = tf.while_loop(
        lambda t, *_: t < steps, body, (tf.constant(0), tuple(initial_state), state_seq, saved_seq)
    )
    state_seq = tuple(seq.stack() for seq in state_seq)  # each (time, batch, units)
    # The state each step received, shifted from the ones collected (the loop stores each state once).
    state_prev_seq = tuple(tf.concat([s[None], seq[:-1]], 0) for s, seq in zip(initial_state, state_seq))
    record = _Record(state_prev_seq, state_seq, tuple(seq.stack() for seq in saved_seq))
    return state_seq[0], list(final_state), record  # h is the output


def _backward_through_time(unit, d_h_seq, d_final_state, record):
    """BPTT: the steps from last to first, carrying only the state gradients.

    Returns each step's d_p `(time * batch, gates * units)` and the initial state's gradients.
    """
    steps = tf.shape(d_h_seq)[0]
    d_state = tuple(tf.zeros_like(d_h_seq[0]) if d is None else d for d in d_final_state)
    d_p_seq = tf.TensorArray(d_h_seq.dtype, size=steps)

    def body(t, d_state, d_p_seq):
        d_h, *d_rest = d_state  # what the later steps send back to the state step t made
        record_t = tf.nest.map_structure(lambda seq: seq[t], record)
        d_p, d_state_prev = unit.backward_step((d_h_seq[t] + d_h, *d_rest), record_t)
        _keep_shapes(d_state_prev, d_state)
        return t - 1, d_state_prev, d_p_seq.write(t, d_p)

    _, d_initial_state, d_p_seq = tf.while_loop(lambda t, *_: t >= 0, body, (steps - 1, d_state, d_p_seq))
    return _rows(d_p_seq.stack()), list(d_initial_state)


def _backward_each_step(unit, d_h_seq, record):
    """Teacher forcing: every step's d_p `(time * batch, gates * units)` at once, with no loop.

    Nothing comes back from later steps, so a step's h gets its output's gradient alone and c none; the
    gradients of the states entering the steps are not used (those states are constants), and a
    compiled graph leaves out the products that would compute them.
    """
    d_h = _rows(d_h_seq)  # (time * batch, units)
    d_state = (d_h, *(tf.zeros_like(d_h) for _ in unit.states[1:]))
    d_p, _ = unit.backward_step(d_state, tf.nest.map_structure(_rows, record))
    return d_p


def _rows(seq):
    """(time, batch, size) -> (time * batch, size): every step of every sequence as one row."""
    return tf.reshape(seq, (-1, seq.shape[-1]))


def _keep_shapes(new_state, state):
    """Give a loop's new state (or its gradient) the static shape it entered with.

    A state of known batch size can meet inputs of unknown batch size (a layer above the first reads the
    stacked outputs of the layer below); `tf.while_loop` refuses a loop variable whose shape gets less
    specific, though at run time the sizes agree.
    """
    for new, old in zip(new_state, state):
        new.set_shape(old.shape)


@dataclasses.dataclass(frozen=True)
class _Unit:
    """One cell type's equations, forward and backward, over its weights as tensors named as in them.

    A unit has
        states: the names of its state tensors, h first (h is also the output);
        saved: the names of what `step` saves for `backward_step` besides the states;
        step(p, state) -> (new_state, saved): one step forward;
        backward_step(d_state, record) -> (d_p, d_state_prev): from the gradients reaching the state the
            step made (from its output and from the next step), those of its pre-activations and of the
            state it received; `record` is a `_Record` of one step, or of all steps as rows;
        recurrent_gradients(d_p, record) -> the gradients of its recurrent weights, over all rows at once.
    W_x and b need no method: p = x W_x + b gives d_W_x = x^T d_p and d_b = the sum of d_p over the rows.
    """

    W_x: tf.Tensor  # (features, gates * units)
    W_h: tf.Tensor  # (units, gates * units)
    b: tf.Tensor  # (gates * units,)


@dataclasses.dataclass(frozen=True)
class _SimpleRNN(_Unit):
    """SimpleRNNCell with its default activation, tanh; the subclasses below change `act` and `slope`.

    Forward:   h = act(p + h_prev W_h)
    Backward:  d_p = d_h * act'                          act' read from the output h: slope(h)
               d_h_prev = d_p W_h^T
    Weights:   d_W_h = h_prev^T d_p
    """

    states = ("h",)
    saved = ()
    act = staticmethod(tf.tanh)

    @staticmethod
    def slope(h):
        return 1.0 - h * h  # tanh' = 1 - tanh^2

    def step(self, p, state):
        (h_prev,) = state
        h = self.act(p + h_prev @ self.W_h)  # (batch, units)
        return (h,), ()

    def backward_step(self, d_state, record):
        (d_h,), (h,) = d_state, record.state
        d_p = d_h * self.slope(h)  # (rows, units)
        return d_p, (d_p @ tf.transpose(self.W_h),)

    def recurrent_gradients(self, d_p, record):
        (h_prev,) = record.state_prev
        return {"W_h": tf.transpose(h_prev) @ d_p}


@dataclasses.dataclass(frozen=True)
class _SimpleRNNSigmoid(_SimpleRNN):
    """SimpleRNNCell(activation="sigmoid"): h = sigmoid(p + h_prev W_h)."""

    act = staticmethod(tf.sigmoid)

    @staticmethod
    def slope(h):
        return h * (1.0 - h)  # sigmoid' = s (1 - s)


@dataclasses.dataclass(frozen=True)
class _SimpleRNNRelu(_SimpleRNN):
    """SimpleRNNCell(activation="relu"): h = max(0, p + h_prev W_h)."""

    act = staticmethod(tf.nn.relu)

    @staticmethod
    def slope(h):
        return tf.cast(h > 0, h.dtype)  # relu' = 1 where the output is positive, else 0 (as TensorFlow's, at 0 too)


@dataclasses.dataclass(frozen=True)
class _LSTM(_Unit):
    """LSTMCell; gates i, f, g, o side by side.

    Forward:   i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (p + h_prev W_h)
               c = f * c_prev + i * g
               h = o * tanh(c)
    Backward:  d_c = d_c + d_h * o * (1 - tanh(c)^2)     from the next step, plus through h
               d_i = d_c * g * i * (1 - i)               sigmoid' = s (1 - s)
               d_f = d_c * c_prev * f * (1 - f)
               d_g = d_c * i * (1 - g^2)                 tanh' = 1 - tanh^2
               d_o = d_h * tanh(c) * o * (1 - o)
               d_h_prev = [d_i d_f d_g d_o] W_h^T
               d_c_prev = d_c * f
    Weights:   d_W_h = h_prev^T [d_i d_f d_g d_o]
    """

    states = ("h", "c")
    saved = ("i", "f", "g", "o")

    def step(self, p, state):
        h_prev, c_prev = state
        i, f, g, o = tf.split(p + h_prev @ self.W_h, 4, axis=-1)  # pre-activations, each (batch, units)
        i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
        c = f * c_prev + i * g
        h = o * tf.tanh(c)
        return (h, c), (i, f, g, o)

    def backward_step(self, d_state, record):
        d_h, d_c = d_state
        (_, c_prev), (_, c), (i, f, g, o) = record.state_prev, record.state, record.saved
        tanh_c = tf.tanh(c)
        d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)
        d_i = d_c * g * i * (1.0 - i)
        d_f = d_c * c_prev * f * (1.0 - f)
        d_g = d_c * i * (1.0 - g * g)
        d_o = d_h * tanh_c * o * (1.0 - o)
        d_p = tf.concat([d_i, d_f, d_g, d_o], -1)  # (rows, 4 * units)
        return d_p, (d_p @ tf.transpose(self.W_h), d_c * f)

    def recurrent_gradients(self, d_p, record):
        h_prev, _ = record.state_prev
        return {"W_h": tf.transpose(h_prev) @ d_p}


@dataclasses.dataclass(frozen=True)
class _GRU(_Unit):
    """GRUCell; gates z, r and the candidate n (cells.py's h~) side by side, W_h = [W_h_zr | W_h_n].

    Forward:   z, r = sigmoid(p_zr + h_prev W_h_zr)
               n = tanh(p_n + (r * h_prev) W_h_n)
               h = z * h_prev + (1 - z) * n
    Backward:  d_n = d_h * (1 - z) * (1 - n^2)
               d_z = d_h * (h_prev - n) * z * (1 - z)
               d_rh = d_n W_h_n^T                        the gradient of r * h_prev
               d_r = d_rh * h_prev * r * (1 - r)
               d_h_prev = d_h * z + d_rh * r + [d_z d_r] W_h_zr^T
    Weights:   d_W_h = [h_prev^T [d_z d_r] | (r * h_prev)^T d_n]
    """

    states = ("h",)
    saved = ("z", "r", "n")

    def step(self, p, state):
        (h_prev,) = state
        p_zr, p_n = _zr_and_n(p)
        W_h_zr, W_h_n = _zr_and_n(self.W_h)
        z, r = tf.split(tf.sigmoid(p_zr + h_prev @ W_h_zr), 2, axis=-1)  # each (batch, units)
        n = tf.tanh(p_n + (r * h_prev) @ W_h_n)
        h = z * h_prev + (1.0 - z) * n
        return (h,), (z, r, n)

    def backward_step(self, d_state, record):
        (d_h,), (h_prev,), (z, r, n) = d_state, record.state_prev, record.saved
        W_h_zr, W_h_n = _zr_and_n(self.W_h)
        d_n = d_h * (1.0 - z) * (1.0 - n * n)
        d_z = d_h * (h_prev - n) * z * (1.0 - z)
        d_rh = d_n @ tf.transpose(W_h_n)
        d_r = d_rh * h_prev * r * (1.0 - r)
        d_zr = tf.concat([d_z, d_r], -1)  # (rows, 2 * units)
        d_h_prev = d_h * z + d_rh * r + d_zr @ tf.transpose(W_h_zr)
        return tf.concat([d_zr, d_n], -1), (d_h_prev,)

    def recurrent_gradients(self, d_p, record):
        (h_prev,), (_, r, _) = record.state_prev, record.saved
        d_zr, d_n = _zr_and_n(d_p)
        d_W_h_zr = tf.transpose(h_prev) @ d_zr
        d_W_h_n = tf.transpose(r * h_prev) @ d_n
        return {"W_h": tf.concat([d_W_h_zr, d_W_h_n], -1)}


@dataclasses.dataclass(frozen=True)
class _GRUResetAfter(_Unit):
    """GRUCell(reset_after=True): the reset gate applies after the recurrent product (cuDNN's form).

    b_h, the cell's `recurrent_bias` (b' in cells.py), is the recurrent side's own bias.

    Forward:   a = h_prev W_h + b_h                      every gate's recurrent side, a = [a_zr | a_n]
               z, r = sigmoid(p_zr + a_zr)
               n = tanh(p_n + r * a_n)
               h = z * h_prev + (1 - z) * n
    Backward:  d_n = d_h * (1 - z) * (1 - n^2)
               d_z = d_h * (h_prev - n) * z * (1 - z)
               d_r = d_n * a_n * r * (1 - r)
               d_a = [d_z d_r | d_n * r]                 n sees a_n through r
               d_h_prev = d_h * z + d_a W_h^T
    Weights:   d_W_h = h_prev^T d_a, d_b_h = the sum of d_a over the rows
    """

    b_h: tf.Tensor  # (3 * units,)

    states = ("h",)
    saved = ("z", "r", "n", "a_n")

    def step(self, p, state):
        (h_prev,) = state
        p_zr, p_n = _zr_and_n(p)
        a_zr, a_n = _zr_and_n(h_prev @ self.W_h + self.b_h)
        z, r = tf.split(tf.sigmoid(p_zr + a_zr), 2, axis=-1)  # each (batch, units)
        n = tf.tanh(p_n + r * a_n)
        h = z * h_prev + (1.0 - z) * n
        return (h,), (z, r, n, a_n)

    def backward_step(self, d_state, record):
        (d_h,), (h_prev,), (z, r, n, a_n) = d_state, record.state_prev, record.saved
        d_n = d_h * (1.0 - z) * (1.0 - n * n)
        d_z = d_h * (h_prev - n) * z * (1.0 - z)
        d_r = d_n * a_n * r * (1.0 - r)
        d_a = tf.concat([d_z, d_r, d_n * r], -1)  # (rows, 3 * units)
        d_h_prev = d_h * z + d_a @ tf.transpose(self.W_h)
        return tf.concat([d_z, d_r, d_n], -1), (d_h_prev,)

    def recurrent_gradients(self, d_p, record):
        (h_prev,), (_, r, _, _) = record.state_prev, record.saved
        d_zr, d_n = _zr_and_n(d_p)
        d_a = tf.concat([d_zr, d_n * r], -1)  # (rows, 3 * units), as in backward_step
        return {"W_h": tf.transpose(h_prev) @ d_a, "b_h": tf.reduce_sum(d_a, 0)}


def _zr_and_n(v):
    """Split a GRU's gate axis into the z and r parts (side by side) and the candidate's part."""
    units = v.shape[-1] // 3
    return tf.split(v, [2 * units, units], axis=-1)


_UNITS = {SimpleRNNCell: _SimpleRNN, GRUCell: _GRU, LSTMCell: _LSTM}
_SIMPLE_RNN_UNITS = {"tanh": _SimpleRNN, "sigmoid": _SimpleRNNSigmoid, "relu": _SimpleRNNRelu}

# The cell attribute that holds each named weight.
_CELL_WEIGHTS = {"W_x": "input_kernel", "W_h": "recurrent_kernel", "b": "bias", "b_h": "recurrent_bias"}


def _unit_type(cell):
    """The unit for `cell`'s equations: each of the GRU's two forms and each SimpleRNN activation has its own."""
    if type(cell) is GRUCell and cell.reset_after:
        return _GRUResetAfter
    if type(cell) is SimpleRNNCell:
        return _SIMPLE_RNN_UNITS[cell.activation]
    return _UNITS[type(cell)]
