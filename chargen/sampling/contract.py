"""The strategy contracts: what a strategy declares, what it is given and what it returns.

Two contracts, one entry-point group: a `TokenSampler` picks the next id of every row from logits
while the host drives the loop; a `SequenceSampler` (beam search) drives the loop itself through the
host's one-step function. Both speak numpy only, so a plugin needs no TensorFlow.

Beside the contracts sit the rules on declarations (`class_problems`) and the `-o NAME=VALUE` parsing
(`parse_options`), so the registry, the CLI and `chargen.testing` read one definition of a valid strategy.
`StrategyError` lives here too: it is how every part of `chargen.sampling` says a strategy broke the contract.
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
            raise ValueError(
                f"option {self.name!r} must have type int, float, str or bool. Received: type={self.type!r}"
            )
        if not self.accepts(self.default):
            raise ValueError(
                f"option {self.name!r} of type {self.type.__name__} needs a default of that type. "
                f"Received: default={self.default!r}"
            )

    def parse(self, text: str) -> Any:
        """Convert the text after `NAME=` to this option's type, or raise a ChargenError saying what it expected."""
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
        raise ChargenError(f"option {self.name!r} takes {_EXPECTED[self.type]}. "
                           f"Received: {_printable(f'{self.name}={text}')}")

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


def read_only_view(array: Any) -> np.ndarray:
    """A view of `array` that refuses writes; `array` itself stays writable for its owner."""
    view = np.asarray(array).view()  # a new array object sharing the owner's memory
    view.setflags(write=False)
    return view


@dataclasses.dataclass(frozen=True)
class SamplingContext:
    """What a strategy may know besides the logits; the host builds one per step.

    `ids` is always a read-only view: the host may pass a slice of the buffer it is filling, and a
    strategy that writes into it fails at once instead of corrupting the text, while the host's own
    array stays writable. A strategy that needs to change the ids works on `context.ids.copy()`.
    """

    step: int  # 0-based index of the character being generated in this run
    ids: np.ndarray  # int64[batch, t]: the prime and the ids generated so far; read-only
    rng: np.random.Generator  # seeded by the host: the only randomness a strategy may use
    vocab: Vocabulary  # the model's characters, for strategies that look at text

    def __post_init__(self):
        object.__setattr__(self, "ids", read_only_view(self.ids))  # the dataclass is frozen


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

    As the temperature nears 0 a stochastic strategy picks the most likely character, and
    `chargen.testing.check_strategy` holds it to that, unless it sets `greedy_when_cold = False`: a
    strategy that may refuse the most likely character (a repetition ban, a whitelist) declares so.
    """

    kind = "token"
    greedy_when_cold: ClassVar[bool] = True  # False: may refuse the most likely character even at temperature ~0

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        """Return the next ids.

        Call arguments:
            logits: float[batch, vocab], unnormalised log-probabilities; do not modify them in place.
            context: the step index, the ids so far (read-only), the seeded generator and the vocabulary.

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
            context: step 0, the prime ids (read-only), the seeded generator and the vocabulary.

        Returns:
            a `SequenceResult` with `ids` int[batch, length].
        """
        raise NotImplementedError(
            f"{type(self).__name__} must override generate(step, state, prime_ids, length, context)"
        )


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
    if issubclass(cls, TokenSampler) and not isinstance(cls.greedy_when_cold, bool):
        problems.append("`greedy_when_cold` must be True or False. "
                        f"Received: greedy_when_cold={cls.greedy_when_cold!r}")
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


def _printable(text: str) -> str:
    """Text as typed, or quoted with escapes when it holds a newline or another unprintable character,
    so that an error quoting it stays one line."""
    return text if text.isprintable() else repr(text)


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
            first = cls.options[0] if cls.options else None
            example = f", e.g. -o {first.name}={format_value(first.default)}" if first else ""
            raise ChargenError(f"write a strategy option as NAME=VALUE{example}. Received: {pair!r}")
        if name not in declared:
            if declared:
                listing = "; ".join(option.describe() for option in cls.options)
                raise ChargenError(
                    f"strategy {cls.name!r} has no option {name!r}; its options are {listing}. "
                    f"Received: {_printable(pair)}"
                )
            raise ChargenError(f"strategy {cls.name!r} takes no options. Received: {_printable(pair)}")
        if name in values:
            earlier = f"{name}={format_value(values[name])}"
            raise ChargenError(f"option {name!r} is given twice. Received: {earlier} and {_printable(pair)}")
        values[name] = declared[name].parse(text)
    return values
