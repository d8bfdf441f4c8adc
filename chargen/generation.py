"""Generation: a one-step function with carried state, driving a sampling strategy.

Generation is free-running: each sampled character is fed back as the next input, and the
recurrent state is carried from step to step, so a character costs one step, never a re-run of the
window. The step runs in numpy on weights pulled out of the Keras model (`NumpyStepper`): the fixed
overhead of calling a compiled TensorFlow function once per character is larger than a whole numpy
step at small batches (bench/README.md has the figures). `NumpyStepper` is the fast path; the Keras model is its
reference, and the tests hold the two equal for every cell.

What makes the step fast, all decided once when the weights are pulled out:

- the first layer's input term is a table lookup (embedding times input kernel plus bias, per
  character), so that layer needs no input product;
- activations are held transposed, (features, batch), so each gate is a contiguous block of rows
  and the gate nonlinearities run over whole blocks instead of strided column slices;
- a deeper layer gets its input, recurrent and bias terms from one product, `K @ [x; 1; h]`;
- the sigmoid gates' rows of every kernel and bias are halved, so sigmoid(a) = 0.5 tanh(a / 2) + 0.5
  becomes one tanh over all gates at once (halving a float is exact), followed by a scale and shift.

At batch 1 a step is bound by reading the weights from memory, so these help large batches most
(see bench/README.md).

`NumpyStepper` computes in float32, the reference. `TensorFlowStepper` runs the Keras model itself, one
compiled call per character, in the precision asked for (`make_stepper`): bfloat16 or float16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chargen import budget
from chargen.config import PRECISIONS
from chargen.errors import ChargenError
from chargen.sampling import GuardedStrategy, SamplingContext
from chargen.vocab import Vocabulary


def _gate_layout(kind: str, units: int) -> tuple[np.ndarray, np.ndarray]:
    """The order in which the stepper stacks a cell's gate columns, and the scale of each column.

    Sigmoid gates come first and are halved (see the module docstring). The LSTM's candidate g moves
    behind o, so that i, f and o form one block.
    """
    if kind == "lstm":  # the cell's i, f, g, o becomes i, f, o, g
        order = np.r_[0:2 * units, 3 * units:4 * units, 2 * units:3 * units]
        sigmoid_columns = 3 * units
    elif kind == "gru":  # z, r, h as in the cell
        order, sigmoid_columns = np.arange(3 * units), 2 * units
    else:
        order, sigmoid_columns = np.arange(units), 0
    scale = np.ones(order.size, np.float32)
    scale[:sigmoid_columns] = 0.5
    return order, scale


def _arranged(matrix, order: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A (rows, gates * units) weight with its columns laid out by `_gate_layout`, transposed."""
    return np.ascontiguousarray((np.asarray(matrix, np.float32)[:, order] * scale).T)


def _input_and_bias(cell, order: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A deeper layer's [W_x; b], arranged: it multiplies [x; 1]."""
    return _arranged(np.concatenate([cell.input_kernel, np.asarray(cell.bias)[None]]), order, scale)


def _ones(batch: int) -> np.ndarray:
    return np.ones((1, batch), np.float32)


class _JointLayer:
    """A SimpleRNN or LSTM layer: every gate's pre-activation comes from one product.

    `below` is the first layer's input term (gates * units, batch), bias included, or a deeper
    layer's input, the output of the layer below it (features, batch).
    """

    def __init__(self, kind: str, cell, first: bool):
        self.kind, self.units, self.first = kind, cell.units, first
        self.activation = getattr(cell, "activation", "tanh")  # the SimpleRNN's
        order, scale = _gate_layout(kind, cell.units)
        recurrent = _arranged(cell.recurrent_kernel, order, scale)  # (gates * units, units)
        if first:
            self.kernel = recurrent
        else:  # multiplies [x; 1; h]
            self.kernel = np.concatenate([_input_and_bias(cell, order, scale), recurrent], axis=1)

    def step(self, below: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        h = state[0]
        if self.first:
            z = self.kernel @ h
            z += below
        else:
            z = self.kernel @ np.concatenate((below, _ones(h.shape[1]), h))
        if self.kind == "rnn":
            return [_SIMPLE_RNN_ACTIVATIONS[self.activation](z)]
        np.tanh(z, out=z)
        units = self.units
        gates = z[:3 * units]  # i, f, o: from tanh(a / 2) to sigmoid(a)
        gates *= 0.5
        gates += 0.5
        c = z[units:2 * units] * state[1]
        c += z[:units] * z[3 * units:]
        h = np.tanh(c)
        h *= z[2 * units:3 * units]
        return [h, c]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """sigmoid(z) = 0.5 tanh(z / 2) + 0.5, in place: no overflow for large |z|."""
    z *= 0.5
    np.tanh(z, out=z)
    z *= 0.5
    z += 0.5
    return z


_SIMPLE_RNN_ACTIVATIONS = {  # config.ACTIVATIONS, each overwriting its argument
    "tanh": lambda z: np.tanh(z, out=z),
    "sigmoid": _sigmoid,
    "relu": lambda z: np.maximum(z, 0.0, out=z),
}


class _GRULayer:
    """A GRU layer: the candidate needs the reset gate applied to the recurrent term, so the input
    and recurrent products stay apart. `below` as in `_JointLayer`."""

    def __init__(self, cell, first: bool):
        self.units, self.first, self.reset_after = cell.units, first, bool(cell.reset_after)
        order, scale = _gate_layout("gru", cell.units)
        self.input_kernel = None if first else _input_and_bias(cell, order, scale)
        self.recurrent_kernel = _arranged(cell.recurrent_kernel, order, scale)  # (3 * units, units)
        self.recurrent_bias = (_arranged(np.asarray(cell.recurrent_bias)[None], order, scale)  # (3 * units, 1)
                               if self.reset_after else None)

    def step(self, below: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        (h,) = state
        units = self.units
        x_term = below if self.first else self.input_kernel @ np.concatenate((below, _ones(h.shape[1])))
        if self.reset_after:
            h_term = self.recurrent_kernel @ h
            h_term += self.recurrent_bias
            zr = x_term[:2 * units] + h_term[:2 * units]
        else:
            zr = x_term[:2 * units] + self.recurrent_kernel[:2 * units] @ h
        np.tanh(zr, out=zr)  # z, r: from tanh(a / 2) to sigmoid(a)
        zr *= 0.5
        zr += 0.5
        z, r = zr[:units], zr[units:]
        candidate = r * h_term[2 * units:] if self.reset_after else self.recurrent_kernel[2 * units:] @ (r * h)
        candidate += x_term[2 * units:]
        np.tanh(candidate, out=candidate)
        h = h - candidate  # z * h + (1 - z) * candidate
        h *= z
        h += candidate
        return [h]


class NumpyStepper:
    """The model's one-step function in numpy: `step(ids, state) -> (logits, state)`.

    Args:
        model: a built `CharModel`; its weights are copied out once (float32).

    The state is a flat list of `(batch, units)` arrays, layer by layer (LSTM: h then c), the form
    sequence-level strategies receive.

    Example:
        >>> stepper = NumpyStepper(model)
        >>> state = stepper.initial_state(batch=4)
        >>> logits, state = stepper.step(np.array([3, 1, 4, 1]), state)
    """

    def __init__(self, model):
        kind = model.cell_kind
        cells = [layer.cell for layer in model.recurrent_layers]
        self.layers = [_GRULayer(cell, index == 0) if kind == "gru" else _JointLayer(kind, cell, index == 0)
                       for index, cell in enumerate(cells)]
        self.states_per_layer = [len(cell.state_size) for cell in cells]
        self.layer_units = [cell.units for cell in cells]
        order, scale = _gate_layout(kind, cells[0].units)
        embeddings = np.asarray(model.embedding.embeddings, np.float32)  # (vocab, embedding_dim)
        table = embeddings @ np.asarray(cells[0].input_kernel, np.float32) + np.asarray(cells[0].bias, np.float32)
        # One row per id, each padded by 16 floats: `step` reads the gathered rows transposed, and rows
        # of a power-of-two length would map every element of that read to one cache set.
        self.input_table = np.zeros((len(table), table.shape[1] + 16), np.float32)
        self.input_table[:, :table.shape[1]] = table[:, order] * scale
        self.input_width = table.shape[1]  # gates * units
        self.head_kernel = np.ascontiguousarray(np.asarray(model.head.kernel, np.float32).T)  # (vocab, units)
        self.head_bias = np.asarray(model.head.bias, np.float32)[:, None]  # (vocab, 1)
        self.vocab_size = model.vocab_size

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, units), np.float32)
                for units, count in zip(self.layer_units, self.states_per_layer) for _ in range(count)]

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        below = self.input_table[ids][:, :self.input_width].T  # (gates * units, batch): the first layer's input term
        new_state, position = [], 0
        for layer, count in zip(self.layers, self.states_per_layer):
            layer_state = layer.step(below, [s.T for s in state[position:position + count]])
            new_state.extend(layer_state)
            position += count
            below = layer_state[0]  # (units, batch)
        logits = self.head_kernel @ below
        logits += self.head_bias
        return np.ascontiguousarray(logits.T), [s.T for s in new_state]  # logits (batch, vocab)

    def feed(self, ids: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        """Run a prime `(batch, time)` through the network, returning the state after it."""
        for t in range(ids.shape[1]):
            _, state = self.step(ids[:, t], state)
        return state


class TensorFlowStepper:
    """The Keras model's own step, computing in its dtype policy: `step(ids, state) -> (logits, state)`.

    Args:
        model: a built `CharModel` (see `CharModel.with_precision`).

    The same interface and state layout as `NumpyStepper` (float32 arrays, layer by layer; a bfloat16 or
    float16 state survives the trip to float32 exactly), so every strategy runs on either.
    """

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self.states_per_layer = [len(layer.cell.state_size) for layer in model.recurrent_layers]
        self.layer_units = [layer.cell.units for layer in model.recurrent_layers]
        self.vocab_size = model.vocab_size
        self._window = tf.function(self._last_logits, reduce_retracing=True)

    def _last_logits(self, ids, states):
        logits, final_states = self.model(ids, states=states)  # logits (batch, time, vocab)
        return logits[:, -1], final_states

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, units), np.float32)
                for units, count in zip(self.layer_units, self.states_per_layer) for _ in range(count)]

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        return self._run(np.asarray(ids)[:, None], state)

    def feed(self, ids: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        """Run a prime `(batch, time)` through the network in one call, returning the state after it."""
        return self._run(ids, state)[1] if ids.shape[1] else state

    def _run(self, ids, state):
        by_layer, position = [], 0
        for count in self.states_per_layer:
            by_layer.append(list(state[position:position + count]))
            position += count
        logits, final_states = self._window(np.asarray(ids, np.int32), by_layer)
        return np.asarray(logits, np.float32), [np.asarray(s, np.float32) for layer in final_states for s in layer]


def make_stepper(model, precision: str = "float32"):
    """The step function for `precision`: numpy in float32 (the reference), the Keras model otherwise."""
    if precision == "float32":
        return NumpyStepper(model)
    return TensorFlowStepper(model.with_precision(PRECISIONS[precision]))


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate; validated in one place (`validate_request`)."""

    length: int = 500  # characters to generate after the prime
    prime: str = ""  # text the samples start from ("" = start from a newline, or the first character)
    num_samples: int = 1  # rows generated together as one batch
    temperature: float = 1.0  # logits are divided by this before a stochastic strategy sees them
    seed: int | None = None  # same run, seed and options give the same text
    stop: str | None = None  # a row ends when this text appears (it is not included)


def validate_request(request: GenerationRequest, vocab: Vocabulary | None = None) -> None:
    """Every rule of a request in one place; without a vocabulary, all but the prime's characters."""
    if request.length < 1:
        raise ChargenError(f"length must be at least 1. Received: length={request.length}")
    if request.num_samples < 1:
        raise ChargenError(f"num_samples must be at least 1. Received: num_samples={request.num_samples}")
    if not request.temperature > 0:
        raise ChargenError("temperature must be above 0 (use --strategy greedy for the most likely text). "
                           f"Received: temperature={request.temperature}")
    if request.stop == "":
        raise ChargenError("stop text must not be empty. Received: stop=''")
    budget.check_generation(request.length, request.num_samples, len(request.prime))
    if vocab is not None:
        usable_prime(request.prime, vocab, drop_unknown=False)  # a character the model never saw stops here


def usable_prime(prime: str, vocab: Vocabulary, drop_unknown: bool) -> tuple[str, str]:
    """The prime as the model can read it, and the distinct characters left out of it (with `drop_unknown`).

    Without `drop_unknown`, a character the model never saw is a `ChargenError` that lists them all.
    """
    known = set(vocab.chars)
    unknown = "".join(sorted(set(prime) - known))
    if not unknown:
        return prime, ""
    if not drop_unknown:
        raise ChargenError(f"the prime holds {len(unknown)} character(s) the model never saw: {unknown[:40]!r}; "
                           "remove them, or pass --drop-unknown to leave them out of the prime")
    return "".join(char for char in prime if char in known), unknown


def start_ids(prime: str, vocab: Vocabulary) -> np.ndarray:
    """The prime's ids; with no prime, a newline if the model knows one (a natural start), else id 0."""
    if prime:
        return vocab.encode(prime)
    return vocab.encode("\n") if "\n" in vocab.chars else np.zeros(1, np.int32)


def generate(
    stepper: NumpyStepper,
    vocab: Vocabulary,
    strategy: GuardedStrategy,
    request: GenerationRequest,
    on_text: Callable[[str], None] | None = None,
) -> list[str]:
    """Generate `request.num_samples` texts, each the prime followed by the generated characters.

    Args:
        stepper: the model's step function.
        vocab: the model's vocabulary.
        strategy: a checked strategy (`registry.load(name).create(options)`), token or sequence level;
            its failures and malformed results stop generation with its name and distribution.
        request: length, prime, batch, temperature, seed, stop text.
        on_text: called with each new piece of the first row's text as it is produced (streaming).
    """
    rows, state, rng, scale = _start(stepper, vocab, strategy, request)
    sequence_level = strategy.kind == "sequence"
    if on_text is not None and request.prime:
        on_text(request.prime)
    if sequence_level:
        generated = _generate_sequence(stepper, vocab, strategy, rows, state, request, rng, scale).ids
    else:
        generated = _generate_tokens(stepper, vocab, strategy, rows, state, request, rng, scale, on_text)
    texts = [_cut(vocab.decode(row), request.stop) for row in generated]
    if on_text is not None and sequence_level:
        on_text(texts[0])
    return [request.prime + text for text in texts]


def generate_candidates(
    stepper: NumpyStepper, vocab: Vocabulary, strategy: GuardedStrategy, request: GenerationRequest
) -> list[list[tuple[str, float]]]:
    """Every candidate a sequence-level strategy kept (beam search: every beam), best first, per row.

    Each candidate is (prime + text, its log-probability in nats under the model).
    """
    if strategy.kind != "sequence":
        raise ChargenError(f"{strategy.label} picks one character at a time and keeps no candidates; "
                           "use a sequence-level strategy such as beam")
    rows, state, rng, scale = _start(stepper, vocab, strategy, request)
    result = _generate_sequence(stepper, vocab, strategy, rows, state, request, rng, scale)
    if result.candidates is None or result.scores is None:
        return [[(request.prime + _cut(vocab.decode(row), request.stop), float("nan"))] for row in result.ids]
    return [
        [(request.prime + _cut(vocab.decode(ids), request.stop), float(score))
         for ids, score in zip(row_ids, row_scores)]
        for row_ids, row_scores in zip(result.candidates, result.scores)
    ]


def _start(stepper, vocab, strategy, request):
    """Validate, feed the prime (all but its last character) and seed: what every generation starts with."""
    validate_request(request, vocab)
    prime_ids = start_ids(request.prime, vocab)
    rows = np.tile(prime_ids[None, :].astype(np.int64), (request.num_samples, 1))  # (batch, prime)
    state = stepper.feed(rows[:, :-1], stepper.initial_state(request.num_samples))
    scale = 1.0 / request.temperature if strategy.stochastic else 1.0
    return rows, state, np.random.default_rng(request.seed), scale


def _cut(text: str, stop: str | None) -> str:
    return text.split(stop, 1)[0] if stop is not None else text


def _generate_tokens(stepper, vocab, strategy, rows, state, request, rng, scale, on_text):
    batch, prime_length = rows.shape
    ids = np.empty((batch, prime_length + request.length), np.int64)  # (batch, prime + length)
    ids[:, :prime_length] = rows
    stop_ids = _stop_ids(request.stop, vocab)
    stopped = np.zeros(batch, bool)
    stream = _Stream(on_text, request.stop) if on_text is not None else None
    for step in range(request.length):
        t = prime_length + step
        logits, state = stepper.step(ids[:, t - 1], state)
        context = SamplingContext(step=step, ids=ids[:, :t], rng=rng, vocab=vocab)
        ids[:, t] = strategy.sample(logits * scale if scale != 1.0 else logits, context)
        if stream is not None:
            stream.add(vocab.chars[ids[0, t]])
        if stop_ids is not None and step + 1 >= len(stop_ids):
            stopped |= (ids[:, t + 1 - len(stop_ids):t + 1] == stop_ids).all(axis=1)
            if stopped.all():
                return ids[:, prime_length:t + 1]
    if stream is not None:
        stream.finish()
    return ids[:, prime_length:]


def _stop_ids(stop: str | None, vocab: Vocabulary) -> np.ndarray | None:
    """The stop text as ids, or None when there is none or the model cannot produce it."""
    if stop is None or any(c not in vocab.chars for c in stop):
        return None
    return vocab.encode(stop)


class _Stream:
    """Passes the first row's characters on as they come, holding back a possible start of the stop text."""

    def __init__(self, on_text: Callable[[str], None], stop: str | None):
        self.on_text, self.stop, self.pending, self.done = on_text, stop, "", False

    def add(self, char: str) -> None:
        if self.done:
            return
        if self.stop is None:
            self.on_text(char)
            return
        self.pending += char
        if self.stop in self.pending:
            self.on_text(self.pending.split(self.stop, 1)[0])
            self.pending, self.done = "", True
            return
        longest = min(len(self.stop) - 1, len(self.pending))
        held = next((k for k in range(longest, 0, -1) if self.stop.startswith(self.pending[-k:])), 0)
        if len(self.pending) > held:
            self.on_text(self.pending[:len(self.pending) - held])
            self.pending = self.pending[len(self.pending) - held:]

    def finish(self) -> None:
        if not self.done and self.pending:
            self.on_text(self.pending)


def _generate_sequence(stepper, vocab, strategy, rows, state, request, rng, scale):
    def step(ids, state):
        logits, state = stepper.step(ids, state)
        return (logits * scale if scale != 1.0 else logits), state

    context = SamplingContext(step=0, ids=rows, rng=rng, vocab=vocab)
    return strategy.generate(step, state, rows, request.length, context)
