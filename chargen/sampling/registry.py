"""Find strategies through the `chargen.samplers` entry-point group, built-ins and plugins alike.

Listing reads package metadata only; a strategy's module is imported when that strategy is loaded,
once, by `importlib.metadata.EntryPoint.load` (also for the "module:attribute" strings that tests
register with `registered`). Plain `importlib.metadata`: one extension point needs no plugin framework.

Example:
    >>> loaded = load("top-k")
    >>> strategy = loaded.create(parse_options(loaded.cls, ["k=5"]))
    >>> ids = strategy.sample(logits, context)  # checked; errors name the strategy and its distribution
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from chargen.errors import ChargenError
from chargen.sampling.contract import Option, Strategy, StrategyError, class_problems
from chargen.sampling.guard import GuardedStrategy, describe_error

GROUP = "chargen.samplers"


@dataclasses.dataclass(frozen=True)
class StrategyInfo:
    """One registration, as package metadata tells it, without importing anything."""

    name: str  # the entry-point name: `--strategy NAME`
    value: str  # where the class lives, "module:Class"
    distribution: str  # the installed distribution that registers it, e.g. "chargen-mirostat"
    version: str  # that distribution's version

    @property
    def label(self) -> str:
        """How errors name the strategy: "strategy 'top-k' (from chargen 0.1.0)"."""
        return f"strategy {self.name!r} (from {self.distribution} {self.version})"


@dataclasses.dataclass(frozen=True)
class LoadedStrategy:
    """A strategy class that imported and passed the contract checks, with where it came from."""

    info: StrategyInfo
    cls: type[Strategy]

    @property
    def kind(self) -> str:
        return self.cls.kind

    def create(self, options: Mapping[str, Any] | None = None) -> GuardedStrategy:
        """An instance built from `options` (as `parse_options` returns them), wrapped so each call is checked.

        A ChargenError from the constructor (a value out of range) reaches the user as is; any other
        exception is the strategy's fault and is reported with its name and distribution.
        """
        try:
            strategy = self.cls(**(options or {}))
        except ChargenError:
            raise
        except Exception as error:
            raise StrategyError(f"{self.info.label} could not be created: {describe_error(error)}") from error
        return GuardedStrategy(strategy, self.info.label)


@dataclasses.dataclass(frozen=True)
class StrategyDescription:
    """What `chargen samplers` shows for one strategy; `error` is set instead of the rest when it is broken."""

    info: StrategyInfo
    kind: str = ""  # "token" or "sequence"
    description: str = ""
    options: tuple[Option, ...] = ()
    stochastic: bool = False
    error: str | None = None  # why it cannot be used: import failure, contract problem, name claimed twice


@dataclasses.dataclass(frozen=True)
class _Entry:
    info: StrategyInfo
    load: Callable[[], Any]  # imports and returns the registered object


# Memoised: entries by name (several when distributions clash) and classes loaded so far.
_entries: dict[str, tuple[_Entry, ...]] | None = None
_loaded: dict[str, LoadedStrategy] = {}
# Stack of in-process registrations made by `registered`: (entries, hide what is installed).
_overlays: list[tuple[tuple[_Entry, ...], bool]] = []


def reset() -> None:
    """Forget what was read and loaded, e.g. after installing a plugin in the same process."""
    global _entries
    _entries = None
    _loaded.clear()


def _installed_entries() -> list[_Entry]:
    entries = []
    for entry_point in importlib.metadata.entry_points(group=GROUP):
        distribution = entry_point.dist
        info = StrategyInfo(
            name=entry_point.name,
            value=entry_point.value,
            distribution=distribution.name if distribution else "unknown distribution",
            version=distribution.version if distribution else "?",
        )
        entries.append(_Entry(info, entry_point.load))
    return entries


def _all_entries() -> dict[str, tuple[_Entry, ...]]:
    global _entries
    if _entries is None:
        last_hiding = max((i for i, (_, hide) in enumerate(_overlays) if hide), default=None)
        collected = _installed_entries() if last_hiding is None else []
        for overlay, _ in _overlays[last_hiding or 0 :]:
            collected.extend(overlay)
        by_name: dict[str, list[_Entry]] = {}
        for entry in collected:
            by_name.setdefault(entry.info.name, []).append(entry)
        _entries = {name: tuple(claims) for name, claims in sorted(by_name.items())}
    return _entries


def available() -> dict[str, StrategyInfo]:
    """Installed strategies by name, from metadata alone: nothing is imported.

    A name claimed by two distributions maps to the first; `load` and `describe_all` report the clash.
    """
    return {name: claims[0].info for name, claims in _all_entries().items()}


def load(name: str) -> LoadedStrategy:
    """Import the strategy registered as `name` (once) and check its class against the contract.

    Raises:
        ChargenError: no strategy has that name (the message lists the installed ones), or two
            distributions register it (the message names both).
        StrategyError: it fails to import or breaks the contract (the message names its distribution).
    """
    name = name.strip().lower()
    if name in _loaded:
        return _loaded[name]
    entries = _all_entries()
    if name not in entries:
        raise ChargenError(_unknown_message(name, list(entries)))
    claims = entries[name]
    if len(claims) > 1:
        raise ChargenError(_clash_message(name, claims))
    entry = claims[0]
    try:
        cls = entry.load()
    except Exception as error:
        raise StrategyError(
            f"{entry.info.label} failed to import from {entry.info.value}: {describe_error(error)}"
        ) from error
    problems = class_problems(cls)
    if not problems and cls.name != name:
        problems.append(f"its class declares name {cls.name!r}; the entry-point name and `name` must match")
    if problems:
        raise StrategyError(f"{entry.info.label} breaks the strategy contract: {'; '.join(problems)}")
    _loaded[name] = LoadedStrategy(entry.info, cls)
    return _loaded[name]


def describe_all() -> list[StrategyDescription]:
    """Every installed strategy, imported and described; a broken one carries its error instead of failing the list."""
    descriptions = []
    for name, claims in _all_entries().items():
        try:
            loaded = load(name)
        except ChargenError as error:
            descriptions.append(StrategyDescription(info=claims[0].info, error=str(error)))
            continue
        cls = loaded.cls
        descriptions.append(
            StrategyDescription(
                info=loaded.info,
                kind=cls.kind,
                description=cls.description,
                options=cls.options,
                stochastic=cls.stochastic,
            )
        )
    return descriptions


def _unknown_message(name: str, installed: list[str]) -> str:
    close = difflib.get_close_matches(name, installed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listing = ", ".join(installed) or "none"
    return (
        f"unknown sampling strategy {name!r}; {hint}installed: {listing} (see `chargen samplers`). "
        f"Received: --strategy {name}"
    )


def _clash_message(name: str, claims: tuple[_Entry, ...]) -> str:
    sources = " and ".join(f"{claim.info.distribution} {claim.info.version} ({claim.info.value})" for claim in claims)
    return f"sampling strategy {name!r} is registered by more than one distribution: {sources}; uninstall all but one"


@contextlib.contextmanager
def registered(
    strategies: Mapping[str, type[Strategy] | str],
    *,
    distribution: str = "test-plugins",
    version: str = "0.0.0",
    hide_installed: bool = True,
) -> Iterator[None]:
    """Make the registry see `strategies` as if `distribution` registered them, for the `with` block only.

    For tests, so they do not depend on what happens to be installed. Values are classes or
    "module:attribute" strings (imported on load, so a broken import can be simulated). With
    `hide_installed` (the default) the really installed strategies are invisible; nest a second
    `registered(..., hide_installed=False)` to add another distribution, e.g. to clash on a name.

    Example:
        >>> with registered({"shout": Shout}):
        ...     assert load("shout").cls is Shout
    """
    entries = tuple(
        _Entry(StrategyInfo(name, _where(target), distribution, version), _loader(name, target))
        for name, target in strategies.items()
    )
    overlay = (entries, hide_installed)
    _overlays.append(overlay)
    reset()
    try:
        yield
    finally:
        _overlays[:] = [other for other in _overlays if other is not overlay]
        reset()


def _where(target: type | str) -> str:
    return target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"


def _loader(name: str, target: type | str) -> Callable[[], Any]:
    """A "module:attribute" string is loaded as an installed entry point is, by the standard library."""
    if isinstance(target, str):
        return importlib.metadata.EntryPoint(name=name, value=target, group=GROUP).load
    return lambda: target
