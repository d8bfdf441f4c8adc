"""Synthetic corpora whose entropy rate is known exactly, so a model's bits per character has a floor.

A model cannot beat a source's entropy rate on average, and a perfect model reaches it; the gap between
the two says how much a model has left to learn. Two kinds of source:

- `markov_source`: a random k-order Markov chain. The floor is computed from the chain itself (stationary
  distribution over contexts times each context's conditional entropy), not estimated from the text.
- `recall_source`: records `KEY filler KEY\\n`. The second key repeats the first after `lag` characters,
  so only a model that remembers across `lag` characters reaches the floor; `no_recall_bits_per_char`
  is what a model that cannot remember gets at best. With `cue=True` a `=` before the second key says
  when to recall it, so a model need not count the filler to know when to answer.

numpy only, and every random draw comes from one `numpy.random.Generator` seeded by `seed`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from chargen.errors import ChargenError

MARKOV_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
RECALL_KEYS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RECALL_FILLER = "abcdefghijklmnopqrstuvwxyz"
RECALL_TERMINATOR = "\n"
RECALL_CUE = "="

# A chain's stationary distribution is found by a dense linear solve over its contexts; this bounds
# that solve at about two seconds and 130 MB on a 2-core CPU (e.g. order 3 over 16 symbols, order 6 over 4).
MAX_MARKOV_CONTEXTS = 4096
# Small concentrations can draw transition probabilities that are exactly zero, which could cut the chain
# into closed pieces with no unique stationary distribution; every probability is raised to at least this.
MIN_TRANSITION_PROBABILITY = 1e-6
DEFAULT_CONCENTRATION = 0.2
STATIONARY_TOLERANCE = 1e-12


@dataclass(frozen=True)
class SyntheticCorpus:
    """A generated text and the best bits per character any model can achieve on it."""

    text: str = field(repr=False)  # the generated characters
    entropy_bits_per_char: float  # exact entropy rate of the source: the floor for bits per character
    description: str  # one line: the source, its parameters, seed and floor
    no_recall_bits_per_char: float | None = None  # recall sources: the floor without memory of the key


def stationary_distribution(transitions: np.ndarray) -> np.ndarray:
    """The stationary distribution over contexts of a k-order chain, to `STATIONARY_TOLERANCE`.

    Args:
        transitions: float[alphabet_size**order, alphabet_size]; row c is the distribution of the next
            symbol after context c, where context c has digits (base alphabet_size) the last `order`
            symbols, oldest first. Appending symbol x to context c gives context (c * A + x) mod C.

    Returns:
        float64[alphabet_size**order], non-negative and summing to 1.
    """
    num_contexts, alphabet_size = transitions.shape
    successors = (np.arange(num_contexts)[:, None] * alphabet_size + np.arange(alphabet_size)) % num_contexts  # [C, A]
    context_transitions = np.zeros((num_contexts, num_contexts))  # [C, C]
    np.add.at(context_transitions, (np.repeat(np.arange(num_contexts), alphabet_size), successors.ravel()),
              transitions.ravel())
    # pi (M - I) = 0 with sum(pi) = 1: transpose, and swap the last (redundant) equation for the sum.
    system = context_transitions.T - np.eye(num_contexts)  # [C, C]
    system[-1, :] = 1.0
    right_side = np.zeros(num_contexts)
    right_side[-1] = 1.0
    stationary = np.clip(np.linalg.solve(system, right_side), 0.0, None)  # [C]
    stationary /= stationary.sum()
    residual = np.abs(stationary @ context_transitions - stationary).max()
    if residual > STATIONARY_TOLERANCE:
        raise RuntimeError(f"the stationary distribution did not converge. Received: residual={residual:.3g}")
    return stationary


def markov_entropy_rate(transitions: np.ndarray) -> float:
    """Exact entropy rate in bits per symbol: sum over contexts of P(context) * H(next | context).

    Args:
        transitions: float[alphabet_size**order, alphabet_size], as in `stationary_distribution`.
    """
    transitions = np.asarray(transitions, dtype=np.float64)
    return float(stationary_distribution(transitions) @ _conditional_entropies(transitions))


def _conditional_entropies(transitions: np.ndarray) -> np.ndarray:
    """H(next | context) in bits for each context: float[C]."""
    safe = np.where(transitions > 0, transitions, 1.0)  # 0 log 0 = 0
    return -(transitions * np.log2(safe)).sum(axis=1)  # [C]


def _power_capped(base: int, exponent: int, cap: int) -> int:
    """base**exponent, or the first power past `cap` (an order of 10**18 must not compute its power)."""
    value = 1
    for _ in range(exponent):
        value *= base
        if value > cap:
            break
    return value


def markov_source(
    order: int,
    alphabet_size: int,
    length: int,
    seed: int,
    concentration: float = DEFAULT_CONCENTRATION,
) -> SyntheticCorpus:
    """A random k-order Markov chain over `alphabet_size` readable symbols, and `length` characters of it.

    Each context's next-symbol distribution is a Dirichlet(concentration) draw: small concentrations give
    peaked distributions (a low, learnable floor), large ones approach uniform. The chain starts in a
    context drawn from its stationary distribution, so every character, the first included, has the
    stationary law and the expected log-loss of the true model is the entropy rate at every position.

    Args:
        order: how many previous symbols the next one depends on (0: independent symbols).
        alphabet_size: 2 to 36 symbols, taken in order from "a".."z" then "0".."9".
        length: characters to generate.
        seed: seeds the transition table and the text.
        concentration: Dirichlet concentration, > 0.

    Example:
        >>> corpus = markov_source(order=2, alphabet_size=8, length=10_000, seed=0)
        >>> round(corpus.entropy_bits_per_char, 6)
        1.363039
    """
    if not 2 <= alphabet_size <= len(MARKOV_ALPHABET):
        raise ChargenError(f"alphabet_size must be between 2 and {len(MARKOV_ALPHABET)}. "
                           f"Received: alphabet_size={alphabet_size}")
    if order < 0:
        raise ChargenError(f"order must be 0 or more. Received: order={order}")
    contexts = _power_capped(alphabet_size, order, MAX_MARKOV_CONTEXTS)
    if contexts > MAX_MARKOV_CONTEXTS:
        raise ChargenError(f"an order-{order} chain over {alphabet_size} symbols has {alphabet_size}^{order} "
                           f"contexts, more than the {MAX_MARKOV_CONTEXTS:,} allowed; lower the order or "
                           f"the alphabet size. Received: order={order}, alphabet_size={alphabet_size}")
    if not concentration > 0:
        raise ChargenError(f"concentration must be positive. Received: concentration={concentration}")
    _check_length(length)
    num_contexts = alphabet_size**order
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.full(alphabet_size, concentration), size=num_contexts)  # [C, A]
    transitions = np.maximum(transitions, MIN_TRANSITION_PROBABILITY)
    transitions /= transitions.sum(axis=1, keepdims=True)
    stationary = stationary_distribution(transitions)  # [C]
    entropy = float(stationary @ _conditional_entropies(transitions))

    # One uniform per character and a bisect on the context's cumulative row: the loop is plain Python
    # on lists (about 0.4 s per million characters), because each character depends on the previous ones.
    cumulative = np.cumsum(transitions, axis=1)  # [C, A]
    cumulative[:, -1] = 1.0  # uniforms are < 1, so the last symbol catches rounding
    tables = cumulative.tolist()
    context = int(rng.choice(num_contexts, p=stationary))
    symbols = bytearray(length)
    for position, uniform in enumerate(rng.random(length).tolist()):
        symbol = bisect.bisect_right(tables[context], uniform)
        symbols[position] = symbol
        context = (context * alphabet_size + symbol) % num_contexts
    to_letters = bytes.maketrans(bytes(range(alphabet_size)), MARKOV_ALPHABET[:alphabet_size].encode("ascii"))
    text = bytes(symbols).translate(to_letters).decode("ascii")

    description = (f"order-{order} Markov source over {alphabet_size} symbols "
                   f"'{MARKOV_ALPHABET[:alphabet_size]}', Dirichlet concentration {concentration}, seed {seed}: "
                   f"entropy rate {entropy:.6f} bits/char")
    return SyntheticCorpus(text=text, entropy_bits_per_char=entropy, description=description)


def recall_source(lag: int, num_keys: int, filler_size: int, length: int, seed: int,
                  cue: bool = False) -> SyntheticCorpus:
    """Records `KEY + lag filler characters + KEY + newline`: the second key must be recalled across `lag`.

    Keys are uniform over the first `num_keys` uppercase letters, filler uniform over the first
    `filler_size` lowercase letters, all independent. Given the past, the recalled key and the newline
    carry no information, so the exact entropy rate per character is
    (log2 num_keys + lag * log2 filler_size) / (lag + 3). A model that cannot carry the key across the
    filler must guess it uniformly and pays log2 num_keys more per record: `no_recall_bits_per_char`.

    Both floors assume the model knows where the second key falls. Without a cue that takes counting
    `lag` filler characters, itself a dependency as long as the recall. `cue=True` writes `=` between the
    filler and the second key (`KEY + filler + = + KEY + newline`, lag + 4 characters): the cue is as
    certain as the newline, so it adds no information and the floors are the same sums over lag + 4, but
    a model that has not learned to count pays for the cue's position alone and still knows, once the cue
    is read, that the key comes next.

    Args:
        lag: filler characters between the key and its repeat (the dependency spans lag + 1 characters,
            lag + 2 with the cue).
        num_keys: 2 to 26 keys ("A", "B", ...).
        filler_size: 1 to 26 filler characters ("a", "b", ...).
        length: characters wanted; the text holds whole records only, so it is cut down to a multiple
            of the record's length, lag + 3 (lag + 4 with the cue), and needs at least one record.
        seed: seeds the text.
        cue: write `RECALL_CUE` before each recalled key.

    Example:
        >>> corpus = recall_source(lag=20, num_keys=8, filler_size=4, length=23_000, seed=0)
        >>> corpus.text[:23]
        'GcaadbdabcabbaaddcdbdG\\n'
        >>> round(corpus.entropy_bits_per_char, 6), corpus.no_recall_bits_per_char
        (1.869565, 2.0)
        >>> recall_source(lag=20, num_keys=8, filler_size=4, length=24_000, seed=0, cue=True).text[:24]
        'Gcaadbdabcabbaaddcdbd=G\\n'
    """
    if lag < 1:
        raise ChargenError(f"lag must be at least 1. Received: lag={lag}")
    if not 2 <= num_keys <= len(RECALL_KEYS):
        raise ChargenError(f"num_keys must be between 2 and {len(RECALL_KEYS)}. Received: num_keys={num_keys}")
    if not 1 <= filler_size <= len(RECALL_FILLER):
        raise ChargenError(f"filler_size must be between 1 and {len(RECALL_FILLER)}. "
                           f"Received: filler_size={filler_size}")
    _check_length(length)
    record_length = lag + 3 + cue
    num_records = length // record_length
    if num_records == 0:
        raise ChargenError(f"length must hold at least one record of lag + {3 + cue} = {record_length} "
                           f"characters. Received: length={length}")
    rng = np.random.default_rng(seed)
    key_codes = np.frombuffer(RECALL_KEYS[:num_keys].encode("ascii"), dtype=np.uint8)
    filler_codes = np.frombuffer(RECALL_FILLER[:filler_size].encode("ascii"), dtype=np.uint8)
    keys = key_codes[rng.integers(num_keys, size=num_records)]  # [R]
    records = np.empty((num_records, record_length), dtype=np.uint8)  # [R, record_length]
    records[:, 0] = keys
    records[:, 1:lag + 1] = filler_codes[rng.integers(filler_size, size=(num_records, lag))]
    if cue:
        records[:, lag + 1] = ord(RECALL_CUE)
    records[:, -2] = keys
    records[:, -1] = ord(RECALL_TERMINATOR)
    text = records.tobytes().decode("ascii")

    entropy = (np.log2(num_keys) + lag * np.log2(filler_size)) / record_length
    no_recall = entropy + np.log2(num_keys) / record_length
    description = (f"recall source: {num_keys} keys, {lag} filler characters from {filler_size}"
                   f"{', a cue before the recall' if cue else ''}, seed {seed}: "
                   f"entropy rate {entropy:.6f} bits/char, {no_recall:.6f} without recalling the key")
    return SyntheticCorpus(text=text, entropy_bits_per_char=float(entropy), description=description,
                           no_recall_bits_per_char=float(no_recall))


def _check_length(length: int) -> None:
    if length < 1:
        raise ChargenError(f"length must be at least 1 character. Received: length={length}")

