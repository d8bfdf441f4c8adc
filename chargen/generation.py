"""Generation: a one-step function with carried state, driving a sampling strategy.

Generation is free-running: each sampled character is fed back as the next input, and the
recurrent state is carried from step to step, so a character costs one step, never a re-run of the
window. The step runs in numpy on weights pulled out of the Keras model (`NumpyStepper`): calling a
compiled TensorFlow function per character costs about 300 microseconds of overhead alone, several
times a whole numpy step at batch 1. `NumpyStepper` is the fast path; the Keras model is its
reference, and the tests hold the two equal for every cell. What makes it fast: the first layer's
input projection is a table lookup (embedding times input kernel plus bias, precomputed per
character); above it, a layer's input and recurrent products are one product; one tanh serves every
gate (sigmoid gates are halved in the weights); and scratch arrays are reused (`out=`), so a step
allocates little besides the arrays it returns. At batch 1 a step is bound by reading the weights
from memory (about 12 MB for a 2-layer, 512-unit LSTM), at batch 64 by the matrix products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chargen.errors import ChargenError
from chargen.sampling import GuardedStrategy, SamplingContext
from chargen.vocab import Vocabulary


def _gate_layout(kind: str, units: int) -> tuple[np.ndarray, np.ndarray]:
    """Column order and scale that put a cell's sigmoid gates first, halved.

    sigmoid(a) = 0.5 * tanh(a / 2) + 0.5, and halving weights and biases halves a pre-activation
    exactly (a power of two), so after this rearrangement one tanh over every gate column serves the
    sigmoid gates and the tanh candidate alike. LSTM i, f, g, o becomes i, f, o, g; GRU z, r, h stays.
    """
    u = units
    if kind == "lstm":
        order = np.r_[0:2 * u, 3 * u:4 * u, 2 * u:3 * u]
        sigmoid_columns = 3 * u
    elif kind == "gru":
        order, sigmoid_columns = np.arange(3 * u), 2 * u
    else:
        order, sigmoid_columns = np.arange(u), 0
    scale = np.ones(len(order), np.float32)
    scale[:sigmoid_columns] = 0.5
    return order, scale


class _Layer:
    """One recurrent layer's step in numpy, with its weights rearranged once so a step does little work.

    - Gates: see `_gate_layout`; one tanh over all gates, then `0.5 * t + 0.5` on the sigmoid columns.
    - Above the first layer the input and recurrent products are one product with the bias riding
      along as a row: `[x, h, 1] @ [[W_x], [W_h], [b]]` (GRU: one such product for z and r, one for the
      candidate with `r * h` in place of h; the rarely used reset-after GRU keeps two plain products).
    - The first layer has no input product: `W_x x + b` is a table row per character (`NumpyStepper`).
    - Scratch arrays are kept per batch size and written with `out=`; the arrays a step returns are new,
      and the state it is given is never written to. One stepper serves one thread at a time.

    Args:
        kind: "rnn", "gru" or "lstm".
        cell: the built chargen cell whose weights are copied (float32).
        first: whether this is the first layer (its input arrives already projected).
    """

    def __init__(self, kind: str, cell, first: bool):
        self.kind, self.units, self.first = kind, cell.units, first
        self.reset_after = bool(getattr(cell, "reset_after", False))
        self.num_states = 2 if kind == "lstm" else 1
        u = self.units
        order, scale = _gate_layout(kind, u)
        self.input_kernel = np.asarray(cell.input_kernel, np.float32)[:, order] * scale  # (features, gates * u)
        self.features = self.input_kernel.shape[0]
        recurrent = np.asarray(cell.recurrent_kernel, np.float32)[:, order] * scale  # (u, gates * u)
        self.bias = np.asarray(cell.bias, np.float32)[order] * scale  # (gates * u,)
        self.recurrent_bias = (
            np.asarray(cell.recurrent_bias, np.float32)[order] * scale if self.reset_after else None
        )
        self.recurrent_kernel = np.ascontiguousarray(recurrent)
        if kind == "gru" and not self.reset_after:
            self.recurrent_zr = np.ascontiguousarray(recurrent[:, :2 * u])
            self.recurrent_h = np.ascontiguousarray(recurrent[:, 2 * u:])
        if not first and not self.reset_after:  # fused [x, h, 1] products
            stacked = np.vstack([self.input_kernel, recurrent, self.bias[None]])  # (features + u + 1, gates * u)
            if kind == "gru":
                self.fused_zr = np.ascontiguousarray(stacked[:, :2 * u])
                self.fused_h = np.ascontiguousarray(stacked[:, 2 * u:])
            else:
                self.fused = np.ascontiguousarray(stacked)
        self._scratch: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def scratch(self, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(gate pre-activations (batch, gates * u), the [x, h, 1] rows or None), made once per batch size."""
        found = self._scratch.get(batch)
        if found is None:
            gates = self.input_kernel.shape[1]
            xh = None
            if not self.first and not self.reset_after:
                xh = np.empty((batch, self.features + self.units + 1), np.float32)
                xh[:, -1] = 1.0
            found = self._scratch[batch] = (np.empty((batch, gates), np.float32), xh)
        return found

    def step(self, x: np.ndarray | None, projected: np.ndarray | None, state: list[np.ndarray]) -> list[np.ndarray]:
        """The new state list. x: the layer below's output (batch, features), or for the first layer
        `projected`, W_x x_t + b with this layer's gate layout (batch, gates * u)."""
        u, h = self.units, state[0]
        z, xh = self.scratch(len(h))
        if xh is not None:
            xh[:, :self.features] = x
            xh[:, self.features:-1] = h
        if self.kind == "lstm":
            if self.first:
                np.matmul(h, self.recurrent_kernel, out=z)
                z += projected
            else:
                np.matmul(xh, self.fused, out=z)
            np.tanh(z, out=z)
            sigmoids = z[:, :3 * u]
            sigmoids *= 0.5
            sigmoids += 0.5
            i, f, o, g = z[:, :u], z[:, u:2 * u], z[:, 2 * u:3 * u], z[:, 3 * u:]
            c = f * state[1]
            c += np.multiply(i, g, out=i)
            h = np.tanh(c)
            h *= o
            return [h, c]
        if self.kind == "rnn":
            h = h @ self.recurrent_kernel + projected if self.first else xh @ self.fused
            return [np.tanh(h, out=h)]
        if self.reset_after:  # GRU, candidate tanh(x_h + r * (h @ W_hh + b'_h))
            recurrent = h @ self.recurrent_kernel + self.recurrent_bias
            projected = projected if self.first else x @ self.input_kernel + self.bias
            zr = np.tanh(projected[:, :2 * u] + recurrent[:, :2 * u])
            zr *= 0.5
            zr += 0.5
            candidate = recurrent[:, 2 * u:] * zr[:, u:]
            candidate += projected[:, 2 * u:]
        else:  # GRU, candidate tanh(x_h + (r * h) @ W_hh)
            zr, candidate = z[:, :2 * u], z[:, 2 * u:]
            if self.first:
                np.matmul(h, self.recurrent_zr, out=zr)
                zr += projected[:, :2 * u]
            else:
                np.matmul(xh, self.fused_zr, out=zr)
            np.tanh(zr, out=zr)
            zr *= 0.5
            zr += 0.5
            if self.first:
                np.matmul(zr[:, u:] * h, self.recurrent_h, out=candidate)
                candidate += projected[:, 2 * u:]
            else:
                np.multiply(zr[:, u:], h, out=xh[:, self.features:-1])  # r * h replaces h
                np.matmul(xh, self.fused_h, out=candidate)
        np.tanh(candidate, out=candidate)
        new_h = h - candidate  # h_t = z * h + (1 - z) * candidate = candidate + z * (h - candidate)
        new_h *= zr[:, :u]
        new_h += candidate
        return [new_h]


class NumpyStepper:
    """The model's one-step function in numpy: `step(ids, state) -> (logits, state)`.

    Args:
        model: a built `CharModel`; its weights are copied out once (float32) and rearranged for speed
            (see `_Layer`); the values computed are the model's, up to float32 rounding.

    The state is a flat list of `(batch, units)` arrays, layer by layer (LSTM: h then c), the form
    sequence-level strategies receive. A step never writes into the state or logits it returned before,
    so callers may keep, reorder or repeat rows freely.

    Example:
        >>> stepper = NumpyStepper(model)
        >>> state = stepper.initial_state(batch=4)
        >>> logits, state = stepper.step(np.array([3, 1, 4, 1]), state)
    """

    def __init__(self, model):
        self.vocab_size = model.vocab_size
        self.layers = [
            _Layer(model.cell_kind, layer.cell, first=index == 0) for index, layer in enumerate(model.recurrent_layers)
        ]
        embeddings = np.asarray(model.embedding.embeddings, np.float32)  # (vocab, embedding_dim)
        first = self.layers[0]
        self.first_projection = embeddings @ first.input_kernel + first.bias  # (vocab, gates * units)
        self.head_kernel = np.asarray(model.head.kernel, np.float32)  # (units, vocab)
        self.head_bias = np.asarray(model.head.bias, np.float32)  # (vocab,)
        self.states_per_layer = [layer.num_states for layer in self.layers]

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, layer.units), np.float32) for layer in self.layers for _ in range(layer.num_states)]

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        projected = self.first_projection[ids]  # (batch, gates * units), a new array
        new_state, position, x = [], 0, None
        for layer in self.layers:
            layer_state = layer.step(x, projected, state[position:position + layer.num_states])
            new_state.extend(layer_state)
            position += layer.num_states
            x = layer_state[0]  # (batch, units)
        logits = x @ self.head_kernel
        logits += self.head_bias
        return logits, new_state  # logits (batch, vocab)

    def feed(self, ids: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        """Run a prime `(batch, time)` through the network, returning the state after it."""
        for t in range(ids.shape[1]):
            _, state = self.step(ids[:, t], state)
        return state


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate; validated in one place (`validate_request`)."""

    length: int = 500  # characters to generate after the prime
    prime: str = ""  # text the samples start from ("" = start from a newline, or the first character)
    num_samples: int = 1  # rows generated together as one batch
    temperature: float = 1.0  # logits are divided by this before a stochastic strategy sees them
    seed: int | None = None  # same run, seed and options give the same text
    stop: str | None = None  # a row ends when this text appears (it is not included)


def validate_request(request: GenerationRequest, vocab: Vocabulary) -> None:
    if request.length < 1:
        raise ChargenError(f"length must be at least 1. Received: length={request.length}")
    if request.num_samples < 1:
        raise ChargenError(f"num_samples must be at least 1. Received: num_samples={request.num_samples}")
    if not request.temperature > 0:
        raise ChargenError(f"temperature must be above 0 (use --strategy greedy for the most likely text). Received: temperature={request.temperature}")
    if request.stop == "":
        raise ChargenError("stop text must not be empty. Received: stop=''")
    vocab.encode(request.prime)  # a character the model never saw stops here, named


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
    validate_request(request, vocab)
    prime_ids = start_ids(request.prime, vocab)
    batch = request.num_samples
    rows = np.tile(prime_ids[None, :].astype(np.int64), (batch, 1))  # (batch, prime)
    state = stepper.feed(rows[:, :-1], stepper.initial_state(batch))
    rng = np.random.default_rng(request.seed)
    scale = 1.0 / request.temperature if strategy.stochastic else 1.0
    sequence_level = strategy.kind == "sequence"

    if on_text is not None and request.prime:
        on_text(request.prime)
    if sequence_level:
        generated = _generate_sequence(stepper, vocab, strategy, rows, state, request, rng, scale)
    else:
        generated = _generate_tokens(stepper, vocab, strategy, rows, state, request, rng, scale, on_text)
    texts = [vocab.decode(row) for row in generated]
    if request.stop is not None:
        texts = [text.split(request.stop, 1)[0] for text in texts]
    if on_text is not None and sequence_level:
        on_text(texts[0])
    return [request.prime + text for text in texts]


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
        held = next((k for k in range(min(len(self.stop) - 1, len(self.pending)), 0, -1) if self.stop.startswith(self.pending[-k:])), 0)
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
    return strategy.generate(step, state, rows, request.length, context).ids
