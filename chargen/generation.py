"""Generation: a one-step function with carried state, driving a sampling strategy.

Generation is free-running: each sampled character is fed back as the next input, and the
recurrent state is carried from step to step, so a character costs one step, never a re-run of the
window. The step runs in numpy on weights pulled out of the Keras model (`NumpyStepper`): calling a
compiled TensorFlow function per character costs about 300 microseconds of overhead alone, several
times a whole numpy step at batch 1. `NumpyStepper` is the fast path; the Keras model is its
reference, and the tests hold the two equal for every cell. Two tricks make it fast: the first
layer's input projection is a table lookup (embedding times input kernel plus bias, precomputed per
character), and the sigmoid is computed through one tanh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chargen.errors import ChargenError
from chargen.sampling import GuardedStrategy, SamplingContext
from chargen.vocab import Vocabulary


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.tanh(0.5 * x) + 0.5


@dataclass
class _Layer:
    kind: str  # "rnn", "gru" or "lstm"
    units: int
    input_kernel: np.ndarray  # (features, gates * units); None for the first layer (table instead)
    recurrent_kernel: np.ndarray  # (units, gates * units)
    bias: np.ndarray  # (gates * units,)
    recurrent_bias: np.ndarray | None  # GRU reset_after only
    reset_after: bool

    def step(self, projected_input: np.ndarray, state: list[np.ndarray]) -> list[np.ndarray]:
        """One step of this layer's cell given W_x x_t + b already computed, (batch, gates * units)."""
        units = self.units
        if self.kind == "rnn":
            return [np.tanh(projected_input + state[0] @ self.recurrent_kernel)]
        if self.kind == "lstm":
            h, c = state
            z = projected_input + h @ self.recurrent_kernel  # (batch, 4 * units): i, f, g, o
            i, f, o = _sigmoid(z[:, :units]), _sigmoid(z[:, units:2 * units]), _sigmoid(z[:, 3 * units:])
            c = f * c + i * np.tanh(z[:, 2 * units:3 * units])
            return [o * np.tanh(c), c]
        (h,) = state  # GRU, gates z, r, h
        if self.reset_after:
            recurrent = h @ self.recurrent_kernel + self.recurrent_bias
            zr = _sigmoid(projected_input[:, :2 * units] + recurrent[:, :2 * units])
            z, r = zr[:, :units], zr[:, units:]
            candidate = np.tanh(projected_input[:, 2 * units:] + r * recurrent[:, 2 * units:])
        else:
            zr = _sigmoid(projected_input[:, :2 * units] + h @ self.recurrent_kernel[:, :2 * units])
            z, r = zr[:, :units], zr[:, units:]
            candidate = np.tanh(projected_input[:, 2 * units:] + (r * h) @ self.recurrent_kernel[:, 2 * units:])
        return [z * h + (1.0 - z) * candidate]


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
        self.vocab_size = model.vocab_size
        self.layers: list[_Layer] = []
        for layer in model.recurrent_layers:
            cell = layer.cell
            self.layers.append(_Layer(
                kind=model.cell_kind,
                units=cell.units,
                input_kernel=np.asarray(cell.input_kernel, np.float32),
                recurrent_kernel=np.asarray(cell.recurrent_kernel, np.float32),
                bias=np.asarray(cell.bias, np.float32),
                recurrent_bias=np.asarray(cell.recurrent_bias, np.float32) if getattr(cell, "reset_after", False) else None,
                reset_after=getattr(cell, "reset_after", False),
            ))
        embeddings = np.asarray(model.embedding.embeddings, np.float32)  # (vocab, embedding_dim)
        first = self.layers[0]
        self.first_projection = embeddings @ first.input_kernel + first.bias  # (vocab, gates * units)
        self.head_kernel = np.asarray(model.head.kernel, np.float32)  # (units, vocab)
        self.head_bias = np.asarray(model.head.bias, np.float32)  # (vocab,)
        self.states_per_layer = [2 if layer.kind == "lstm" else 1 for layer in self.layers]

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, layer.units), np.float32) for layer, n in zip(self.layers, self.states_per_layer) for _ in range(n)]

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        projected = self.first_projection[ids]  # (batch, gates * units)
        new_state, position = [], 0
        for index, (layer, count) in enumerate(zip(self.layers, self.states_per_layer)):
            if index > 0:
                projected = x @ layer.input_kernel + layer.bias
            layer_state = layer.step(projected, state[position:position + count])
            new_state.extend(layer_state)
            position += count
            x = layer_state[0]  # (batch, units)
        return x @ self.head_kernel + self.head_bias, new_state  # logits (batch, vocab)

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
        raise ChargenError(f"{strategy.label} picks one character at a time and keeps no candidates; use a sequence-level strategy such as beam")
    rows, state, rng, scale = _start(stepper, vocab, strategy, request)
    result = _generate_sequence(stepper, vocab, strategy, rows, state, request, rng, scale)
    if result.candidates is None or result.scores is None:
        return [[(request.prime + _cut(vocab.decode(row), request.stop), float("nan"))] for row in result.ids]
    return [
        [(request.prime + _cut(vocab.decode(ids), request.stop), float(score)) for ids, score in zip(row_ids, row_scores)]
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
    return strategy.generate(step, state, rows, request.length, context)
