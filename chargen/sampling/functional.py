"""The numpy helpers strategies share: logits checks, softmax, a seeded draw and truncation filters.

Built-ins and plugins compose the same few pieces, e.g. `categorical(softmax(keep_top_k(logits, 10)), rng)`,
so a plugin gets the stable, vectorised versions instead of writing its own. Each works on a whole batch
at once (`float[batch, vocab]`), with no Python loop per row, and none changes its input.
"""

from __future__ import annotations

import math

import numpy as np

from chargen.sampling.contract import StrategyError


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
# `categorical(softmax(...))`. Rows are picked with `rows[:, None]` fancy indexing, which is quicker
# than take_along_axis / put_along_axis for arrays this small.


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
