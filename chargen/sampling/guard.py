"""The checks on what a strategy returns, and the guarded calls through which the host runs a strategy.

They live in the sampling package rather than in the host so that chargen's generation and
`chargen.testing` hold strategies to the same rules, and a broken plugin is named in one line instead
of failing deep inside generation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chargen.sampling.contract import (
    SamplingContext,
    SequenceResult,
    StepFunction,
    Strategy,
    StrategyError,
    read_only_view,
)


def check_token_output(ids: Any, batch: int, vocab_size: int, strategy_label: str) -> np.ndarray:
    """Return `ids` as int64[batch], or raise StrategyError saying how the strategy broke the contract.

    `strategy_label` names the strategy and its distribution, e.g. "strategy 'top-k' (from chargen 0.1.0)".
    """
    return _check_ids(ids, (batch,), vocab_size, strategy_label, "ids")


def check_sequence_output(
    result: Any, batch: int, length: int, vocab_size: int, strategy_label: str
) -> SequenceResult:
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
        non_finite = ids.dtype.kind in "fc" and not np.isfinite(ids).all()
        problem = "non-finite values" if non_finite else f"dtype {ids.dtype}"
        raise StrategyError(f"{label} returned {what} with {problem}; ids are integers")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        outside = ids[(ids < 0) | (ids >= vocab_size)].flat[0]
        raise StrategyError(
            f"{label} returned {what} outside the vocabulary [0, {vocab_size}). Received: id {outside}"
        )
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
    result is checked with `check_token_output` / `check_sequence_output`. The ids the host hands over
    (`context.ids`, and `prime_ids` for `generate`) are read-only views, so a strategy that writes into
    them stops here too.

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
            raise self._failure(error, context.step) from error
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
                    raise StrategyError(
                        f"{self.label} called step with {len(ids)} ids but state arrays with {rows} rows"
                    )
                return step(ids, step_state)
            except Exception as error:
                raise _PassThrough(error) from error

        try:
            result = self.strategy.generate(checked_step, state, read_only_view(prime_ids), length, context)
        except _PassThrough as passing:
            raise passing.error  # noqa: B904 (the host's own error, passed through unchanged)
        except Exception as error:
            raise self._failure(error) from error
        return check_sequence_output(result, prime_ids.shape[0], length, vocab_size, self.label)

    def _failure(self, error: Exception, step: int | None = None) -> StrategyError:
        """The one-line error for an exception raised inside the strategy (at `step`, for `sample`)."""
        at_step = f" at step {step}" if step is not None else ""
        message = f"{self.label} failed{at_step}: {describe_error(error)}"
        if isinstance(error, ValueError) and "read-only" in str(error):
            message += " (context.ids and prime_ids belong to the host; change a copy)"
        return StrategyError(message)


def describe_error(error: BaseException) -> str:
    """An exception as one line, "TypeError: what it said", for messages that name a strategy."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
