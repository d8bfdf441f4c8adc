"""The loop over time: runs a cell over a window, and holds the switch between the training modes.

`through_time=True` (backpropagation through time): one loop, differentiated automatically, so the
gradient of step t's loss reaches every earlier step.

`through_time=False` (teacher forcing): the state entering each step is treated as a constant.
The states are first computed by the same loop, outside the gradient; then all steps are recomputed
at once as one batch of `batch * time` independent single steps. Each step's error therefore trains
the shared weights through that step alone, and the backward pass is one large batched step instead
of a chain through time, which is why this mode costs less per character.

The cell types chargen ships also have a fused path for both modes (`fused.py`): it saves the gate
activations in the loop and writes the backward pass out by hand, with every weight gradient one
batched product. The generic path here stays the reference it is tested against.

This is the one place the loop lives, so it can be made faster without touching the cells. The loop
is TensorFlow's (`tf.while_loop`), the backend chargen supports; the cells stay in `keras.ops`.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from chargen import fused as fused_kernels


def run_cell(cell, inputs, initial_state, return_all_states: bool = False):
    """Run `cell` over `inputs` (batch, time, features) from `initial_state` in one `tf.while_loop`.

    Returns `(outputs, final_state, all_states)`: outputs `(batch, time, units)`, the state list after
    the last step, and (if asked) each state entry stacked over time, `(batch, time, size)`.
    """
    num_states = len(initial_state) if return_all_states else 0

    def step(x, state):
        output, new_state = cell(x, state)
        return new_state, (output, *new_state[:num_states])

    final_state, collected = _loop(step, inputs, initial_state, 1 + num_states)
    return collected[0], final_state, collected[1:]


def trace_cell(cell, inputs, initial_state) -> dict:
    """Run `cell` over `inputs` like `run_cell`, keeping everything a step computes, to look inside it.

    Returns a dict, name -> `(batch, time, units)`: each state entry after each step ("h", and the LSTM's
    "c"; h is also the output) and the cell's gate values (its `call(..., return_gates=True)`), in the
    order of `config.CELL_KINDS[kind].signals`.
    """
    names = ("h", "c")[:len(initial_state)] + tuple(cell.gate_values)

    def step(x, state):
        _, new_state, gates = cell(x, state, return_gates=True)
        return new_state, (*new_state, *(gates[name] for name in names[len(new_state):]))

    _, collected = _loop(step, inputs, initial_state, len(names))
    return dict(zip(names, collected))


def _loop(step, inputs, initial_state, num_collected: int):
    """The loop over time: `step(x_t, state) -> (new_state, values)` at each step, each of the `num_collected`
    values stacked over time. Returns `(final_state, [(batch, time, size), ...])`."""
    time_major = tf.transpose(inputs, (1, 0, 2))  # (time, batch, features)
    steps = tf.shape(time_major)[0]
    inputs_by_step = tf.TensorArray(inputs.dtype, size=steps).unstack(time_major)
    collected = tuple(tf.TensorArray(inputs.dtype, size=steps) for _ in range(num_collected))

    def body(t, state, collected):
        new_state, values = step(inputs_by_step.read(t), list(state))
        for new, old in zip(new_state, state):
            # A state of known batch size can meet inputs of unknown batch size (a layer above the first
            # reads the stacked outputs of the one below): tf.while_loop refuses a state whose static
            # shape gets less specific, though at run time the sizes agree.
            new.set_shape(old.shape)
        return t + 1, tuple(new_state), tuple(ta.write(t, v) for ta, v in zip(collected, values))

    _, final_state, collected = tf.while_loop(  # XLA differentiates a loop only with its count bounded
        lambda t, *_: t < steps, body, (tf.constant(0), tuple(initial_state), collected), maximum_iterations=steps
    )
    return list(final_state), [tf.transpose(ta.stack(), (1, 0, 2)) for ta in collected]  # each (batch, time, size)


@keras.saving.register_keras_serializable(package="chargen")
class Recurrent(keras.layers.Layer):
    """A recurrent layer: one cell applied at every step of a window with the same weights.

    Args:
        cell: a chargen cell (or its serialized config), anything with `call` and `state_size`.
        fused: use the cell type's fused kernel (`fused.py`) when it has one; False always takes
            the generic path, the reference the fused kernels are tested against.

    Both paths compute in the cell's compute dtype (its dtype policy), whatever the inputs' dtype.

    Call arguments:
        inputs: `(batch, time, features)`.
        initial_state: list of `(batch, units)` tensors, or None for zeros.
        training: passed to the cell.
        through_time: True for backpropagation through time, False for teacher forcing.

    Returns `(outputs, final_state)`: outputs `(batch, time, units)`, final_state a list.

    Example:
        >>> layer = Recurrent(LSTMCell(16))
        >>> outputs, [h, c] = layer(ops.ones((4, 10, 8)))
    """

    def __init__(self, cell, fused: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if not hasattr(cell, "call") or not hasattr(cell, "state_size"):
            raise ValueError(
                f"a recurrent cell needs a `call` method and a `state_size`. Received: cell={cell!r}"
            )
        self.cell = cell

    def build(self, input_shape):
        if not self.cell.built:
            self.cell.build((input_shape[0], input_shape[-1]))

    def call(self, inputs, initial_state=None, training=False, through_time=True):
        # The cell's policy decides the arithmetic, also when this `call` is reached without `__call__` (which
        # would cast): the loop's states must enter in the dtype the cell's steps give them.
        dtype = self.cell.compute_dtype
        inputs = ops.cast(inputs, dtype)
        if initial_state is None:
            initial_state = self.cell.get_initial_state(ops.shape(inputs)[0], dtype)
        initial_state = [ops.cast(state, dtype) for state in initial_state]
        if self.fused and fused_kernels.fusable(self.cell):
            return fused_kernels.run(self.cell, inputs, initial_state, through_time)
        if through_time:
            outputs, final_state, _ = run_cell(self.cell, inputs, initial_state)
            return outputs, final_state
        return self._teacher_forced(inputs, initial_state)

    def _teacher_forced(self, inputs, initial_state):
        """Same values as the loop, but the gradient of each step stops at the state it receives."""
        _, final_state, all_states = run_cell(
            self.cell, ops.stop_gradient(inputs), initial_state, return_all_states=True
        )
        batch, time = ops.shape(inputs)[0], ops.shape(inputs)[1]
        entering = [  # the state entering each step, (batch * time, size), held constant
            ops.reshape(
                ops.stop_gradient(ops.concatenate([ops.expand_dims(first, 1), states[:, :-1]], axis=1)),
                (-1, ops.shape(states)[-1]),
            )
            for first, states in zip(initial_state, all_states)
        ]
        flat_inputs = ops.reshape(inputs, (-1, ops.shape(inputs)[-1]))  # (batch * time, features)
        outputs, _ = self.cell(flat_inputs, entering)
        outputs = ops.reshape(outputs, (batch, time, -1))  # (batch, time, units)
        return outputs, [ops.stop_gradient(s) for s in final_state]

    def compute_output_spec(self, inputs, initial_state=None, training=False, through_time=True):
        batch, time = inputs.shape[0], inputs.shape[1]
        units, dtype = self.cell.output_size, self.cell.compute_dtype
        return (
            keras.KerasTensor((batch, time, units), dtype=dtype),
            [keras.KerasTensor((batch, size), dtype=dtype) for size in self.cell.state_size],
        )

    def get_config(self):
        return {**super().get_config(), "cell": keras.saving.serialize_keras_object(self.cell), "fused": self.fused}
