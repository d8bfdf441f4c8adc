"""A conformance check for sampling strategies, for plugin authors to call from their own tests.

It plays the role `pytester` plays for pytest plugins: one call runs a strategy the way chargen's
generation does, on a small numpy stand-in for the network, and fails with an AssertionError that
says which rule was broken. No TensorFlow and no trained model are needed.

Example:
    >>> from chargen.testing import check_strategy
    >>> def test_conformance():
    ...     check_strategy(Mirostat, {"tau": 2.0})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from chargen.sampling.contract import (
    SamplingContext,
    SequenceResult,
    Strategy,
    StrategyError,
    TokenSampler,
    class_problems,
    format_value,
    parse_options,
)
from chargen.sampling.guard import GuardedStrategy, describe_error
from chargen.vocab import Vocabulary

COLD_TEMPERATURE = 1e-3  # the stub's favourite leads by >= 0.8, so every other character is e^-800 times less likely


class StubModel:
    """A deterministic numpy stand-in for the network: logits depend on the last id and on a state.

    After every character one successor is ahead of the rest by a clear margin, so "the most likely
    character" is never a near-tie, and the state makes the logits depend on the whole history, so a
    strategy that mixes up state rows produces different output.

    Args:
        vocab_size: number of characters.
        seed: makes the tables.
    """

    def __init__(self, vocab_size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.vocab = Vocabulary([chr(ord("a") + i) for i in range(vocab_size)])
        self.table = rng.normal(0.0, 1.5, size=(vocab_size, vocab_size))
        self.table[np.arange(vocab_size), self.table.argmax(axis=-1)] += 1.0
        self.mixing = rng.normal(size=(vocab_size, vocab_size))

    def initial_state(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, len(self.vocab)))]

    def step(self, ids: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """ids int[n], state [float[n, vocab]] -> logits float[n, vocab], new state; the state moves logits by < 0.1."""
        hidden = np.tanh(0.5 * state[0] + self.mixing[ids])
        return self.table[ids] + 0.1 * hidden, [hidden]

    def read_prime(self, prime_ids: np.ndarray) -> list[np.ndarray]:
        """The state after all but the last prime id, as the host hands it to a strategy."""
        state = self.initial_state(prime_ids.shape[0])
        for position in range(prime_ids.shape[1] - 1):
            _, state = self.step(prime_ids[:, position], state)
        return state


def check_strategy(
    cls: type[Strategy],
    options: Mapping[str, Any] | None = None,
    *,
    vocab_size: int = 12,
    batch_sizes: Sequence[int] = (1, 5),
    length: int = 16,
    seed: int = 1234,
) -> None:
    """Assert that a strategy class keeps chargen's strategy contract.

    Checks the declarations (name, one-line description, options whose defaults match the
    constructor), the `get_config` / `from_config` round trip, that each option value survives
    `-o NAME=VALUE` parsing, and then runs generations on a `StubModel` for each batch size:
    shapes, integer ids inside the vocabulary, logits left unmodified, no write into the read-only
    ids it is handed, the same ids for the same seed (also when one instance is reused, so per-run
    state must reset at step 0), and, for a stochastic token strategy, the most likely character at
    a temperature near 0 (unless it declares `greedy_when_cold = False`: it bans or constrains characters).

    Args:
        cls: the strategy class.
        options: constructor keyword arguments to check besides the defaults.
        vocab_size: size of the stub vocabulary.
        batch_sizes: batch sizes to generate with, in turn, on one instance.
        length: characters generated per run.
        seed: seeds the generator handed to the strategy.

    Raises:
        AssertionError: naming the strategy and the rule it broke.
    """
    where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
    label = f"strategy {getattr(cls, 'name', '?')!r} ({where})"
    problems = class_problems(cls)
    if problems:
        raise AssertionError(f"{label} breaks the contract: " + "; ".join(problems))
    _check_options(cls, label)
    strategy = _construct(cls, dict(options or {}), label)
    _check_config(strategy, label)

    model = StubModel(vocab_size)
    guarded = GuardedStrategy(strategy, label)
    for batch in batch_sizes:
        prime_ids = np.random.default_rng(batch).integers(0, vocab_size, size=(batch, 3))
        first = _generate(guarded, model, prime_ids, length, seed)
        again = _generate(guarded, model, prime_ids, length, seed)
        rebuilt = GuardedStrategy(cls.from_config(strategy.get_config()), label)
        fresh = _generate(rebuilt, model, prime_ids, length, seed)
        if not np.array_equal(first, again):
            raise AssertionError(
                f"{label} gave different ids for the same seed when run twice (batch {batch}); draw only from "
                "context.rng, and reset per-run state when context.step == 0"
            )
        if not np.array_equal(first, fresh):
            raise AssertionError(f"{label} gave different ids for the same seed from a fresh instance (batch {batch})")
        if isinstance(strategy, TokenSampler) and strategy.stochastic and strategy.greedy_when_cold:
            _check_cold_picks_argmax(guarded, model, prime_ids, length, seed, label)


def _construct(cls: type[Strategy], options: dict[str, Any], label: str) -> Strategy:
    try:
        return cls(**options)
    except Exception as error:
        raise AssertionError(f"{label} could not be built with options {options}: {describe_error(error)}") from error


def _check_options(cls: type[Strategy], label: str) -> None:
    """Defaults build an instance, and every default survives the trip through `-o NAME=VALUE`."""
    _construct(cls, {}, label)
    for option in cls.options:
        pair = f"{option.name}={format_value(option.default)}"
        parsed = parse_options(cls, [pair])[option.name]
        if parsed != option.default:
            raise AssertionError(f"{label}: option {option.name!r} parses {pair!r} as {parsed!r}, not its default")


def _check_config(strategy: Strategy, label: str) -> None:
    try:
        config = strategy.get_config()
    except Exception as error:
        raise AssertionError(
            f"{label}: get_config() failed ({describe_error(error)}); store each option as an attribute "
            "of the same name, or override get_config"
        ) from error
    names = [option.name for option in strategy.options]
    if sorted(config) != sorted(names):
        raise AssertionError(
            f"{label}: get_config() must return exactly the options {names}. Received: {sorted(config)}"
        )
    for option in strategy.options:
        if not option.accepts(config[option.name]):
            raise AssertionError(
                f"{label}: option {option.name!r} is declared {option.type.__name__} but the instance holds "
                f"{config[option.name]!r}"
            )
    try:
        rebuilt = type(strategy).from_config(config).get_config()
    except Exception as error:
        raise AssertionError(f"{label}: from_config(get_config()) failed: {describe_error(error)}") from error
    if rebuilt != config:
        raise AssertionError(
            f"{label}: from_config(get_config()) does not round-trip. Received: {config} then {rebuilt}"
        )


def _generate(
    guarded: GuardedStrategy,
    model: StubModel,
    prime_ids: np.ndarray,
    length: int,
    seed: int,
    temperature: float = 1.0,
    after_each_step: Callable[[np.ndarray, np.ndarray, int], None] | None = None,
) -> np.ndarray:
    """Generate as chargen's host does; returns int64[batch, length]. StrategyError becomes AssertionError."""
    rng = np.random.default_rng(seed)
    state = model.read_prime(prime_ids)
    try:
        if guarded.kind == "sequence":
            context = SamplingContext(step=0, ids=prime_ids, rng=rng, vocab=model.vocab)
            result: SequenceResult = guarded.generate(model.step, state, prime_ids, length, context)
            return result.ids
        history = np.concatenate([prime_ids, np.zeros((prime_ids.shape[0], length), np.int64)], axis=1)
        logits, state = model.step(prime_ids[:, -1], state)
        for position in range(length):
            known = prime_ids.shape[1] + position
            context = SamplingContext(step=position, ids=history[:, :known], rng=rng, vocab=model.vocab)
            scaled = logits / temperature if guarded.stochastic else logits
            shown = scaled.copy()
            chosen = guarded.sample(shown, context)
            if not np.array_equal(shown, scaled):
                raise AssertionError(
                    f"{guarded.label} modified the logits it was given at step {position}; copy them first"
                )
            if after_each_step is not None:
                after_each_step(scaled, chosen, position)
            history[:, known] = chosen
            logits, state = model.step(chosen, state)
        return history[:, prime_ids.shape[1] :]
    except StrategyError as error:
        raise AssertionError(str(error)) from error


def _check_cold_picks_argmax(
    guarded: GuardedStrategy, model: StubModel, prime_ids: np.ndarray, length: int, seed: int, label: str
) -> None:
    """Temperature near 0 leaves one character with all the probability: a stochastic strategy must pick it."""

    def compare(scaled: np.ndarray, chosen: np.ndarray, position: int) -> None:
        expected = scaled.argmax(axis=-1)
        if not np.array_equal(chosen, expected):
            raise AssertionError(
                f"{label} did not pick the most likely character at temperature {COLD_TEMPERATURE} "
                f"(step {position}). Received: {chosen.tolist()}, expected {expected.tolist()}"
            )

    _generate(guarded, model, prime_ids, length, seed, COLD_TEMPERATURE, compare)
