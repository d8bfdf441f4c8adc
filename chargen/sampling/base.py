"""The strategy contracts, the numpy helpers strategies share, and the checks on what a strategy returns.

Two contracts, one entry-point group: a `TokenSampler` picks the next id of every row from logits
while the host drives the loop; a `SequenceSampler` (beam search) drives the loop itself through the
host's one-step function. Both speak numpy only, so a plugin needs no TensorFlow.

The checks live here rather than in the host so that the host and `chargen.testing` hold strategies to
the same rules, and a broken plugin is named in one line instead of failing deep inside generation.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from chargen.errors import ChargenError
from chargen.vocab import Vocabulary

OPTION_TYPES = (int, float, str, bool)
_TRUE_WORDS = ("true", "1", "yes")
_FALSE_WORDS = ("false", "0", "no")
_EXPECTED = {int: "an int (a whole number)", float: "a finite float", bool: "a bool: true or false (also yes/no, 1/0)"}

StepFunction = Callable[[np.ndarray, list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]


class StrategyError(ChargenError):
    """A strategy failed or broke the contract; the message names it and the distribution it came from."""


# ----------------------------------------------------------------------------------------------------
# Declarations


@dataclasses.dataclass(frozen=True)
class Option:
    """One `-o NAME=VALUE` option of a strategy; also a keyword argument of its constructor.

    Example:
        >>> Option("k", int, 10, "how many of the most likely characters to keep")
    """

    name: str  # a Python identifier: it is passed to the constructor as a keyword argument
    type: type  # int, float, str or bool; `-o` values are converted to it
    default: Any  # used when the option is not given; must match the constructor's default
    help: str  # one line for `chargen samplers`

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"an option name must be a Python identifier. Received: name={self.name!r}")
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name!r} must have type int, float, str or bool. Received: type={self.type!r}")
        if not self.accepts(self.default):
            raise ValueError(
                f"option {self.name!r} of type {self.type.__name__} needs a default of that type. "
                f"Received: default={self.default!r}"
            )

    def parse(self, text: str) -> Any:
        """Convert the text after `NAME=` to this option's type, or raise a ChargenError saying what was expected."""
        if self.type is str:
            return text
        if self.type is bool:
            word = text.strip().lower()
            if word in _TRUE_WORDS or word in _FALSE_WORDS:
                return word in _TRUE_WORDS
        else:
            try:
                value = self.type(text.strip())
            except ValueError:
                pass
            else:
                if self.type is int or math.isfinite(value):
                    return value
        raise ChargenError(f"option {self.name!r} takes {_EXPECTED[self.type]}. Received: {self.name}={text}")

    def accepts(self, value: Any) -> bool:
        """Whether `value` has this option's type; bool is a subclass of int, so it is checked apart."""
        if self.type is bool or isinstance(value, bool):
            return self.type is bool and isinstance(value, bool)
        if self.type is float:
            return isinstance(value, (int, float))  # an int is fine where a float is expected
        return isinstance(value, self.type)

    def describe(self) -> str:
        """`k (int, default 10): help`, as `chargen samplers` and error messages show it."""
        return f"{self.name} ({self.type.__name__}, default {format_value(self.default)}): {self.help}"


def format_value(value: Any) -> str:
    """A value as a user would write it after `-o NAME=`."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclasses.dataclass(frozen=True)
class SamplingContext:
    """What a strategy may know besides the logits; the host builds one per step."""

    step: int  # 0-based index of the character being generated in this run
    ids: np.ndarray  # int64[batch, t]: the prime and the ids generated so far
    rng: np.random.Generator  # seeded by the host: the only randomness a strategy may use
    vocab: Vocabulary  # the model's characters, for strategies that look at text


@dataclasses.dataclass(frozen=True)
class SequenceResult:
    """What a sequence-level strategy returns."""

    ids: np.ndarray  # int[batch, length]: the chosen sequence of each row
    candidates: np.ndarray | None = None  # int[batch, width, length]: every kept candidate, best first
    scores: np.ndarray | None = None  # float[batch, width]: log-probability of each candidate


class Strategy:
    """What both kinds of strategy declare; a subclass's constructor takes its options as keyword arguments.

    A subclass sets the class attributes and, if it has options, writes an `__init__` whose keyword
    arguments are the options (with the same defaults) and which stores each one under its own name,
    raising `ChargenError` for a value out of range ("... Received: k=0").
    """

    name: ClassVar[str] = ""  # the entry-point name, lowercase: `--strategy NAME`
    description: ClassVar[str] = ""  # one line for `chargen samplers`
    options: ClassVar[tuple[Option, ...]] = ()
    stochastic: ClassVar[bool] = True  # whether --temperature and --seed change what it picks
    kind: ClassVar[str] = ""  # "token" or "sequence", set by the two contracts below

    def get_config(self) -> dict[str, Any]:
        """Every option's value, so `from_config(get_config())` rebuilds an equal strategy."""
        return {option.name: getattr(self, option.name) for option in self.options}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Strategy:
        return cls(**config)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


class TokenSampler(Strategy):
    """Picks the next id of every row from its logits; the host owns the loop.

    Subclasses override `sample`. For a stochastic strategy the host has already divided the logits
    by the temperature. Draw randomness only from `context.rng`, so `--seed` makes a run repeatable.
    A strategy that keeps state across steps resets it when `context.step == 0` (a new run).
    """

    kind = "token"

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        """Return the next ids.

        Call arguments:
            logits: float[batch, vocab], unnormalised log-probabilities; do not modify them in place.
            context: the step index, the ids so far, the seeded generator and the vocabulary.

        Returns:
            int[batch], each id in [0, vocab).
        """
        raise NotImplementedError(f"{type(self).__name__} must override sample(logits, context)")


class SequenceSampler(Strategy):
    """Generates whole sequences by driving the host's one-step function; for beam search and kin.

    Subclasses override `generate`.
    """

    kind = "sequence"

    def generate(
        self,
        step: StepFunction,
        state: list[np.ndarray],
        prime_ids: np.ndarray,
        length: int,
        context: SamplingContext,
    ) -> SequenceResult:
        """Generate `length` ids after the prime of every row.

        Call arguments:
            step: `step(ids int[n], state) -> (logits float[n, vocab], state)`, the network's one step.
                `n` may differ from the batch: a strategy may select or repeat rows of the state,
                e.g. `[s[rows] for s in state]`, and the step function follows.
            state: list of arrays, each with the rows as its first axis: the state after the network
                has read `prime_ids[:, :-1]`. The first call is `step(prime_ids[:, -1], state)`,
                which gives the logits of the first new character.
            prime_ids: int[batch, p], p >= 1.
            length: how many ids to generate per row.
            context: step 0, the prime ids, the seeded generator and the vocabulary.

        Returns:
            a `SequenceResult` with `ids` int[batch, length].
        """
        raise NotImplementedError(f"{type(self).__name__} must override generate(step, state, prime_ids, length, context)")


def class_problems(cls: Any) -> list[str]:
    """What is wrong with a strategy class's declarations, as sentences; empty when it is fine.

    The registry refuses a class with problems, and `chargen.testing` reports them, so both apply one rule.
    """
    if not (isinstance(cls, type) and issubclass(cls, (TokenSampler, SequenceSampler))):
        return [f"{cls!r} is not a subclass of chargen.sampling.TokenSampler or SequenceSampler"]
    problems = []
    if not isinstance(cls.name, str) or not cls.name or cls.name != cls.name.strip().lower():
        problems.append(f"`name` must be a non-empty lowercase string. Received: name={cls.name!r}")
    if not isinstance(cls.description, str) or not cls.description.strip() or "\n" in cls.description:
        problems.append(f"`description` must be one non-empty line. Received: description={cls.description!r}")
    if not isinstance(cls.stochastic, bool):
        problems.append(f"`stochastic` must be True or False. Received: stochastic={cls.stochastic!r}")
    if not isinstance(cls.options, tuple) or not all(isinstance(option, Option) for option in cls.options):
        problems.append(f"`options` must be a tuple of chargen.sampling.Option. Received: options={cls.options!r}")
        return problems
    names = [option.name for option in cls.options]
    if len(set(names)) != len(names):
        problems.append(f"option names must be distinct. Received: {names}")
    problems.extend(_constructor_problems(cls))
    contract = TokenSampler if issubclass(cls, TokenSampler) else SequenceSampler
    method = "sample" if contract is TokenSampler else "generate"
    if getattr(cls, method) is getattr(contract, method):
        problems.append(f"{cls.__name__} does not override {method}()")
    return problems


def _constructor_problems(cls: type[Strategy]) -> list[str]:
    """Each option must be a constructor keyword with the declared default, so `-o` and Python agree."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return []
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    problems = []
    for option in cls.options:
        parameter = parameters.get(option.name)
        if parameter is None:
            if not takes_any:
                problems.append(f"the constructor has no keyword argument for option {option.name!r}")
        elif parameter.default is not inspect.Parameter.empty and parameter.default != option.default:
            problems.append(
                f"option {option.name!r} declares default {option.default!r} but the constructor's default "
                f"is {parameter.default!r}"
            )
    return problems


def parse_options(cls: type[Strategy], pairs: Sequence[str]) -> dict[str, Any]:
    """Convert `-o NAME=VALUE` strings to constructor keyword arguments, checked against `cls.options`.

    Example:
        >>> parse_options(TopK, ["k=5"])
        {'k': 5}
    """
    declared = {option.name: option for option in cls.options}
    values: dict[str, Any] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        name = name.strip()
        if not equals or not name:
            example = f", e.g. -o {cls.options[0].name}={format_value(cls.options[0].default)}" if cls.options else ""
            raise ChargenError(f"write a strategy option as NAME=VALUE{example}. Received: {pair!r}")
        if name not in declared:
            if declared:
                listing = "; ".join(option.describe() for option in cls.options)
                raise ChargenError(f"strategy {cls.name!r} has no option {name!r}; its options are {listing}. Received: {pair}")
            raise ChargenError(f"strategy {cls.name!r} takes no options. Received: {pair}")
        if name in values:
            raise ChargenError(f"option {name!r} is given twice. Received: {name}={format_value(values[name])} and {pair}")
        values[name] = declared[name].parse(text)
    return values


# ----------------------------------------------------------------------------------------------------
# Helpers shared by the strategies: all vectorised over the batch, no Python loop per row.


def check_logits(logits: np.ndarray) -> None:
    """Refuse logits with which no choice makes sense: NaN or +inf anywhere, or a row that is all -inf."""
    _check_row_peaks(logits.max(axis=-1))


def _check_row_peaks(peaks: np.ndarray) -> None:
    """The row maxima tell all three problems (NaN propagates through max), so the check costs one max."""
    if np.isfinite(peaks).all():
        return
    row = int(np.flatnonzero(~np.isfinite(peaks.reshape(-1)))[0])
    peak = peaks.reshape(-1)[row]
    problem = "contain NaN" if np.isnan(peak) else "contain +inf" if peak > 0 else "are all -inf (nothing left to pick)"
    raise StrategyError(f"the logits of row {row} {problem}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities float64[batch, vocab] from logits, stable for large logits; -inf becomes 0."""
    logits = np.asarray(logits, dtype=np.float64)
    peaks = logits.max(axis=-1, keepdims=True)
    _check_row_peaks(peaks)
    exponentials = np.exp(logits - peaks)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities float64[batch, vocab]; -inf stays -inf."""
    logits = np.asarray(logits, dtype=np.float64)
    peaks = logits.max(axis=-1, keepdims=True)
    _check_row_peaks(peaks)
    shifted = logits - peaks
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def categorical(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row from non-negative weights float[batch, vocab]: int64[batch].

    The weights need not sum to 1, but every row needs some positive weight (`softmax` ensures it).
    One uniform number per row against the row's normalised cumulative sum: dividing by the last
    cumulative value makes it exactly 1.0, so some entry always exceeds the draw (which is < 1), and
    zero-weight entries can never be picked.
    """
    cumulative = np.cumsum(weights, axis=-1)
    cumulative /= cumulative[:, -1:]
    draws = rng.random((cumulative.shape[0], 1))
    return (cumulative > draws).argmax(axis=-1)


# Truncation filters: each returns logits with the excluded characters set to -inf (never changing
# its input), so they compose, e.g. keep_top_p(keep_top_k(logits, 20), 0.9), and end in
# `categorical(softmax(...))`. Rows are picked with `rows[:, None]` fancy indexing, which is several
# times faster than take_along_axis / put_along_axis at this size.


def keep_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits of each row: exactly k, found by a partition rather than a sort."""
    batch, vocab_size = logits.shape
    if k >= vocab_size:
        return logits
    rows = np.arange(batch)[:, None]
    kept = np.argpartition(logits, vocab_size - k, axis=-1)[:, vocab_size - k :]
    filtered = np.full_like(logits, -np.inf)
    filtered[rows, kept] = logits[rows, kept]
    return filtered


def keep_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the nucleus: the most likely characters whose probabilities first add up to at least p."""
    if p >= 1.0:
        return logits
    probabilities = softmax(logits)
    return _keep_leading_mass(logits, probabilities, np.argsort(-probabilities, axis=-1), p)


def keep_min_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep characters at least p times as likely as the most likely one.

    p_i / p_max = exp(l_i - l_max), so the test needs no softmax: l_i >= l_max + log(p).
    """
    threshold = logits.max(axis=-1, keepdims=True) + math.log(p)
    return np.where(logits >= threshold, logits, -np.inf)


def keep_typical(logits: np.ndarray, p: float) -> np.ndarray:
    """Locally typical set: characters whose surprise is closest to the row's entropy, up to mass p.

    Meister et al. (2022): rank characters by |-log p_i - H| and keep the smallest-ranked set whose
    probability reaches p. It drops the very likely as well as the very unlikely when both are atypical.
    """
    log_probabilities = log_softmax(logits)
    probabilities = np.exp(log_probabilities)
    finite_log_probabilities = np.where(probabilities > 0, log_probabilities, 0.0)  # 0 * -inf would be NaN
    entropy = -np.sum(probabilities * finite_log_probabilities, axis=-1, keepdims=True)
    distance = np.abs(log_probabilities + entropy)  # +inf for filtered characters: they rank last
    return _keep_leading_mass(logits, probabilities, np.argsort(distance, axis=-1), p)


def _keep_leading_mass(logits: np.ndarray, probabilities: np.ndarray, order: np.ndarray, p: float) -> np.ndarray:
    """Keep characters in `order` until their probability reaches p (the crossing one included)."""
    rows = np.arange(logits.shape[0])[:, None]
    ranked = probabilities[rows, order]
    mass_before = np.cumsum(ranked, axis=-1) - ranked
    drop = np.empty(logits.shape, dtype=bool)
    drop[rows, order] = mass_before >= p
    return np.where(drop, -np.inf, logits)


# ----------------------------------------------------------------------------------------------------
# Output checks and guarded calls


def check_token_output(ids: Any, batch: int, vocab_size: int, strategy_label: str) -> np.ndarray:
    """Return `ids` as int64[batch], or raise StrategyError saying how the strategy broke the contract.

    `strategy_label` names the strategy and its distribution, e.g. "strategy 'top-k' (from chargen 0.1.0)".
    """
    return _check_ids(ids, (batch,), vocab_size, strategy_label, "ids")


def check_sequence_output(result: Any, batch: int, length: int, vocab_size: int, strategy_label: str) -> SequenceResult:
    """Return `result` with int64 ids, or raise StrategyError saying how the strategy broke the contract."""
    if not isinstance(result, SequenceResult):
        raise StrategyError(f"{strategy_label} returned a {type(result).__name__} where a SequenceResult was due")
    ids = _check_ids(result.ids, (batch, length), vocab_size, strategy_label, "ids")
    candidates, scores = result.candidates, result.scores
    if candidates is None:
        if scores is not None:
            raise StrategyError(f"{strategy_label} returned scores without candidates; scores belong to candidates")
        return SequenceResult(ids=ids)
    candidates = _check_ids(candidates, (batch, None, length), vocab_size, strategy_label, "candidates")
    if scores is not None:
        scores = np.asarray(scores)
        width = candidates.shape[1]
        if scores.shape != (batch, width) or scores.dtype.kind != "f":
            raise StrategyError(
                f"{strategy_label} returned scores of shape {scores.shape} and dtype {scores.dtype} "
                f"for {width} candidates per row; scores are float[batch, width] = float[{batch}, {width}]"
            )
        if np.isnan(scores).any() or np.isposinf(scores).any():
            raise StrategyError(f"{strategy_label} returned scores with NaN or +inf; a log-probability is at most 0")
    return SequenceResult(ids=ids, candidates=candidates, scores=scores)


def _check_ids(ids: Any, shape: tuple[int | None, ...], vocab_size: int, label: str, what: str) -> np.ndarray:
    """`ids` as int64 if it has `shape` (None: any size), an integer dtype and values in [0, vocab_size)."""
    ids = np.asarray(ids)
    if ids.ndim != len(shape) or any(want is not None and got != want for got, want in zip(ids.shape, shape)):
        expected = "(" + ", ".join("width" if want is None else str(want) for want in shape) + ")"
        raise StrategyError(f"{label} returned {what} of shape {ids.shape} where {expected} was due")
    if ids.dtype.kind not in "iu":
        problem = "non-finite values" if ids.dtype.kind in "fc" and not np.isfinite(ids).all() else f"dtype {ids.dtype}"
        raise StrategyError(f"{label} returned {what} with {problem}; ids are integers")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        outside = ids[(ids < 0) | (ids >= vocab_size)].flat[0]
        raise StrategyError(f"{label} returned {what} outside the vocabulary [0, {vocab_size}). Received: id {outside}")
    return ids.astype(np.int64, copy=False)


class _PassThrough(Exception):
    """Carries an exception through a strategy's code unchanged, so the strategy is not blamed for it."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class GuardedStrategy:
    """A strategy instance whose every call is checked, so a broken plugin stops with its name in one line.

    The host calls `sample` (token level) or `generate` (sequence level) here instead of on the strategy:
    an exception inside the strategy becomes a `StrategyError` naming it and its distribution, and the
    result is checked with `check_token_output` / `check_sequence_output`.

    Args:
        strategy: the strategy instance.
        label: how errors name it, e.g. "strategy 'top-k' (from chargen 0.1.0)".
    """

    def __init__(self, strategy: Strategy, label: str):
        self.strategy = strategy
        self.label = label

    @property
    def kind(self) -> str:
        return self.strategy.kind

    @property
    def stochastic(self) -> bool:
        return self.strategy.stochastic

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        """The strategy's `sample`, checked: int64[batch]."""
        try:
            ids = self.strategy.sample(logits, context)
        except Exception as error:
            raise StrategyError(f"{self.label} failed at step {context.step}: {describe_error(error)}") from error
        return check_token_output(ids, logits.shape[0], logits.shape[-1], self.label)

    def generate(
        self,
        step: StepFunction,
        state: list[np.ndarray],
        prime_ids: np.ndarray,
        length: int,
        context: SamplingContext,
    ) -> SequenceResult:
        """The strategy's `generate`, checked. Errors raised by the host's `step` reach the host unchanged."""
        vocab_size = len(context.vocab)

        def checked_step(ids: np.ndarray, step_state: list[np.ndarray]):
            try:
                ids = np.asarray(ids)
                if ids.ndim != 1:
                    raise StrategyError(f"{self.label} called step with ids of shape {ids.shape}; step takes int[n]")
                ids = _check_ids(ids, ids.shape, vocab_size, self.label, "step input ids")
                rows = sorted({len(s) for s in step_state} - {len(ids)})
                if rows:
                    raise StrategyError(f"{self.label} called step with {len(ids)} ids but state arrays with {rows} rows")
                return step(ids, step_state)
            except Exception as error:
                raise _PassThrough(error) from error

        try:
            result = self.strategy.generate(checked_step, state, prime_ids, length, context)
        except _PassThrough as passing:
            raise passing.error
        except Exception as error:
            raise StrategyError(f"{self.label} failed: {describe_error(error)}") from error
        return check_sequence_output(result, prime_ids.shape[0], length, vocab_size, self.label)


def describe_error(error: BaseException) -> str:
    """An exception as one line, "TypeError: what it said", for messages that name a strategy."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
