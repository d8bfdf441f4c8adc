"""The three recurrent cells, written from their equations as Keras layers.

A cell computes one time step: `call(inputs, states) -> (output, new_states)`. It holds no loop
(that lives in `recurrent.py`) and uses `keras.ops` only. Gate weights are fused into one input
kernel and one recurrent kernel per cell and split with `ops.split`, so a step costs two matrix
products however many gates there are; the gate order is stated in each docstring, and
`gate_names` lets tools show the per-gate matrices (W_xh, W_hh, b) by name.

`call(..., return_gates=True)` also returns the step's gate values by name (`gate_values` in
`config.CELL_KINDS`), for `chargen inspect` to look inside (as Keras's attention layers return their
scores on request). They are the tensors the step computes anyway, so asking for them costs nothing, and a
step that is not asked returns what it always did.
"""

from __future__ import annotations

import keras
from keras import ops

from chargen.config import ACTIVATIONS, CELL_KINDS

# The SimpleRNN's choices of activation (`--activation`), by the names `config.ACTIVATIONS` gives them.
_ACTIVATION_FUNCTIONS = {"tanh": ops.tanh, "sigmoid": ops.sigmoid, "relu": ops.relu}


class _Cell(keras.layers.Layer):
    """What every cell shares: hyperparameters, the fused weights, config and state layout.

    A subclass names its `kind` in `config.CELL_KINDS`, which holds its gate names (in the order they are
    stacked along the last axis of the fused kernels) and how many state tensors it carries.

    Precision follows the cell's dtype policy: under "mixed_bfloat16" or "mixed_float16" the weights are
    float32 and Keras's `__call__` casts them and the inputs to the compute dtype, so `call` computes in it.
    """

    kind: str = ""
    gate_names: tuple[str, ...] = ()
    gate_values: tuple[str, ...] = ()
    num_states = 1

    def __init__(
        self,
        units: int,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be a positive integer. Received: units={units!r}")
        self.units = units
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.state_size = [units] * self.num_states
        self.output_size = units

    def build(self, input_shape):
        width = len(self.gate_names) * self.units
        self.input_kernel = self.add_weight(
            shape=(input_shape[-1], width), initializer=self.kernel_initializer, name="input_kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, width), initializer=self.recurrent_initializer, name="recurrent_kernel"
        )
        self.bias = self.add_weight(shape=(width,), initializer=self._bias_init(), name="bias")

    def _bias_init(self):
        return self.bias_initializer

    def get_initial_state(self, batch_size: int, dtype=None):
        """Zero states, one `(batch_size, units)` tensor per entry of `state_size`.

        By default in the dtype the cell computes in (bfloat16 under a "mixed_bfloat16" policy, whose weights
        stay float32): a loop's state must keep one dtype from step to step.
        """
        return [ops.zeros((batch_size, self.units), dtype=dtype or self.compute_dtype) for _ in range(self.num_states)]

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


@keras.saving.register_keras_serializable(package="chargen")
class SimpleRNNCell(_Cell):
    """Elman's recurrent cell.

    h_t = act(W_xh x_t + W_hh h_{t-1} + b_h); the output is h_t. act is tanh by default, or sigmoid or
    relu, so that "why tanh" can be tried: sigmoid's outputs are all positive and its slope is at most 1/4,
    relu's outputs are unbounded.

    Args:
        units: size of the hidden state h.
        activation: "tanh", "sigmoid" or "relu" (`config.ACTIVATIONS`).
        kernel_initializer, recurrent_initializer, bias_initializer: for W_xh, W_hh and b_h.

    Call arguments:
        inputs: `(batch, input_dim)`, x_t.
        states: `[h_{t-1}]`, each `(batch, units)`.
        return_gates: also return the step's gate values, each `(batch, units)`, by name.

    Returns `(h_t, [h_t])`; with `return_gates=True`, `(h_t, [h_t], {})`: this cell has no gates.

    Example:
        >>> cell = SimpleRNNCell(8)
        >>> h, [h] = cell(ops.ones((2, 3)), [ops.zeros((2, 8))])
    """

    kind = "rnn"
    gate_names = CELL_KINDS[kind].gate_names

    def __init__(self, units: int, activation: str = "tanh", **kwargs):
        super().__init__(units, **kwargs)
        if activation not in _ACTIVATION_FUNCTIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}. Received: activation={activation!r}")
        self.activation = activation

    def call(self, inputs, states, training=False, return_gates=False):
        (h_prev,) = states
        h = _ACTIVATION_FUNCTIONS[self.activation](  # (batch, units)
            ops.matmul(inputs, self.input_kernel) + ops.matmul(h_prev, self.recurrent_kernel) + self.bias
        )
        return (h, [h], {}) if return_gates else (h, [h])

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


@keras.saving.register_keras_serializable(package="chargen")
class GRUCell(_Cell):
    """Gated recurrent unit (Cho et al., 2014). Gate order in the fused kernels: z, r, h.

    z_t = sigmoid(W_xz x_t + W_hz h_{t-1} + b_z)          update gate
    r_t = sigmoid(W_xr x_t + W_hr h_{t-1} + b_r)          reset gate
    h~_t = tanh(W_xh x_t + W_hh (r_t * h_{t-1}) + b_h)     candidate
    h_t = z_t * h_{t-1} + (1 - z_t) * h~_t

    With `reset_after=True` (the cuDNN form, Keras's default) each gate also gets a recurrent bias b'
    (`recurrent_bias`, order z, r, h) and the reset gate applies after the recurrent product:
    z_t = sigmoid(W_xz x_t + b_z + W_hz h_{t-1} + b'_z), likewise r_t, and
    h~_t = tanh(W_xh x_t + b_h + r_t * (W_hh h_{t-1} + b'_h)), so all three recurrent products happen
    in one matrix product.

    Args:
        units: size of the hidden state h.
        reset_after: apply the reset gate after the recurrent product (see above).
        kernel_initializer, recurrent_initializer, bias_initializer: for the fused W_x*, W_h*, b_*.

    Call arguments:
        inputs: `(batch, input_dim)`, x_t.
        states: `[h_{t-1}]`, each `(batch, units)`.
        return_gates: also return the step's gate values, each `(batch, units)`, by name.

    Returns `(h_t, [h_t])`; with `return_gates=True`, `(h_t, [h_t], {"z": z_t, "r": r_t, "h~": h~_t})`.

    Example:
        >>> cell = GRUCell(8)
        >>> h, [h] = cell(ops.ones((2, 3)), [ops.zeros((2, 8))])
    """

    kind = "gru"
    gate_names = CELL_KINDS[kind].gate_names
    gate_values = CELL_KINDS[kind].gate_values

    def __init__(self, units: int, reset_after: bool = False, **kwargs):
        super().__init__(units, **kwargs)
        self.reset_after = bool(reset_after)

    def build(self, input_shape):
        super().build(input_shape)
        if self.reset_after:
            self.recurrent_bias = self.add_weight(
                shape=(3 * self.units,), initializer=self.bias_initializer, name="recurrent_bias"
            )

    def call(self, inputs, states, training=False, return_gates=False):
        (h_prev,) = states
        x_z, x_r, x_h = ops.split(ops.matmul(inputs, self.input_kernel) + self.bias, 3, axis=-1)
        if self.reset_after:
            projected = ops.matmul(h_prev, self.recurrent_kernel) + self.recurrent_bias
            h_z, h_r, h_h = ops.split(projected, 3, axis=-1)
            z = ops.sigmoid(x_z + h_z)
            r = ops.sigmoid(x_r + h_r)
            candidate = ops.tanh(x_h + r * h_h)
        else:
            kernel_zr, kernel_h = ops.split(self.recurrent_kernel, [2 * self.units], axis=-1)
            h_z, h_r = ops.split(ops.matmul(h_prev, kernel_zr), 2, axis=-1)
            z = ops.sigmoid(x_z + h_z)
            r = ops.sigmoid(x_r + h_r)
            candidate = ops.tanh(x_h + ops.matmul(r * h_prev, kernel_h))
        h = z * h_prev + (1.0 - z) * candidate  # (batch, units)
        return (h, [h], dict(zip(self.gate_values, (z, r, candidate)))) if return_gates else (h, [h])

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


@keras.saving.register_keras_serializable(package="chargen")
class LSTMCell(_Cell):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997, with a forget gate). Gate order: i, f, g, o.

    i_t = sigmoid(W_xi x_t + W_hi h_{t-1} + b_i)          input gate
    f_t = sigmoid(W_xf x_t + W_hf h_{t-1} + b_f)          forget gate (b_f starts at 1)
    g_t = tanh(W_xg x_t + W_hg h_{t-1} + b_g)             candidate
    o_t = sigmoid(W_xo x_t + W_ho h_{t-1} + b_o)          output gate
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

    Args:
        units: size of h and c.
        unit_forget_bias: start b_f at 1 so the cell remembers by default early in training.
        kernel_initializer, recurrent_initializer, bias_initializer: for the fused W_x*, W_h*, b_*.

    Call arguments:
        inputs: `(batch, input_dim)`, x_t.
        states: `[h_{t-1}, c_{t-1}]`, each `(batch, units)`.
        return_gates: also return the step's gate values, each `(batch, units)`, by name.

    Returns `(h_t, [h_t, c_t])`; with `return_gates=True`, `(h_t, [h_t, c_t], {"i": i_t, "f": f_t, "g": g_t,
    "o": o_t})`.

    Example:
        >>> cell = LSTMCell(8)
        >>> h, [h, c] = cell(ops.ones((2, 3)), [ops.zeros((2, 8)), ops.zeros((2, 8))])
    """

    kind = "lstm"
    gate_names = CELL_KINDS[kind].gate_names
    gate_values = CELL_KINDS[kind].gate_values
    num_states = CELL_KINDS[kind].num_states

    def __init__(self, units: int, unit_forget_bias: bool = True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def _bias_init(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        units, base = self.units, self.bias_initializer

        def forget_bias_one(shape, dtype=None):
            return ops.concatenate(
                [base((units,), dtype), ops.ones((units,), dtype), base((2 * units,), dtype)]
            )

        return forget_bias_one

    def call(self, inputs, states, training=False, return_gates=False):
        h_prev, c_prev = states
        projected = ops.matmul(inputs, self.input_kernel) + ops.matmul(h_prev, self.recurrent_kernel)
        a_i, a_f, a_g, a_o = ops.split(projected + self.bias, 4, axis=-1)  # each (batch, units)
        i, f, g, o = ops.sigmoid(a_i), ops.sigmoid(a_f), ops.tanh(a_g), ops.sigmoid(a_o)
        c = f * c_prev + i * g
        h = o * ops.tanh(c)
        return (h, [h, c], dict(zip(self.gate_values, (i, f, g, o)))) if return_gates else (h, [h, c])

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


CELLS = {cell.kind: cell for cell in (SimpleRNNCell, GRUCell, LSTMCell)}


def make_cell(kind: str, units: int, reset_after: bool = False, activation: str = "tanh", **kwargs) -> _Cell:
    """The cell named `kind` (a key of `config.CELL_KINDS`): the one lookup the rest of chargen uses.

    `reset_after` chooses the GRU's candidate form; it is refused for the other cells. `activation` is the
    SimpleRNN's; the gated cells keep their sigmoid gates and tanh candidate, so only "tanh" is accepted there.
    """
    try:
        cell_class = CELLS[kind]
    except KeyError:
        raise ValueError(f"unknown cell {kind!r}; choose one of {', '.join(CELLS)}. Received: kind={kind!r}") from None
    if reset_after and cell_class is not GRUCell:
        raise ValueError(f"reset_after applies to the GRU only. Received: kind={kind!r}, reset_after=True")
    if cell_class is SimpleRNNCell:
        kwargs["activation"] = activation
    elif activation != "tanh":
        raise ValueError(f"activation applies to the SimpleRNN only. "
                         f"Received: kind={kind!r}, activation={activation!r}")
    return cell_class(units, reset_after=True, **kwargs) if reset_after else cell_class(units, **kwargs)
