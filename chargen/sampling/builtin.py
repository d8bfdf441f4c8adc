"""The built-in strategies. They are registered in chargen's own pyproject.toml under `chargen.samplers`,
exactly as a plugin registers its strategies, so the host treats both alike.

Example:
    >>> sampler = TopK(k=5)
    >>> ids = sampler.sample(logits, context)  # int[batch]
"""

from __future__ import annotations

import numpy as np

from chargen.errors import ChargenError
from chargen.sampling.contract import (
    Option,
    SamplingContext,
    SequenceResult,
    SequenceSampler,
    StepFunction,
    TokenSampler,
)
from chargen.sampling.functional import (
    categorical,
    check_logits,
    keep_min_p,
    keep_top_k,
    keep_top_p,
    keep_typical,
    log_softmax,
    softmax,
)


def _require_probability(strategy: str, name: str, value: object) -> None:
    """Probability-mass options live in (0, 1]: 0 would keep nothing, more than 1 means nothing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ChargenError(f"{strategy} needs 0 < {name} <= 1. Received: {name}={value!r}")


def _require_count(strategy: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ChargenError(f"{strategy} needs a whole number {name} >= 1. Received: {name}={value!r}")


class Greedy(TokenSampler):
    """The most likely character every time: repeatable, and prone to loops."""

    name = "greedy"
    description = "always the most likely character (deterministic; ignores temperature and seed)"
    stochastic = False

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        check_logits(logits)
        return logits.argmax(axis=-1)


class Random(TokenSampler):
    """Draw from the whole distribution; the temperature alone shapes it."""

    name = "random"
    description = "draw from the full distribution; shape it with --temperature"

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        return categorical(softmax(logits), context.rng)


class TopK(TokenSampler):
    """Draw among the k most likely characters (Fan et al., 2018).

    Args:
        k: how many of the most likely characters stay in the draw.
    """

    name = "top-k"
    description = "draw among the k most likely characters"
    options = (Option("k", int, 10, "how many of the most likely characters to keep (>= 1)"),)

    def __init__(self, k: int = 10):
        _require_count(self.name, "k", k)
        self.k = k

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        return categorical(softmax(keep_top_k(logits, self.k)), context.rng)


class TopP(TokenSampler):
    """Nucleus sampling (Holtzman et al., 2020): the fewest likely characters that carry mass p.

    Args:
        p: the probability mass to keep, in (0, 1].
    """

    name = "top-p"
    description = "nucleus sampling: draw among the most likely characters holding probability p"
    options = (Option("p", float, 0.9, "probability mass of the nucleus, 0 < p <= 1"),)

    def __init__(self, p: float = 0.9):
        _require_probability(self.name, "p", p)
        self.p = p

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        return categorical(softmax(keep_top_p(logits, self.p)), context.rng)


class MinP(TokenSampler):
    """Keep characters at least p times as likely as the best one: the cut follows the model's confidence.

    Args:
        p: the fraction of the top probability a character needs, in (0, 1].
    """

    name = "min-p"
    description = "draw among characters at least p times as likely as the most likely one"
    options = (Option("p", float, 0.05, "minimum probability relative to the most likely, 0 < p <= 1"),)

    def __init__(self, p: float = 0.05):
        _require_probability(self.name, "p", p)
        self.p = p

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        return categorical(softmax(keep_min_p(logits, self.p)), context.rng)


class Typical(TokenSampler):
    """Locally typical sampling (Meister et al., 2022): characters whose surprise is near the entropy.

    Args:
        p: the probability mass of the typical set, in (0, 1].
    """

    name = "typical"
    description = "locally typical sampling: draw among characters whose surprise is close to the entropy"
    options = (Option("p", float, 0.9, "probability mass of the typical set, 0 < p <= 1"),)

    def __init__(self, p: float = 0.9):
        _require_probability(self.name, "p", p)
        self.p = p

    def sample(self, logits: np.ndarray, context: SamplingContext) -> np.ndarray:
        return categorical(softmax(keep_typical(logits, self.p)), context.rng)


class Beam(SequenceSampler):
    """Beam search: keep the `width` most probable sequences so far, extend each by every character.

    Every candidate has the same length (generation has no end symbol), so the total log-probability
    ranks them fairly and no length normalisation is needed. Candidates come back best first, with
    their log-probabilities (natural log) as scores.

    Args:
        width: how many sequences to keep per row; 1 is greedy decoding.
    """

    name = "beam"
    description = "beam search: the most probable sequences overall, not one character at a time"
    options = (Option("width", int, 4, "sequences kept per row (>= 1); 1 is greedy decoding"),)
    stochastic = False

    def __init__(self, width: int = 4):
        _require_count(self.name, "width", width)
        self.width = width

    def generate(
        self,
        step: StepFunction,
        state: list[np.ndarray],
        prime_ids: np.ndarray,
        length: int,
        context: SamplingContext,
    ) -> SequenceResult:
        batch, width = prime_ids.shape[0], self.width
        # Rows are (batch row, beam) pairs flattened as row * width + beam. All beams start as the
        # prime; only beam 0 counts at first (the others score -inf) so duplicates never compete.
        state = [np.repeat(s, width, axis=0) for s in state]
        logits, state = step(np.repeat(prime_ids[:, -1], width), state)
        scores = np.full((batch, width), -np.inf)
        scores[:, 0] = 0.0
        history = np.zeros((batch, width, length), dtype=np.int64)
        row_offsets = np.arange(batch)[:, None] * width
        for position in range(length):
            vocab_size = logits.shape[-1]
            totals = (scores[:, :, None] + log_softmax(logits).reshape(batch, width, vocab_size)).reshape(batch, -1)
            # A stable sort on the negated totals keeps the lowest index among ties, as argmax does,
            # so width 1 reproduces greedy decoding exactly.
            best = np.argsort(-totals, axis=-1, kind="stable")[:, :width]  # (batch, width)
            scores = np.take_along_axis(totals, best, axis=-1)
            parents, tokens = np.divmod(best, vocab_size)
            history = np.take_along_axis(history, parents[:, :, None], axis=1)
            history[:, :, position] = tokens
            if position + 1 < length:
                rows = (row_offsets + parents).reshape(-1)
                logits, state = step(tokens.reshape(-1), [s[rows] for s in state])
        return SequenceResult(ids=history[:, 0].copy(), candidates=history, scores=scores)
