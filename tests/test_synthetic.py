"""Synthetic sources: their entropy floors are exact, and the texts are what the floors describe."""

import math

import numpy as np
import pytest

from chargen.errors import ChargenError
from chargen.synthetic import (
    MARKOV_ALPHABET,
    RECALL_CUE,
    RECALL_FILLER,
    RECALL_KEYS,
    markov_entropy_rate,
    markov_source,
    recall_source,
    stationary_distribution,
)


def binary_entropy(p):
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def empirical_conditional_entropy(text, order, alphabet):
    """Plug-in estimate of H(next | previous `order` symbols) from the text's counts alone."""
    lookup = np.zeros(128, dtype=np.int64)
    lookup[np.frombuffer(alphabet.encode("ascii"), np.uint8)] = np.arange(len(alphabet))
    symbols = lookup[np.frombuffer(text.encode("ascii"), np.uint8)]  # [N]
    size = len(alphabet)
    contexts = np.zeros(len(symbols) - order, dtype=np.int64)  # [N - order]
    for back in range(order):
        contexts = contexts * size + symbols[back:len(symbols) - order + back]
    joint = np.bincount(contexts * size + symbols[order:], minlength=size ** (order + 1)).reshape(-1, size)
    joint = joint[joint.sum(axis=1) > 0]
    conditional = joint / joint.sum(axis=1, keepdims=True)
    logs = np.log2(np.where(conditional > 0, conditional, 1.0))
    return float(-(joint * logs).sum() / joint.sum())


def test_order_one_binary_chain_computed_by_hand():
    # From a: stay 0.9, leave 0.1. From b: to a 0.4, stay 0.6. Balance: 0.1 pi_a = 0.4 pi_b -> (0.8, 0.2).
    transitions = np.array([[0.9, 0.1], [0.4, 0.6]])
    np.testing.assert_allclose(stationary_distribution(transitions), [0.8, 0.2], atol=1e-12)
    expected = 0.8 * binary_entropy(0.1) + 0.2 * binary_entropy(0.4)  # 0.569387 bits
    assert markov_entropy_rate(transitions) == pytest.approx(expected, abs=1e-12)


def test_order_two_chain_whose_rows_ignore_the_context_has_the_entropy_of_one_row():
    transitions = np.tile([0.7, 0.3], (4, 1))  # 4 contexts of 2 previous symbols
    np.testing.assert_allclose(stationary_distribution(transitions), [0.49, 0.21, 0.21, 0.09], atol=1e-12)
    assert markov_entropy_rate(transitions) == pytest.approx(binary_entropy(0.3), abs=1e-12)


def test_order_zero_source_is_independent_symbols():
    transitions = np.array([[0.5, 0.25, 0.25]])
    assert markov_entropy_rate(transitions) == pytest.approx(1.5, abs=1e-12)


@pytest.mark.parametrize("order, alphabet_size", [(1, 6), (2, 4)])
def test_markov_floor_matches_the_entropy_estimated_from_a_long_sample(order, alphabet_size):
    corpus = markov_source(order, alphabet_size, length=400_000, seed=7, concentration=0.5)
    estimate = empirical_conditional_entropy(corpus.text, order, MARKOV_ALPHABET[:alphabet_size])
    assert 0.3 < corpus.entropy_bits_per_char < math.log2(alphabet_size)
    assert estimate == pytest.approx(corpus.entropy_bits_per_char, abs=0.01)


def test_markov_text_uses_the_first_symbols_of_the_alphabet():
    corpus = markov_source(order=1, alphabet_size=5, length=5_000, seed=0, concentration=5.0)
    assert len(corpus.text) == 5_000
    assert set(corpus.text) == set("abcde")
    assert "order-1 Markov" in corpus.description and f"{corpus.entropy_bits_per_char:.6f}" in corpus.description


def test_markov_is_a_function_of_the_seed():
    first = markov_source(order=2, alphabet_size=8, length=2_000, seed=3)
    again = markov_source(order=2, alphabet_size=8, length=2_000, seed=3)
    other = markov_source(order=2, alphabet_size=8, length=2_000, seed=4)
    assert first == again
    assert other.text != first.text and other.entropy_bits_per_char != first.entropy_bits_per_char


def test_markov_refuses_bad_parameters():
    with pytest.raises(ChargenError, match="contexts, more than"):
        markov_source(order=4, alphabet_size=16, length=10, seed=0)
    with pytest.raises(ChargenError, match="Received: alphabet_size=37"):
        markov_source(order=1, alphabet_size=37, length=10, seed=0)
    with pytest.raises(ChargenError, match="Received: concentration=0"):
        markov_source(order=1, alphabet_size=4, length=10, seed=0, concentration=0)
    with pytest.raises(ChargenError, match="Received: length=0"):
        markov_source(order=1, alphabet_size=4, length=0, seed=0)


def test_recall_records_repeat_the_key_after_exactly_lag_filler_characters():
    lag, num_keys, filler_size = 9, 5, 3
    corpus = recall_source(lag, num_keys, filler_size, length=12_005, seed=1)
    assert len(corpus.text) == 12_000  # cut down to whole records of lag + 3
    records = corpus.text.split("\n")
    assert records[-1] == "" and len(records) == 12_000 // (lag + 3) + 1
    for record in records[:-1]:
        assert len(record) == lag + 2
        assert record[0] == record[-1] and record[0] in RECALL_KEYS[:num_keys]
        assert set(record[1:-1]) <= set(RECALL_FILLER[:filler_size])
    assert {record[0] for record in records[:-1]} == set(RECALL_KEYS[:num_keys])


def test_a_cued_record_puts_the_cue_between_the_filler_and_the_recalled_key():
    lag, num_keys, filler_size = 7, 3, 2
    corpus = recall_source(lag, num_keys, filler_size, length=11 * 50 + 10, seed=3, cue=True)
    assert len(corpus.text) == 11 * 50  # whole records of lag + 4
    for record in corpus.text.split("\n")[:-1]:
        key, filler, cue, recalled = record[0], record[1:lag + 1], record[lag + 1], record[lag + 2:]
        assert cue == RECALL_CUE and recalled == key and key in RECALL_KEYS[:num_keys]
        assert len(filler) == lag and set(filler) <= set(RECALL_FILLER[:filler_size])
    # The same draws as without the cue: only the cue is added.
    plain = recall_source(lag, num_keys, filler_size, length=10 * 50, seed=3)
    assert corpus.text.replace(RECALL_CUE, "") == plain.text


def test_recall_floor_by_hand():
    # Per record of 2 + 3 = 5 characters: a key from 4 (2 bits) and 2 filler characters from 2 (1 bit each).
    corpus = recall_source(lag=2, num_keys=4, filler_size=2, length=50, seed=0)
    assert corpus.entropy_bits_per_char == pytest.approx(4 / 5)
    assert corpus.no_recall_bits_per_char == pytest.approx(4 / 5 + 2 / 5)
    # The cue is as certain as the newline: the same 4 bits, now over 6 characters.
    cued = recall_source(lag=2, num_keys=4, filler_size=2, length=60, seed=0, cue=True)
    assert cued.entropy_bits_per_char == pytest.approx(4 / 6)
    assert cued.no_recall_bits_per_char == pytest.approx(4 / 6 + 2 / 6)


@pytest.mark.parametrize("cue", [False, True])
def test_recall_floor_matches_the_information_counted_in_a_sample(cue):
    lag, num_keys, filler_size = 6, 8, 4
    corpus = recall_source(lag, num_keys, filler_size, length=90_000, seed=2, cue=cue)
    record_length = lag + 3 + cue
    records = np.frombuffer(corpus.text.encode("ascii"), np.uint8).reshape(-1, record_length)  # [R, record_length]

    def entropy(column_values, size):
        frequencies = np.bincount(column_values.ravel(), minlength=256)[:256] / column_values.size
        frequencies = frequencies[frequencies > 0]
        assert len(frequencies) == size
        return float(-(frequencies * np.log2(frequencies)).sum())

    bits_per_record = entropy(records[:, 0], num_keys) + lag * entropy(records[:, 1:lag + 1], filler_size)
    assert bits_per_record / record_length == pytest.approx(corpus.entropy_bits_per_char, abs=0.01)
    # Everything after the filler is determined by the record's first key: no information of its own.
    assert np.all(records[:, -2] == records[:, 0]) and len(np.unique(records[:, lag + 1:-2])) == int(cue)


def test_recall_is_a_function_of_the_seed():
    assert recall_source(4, 3, 2, 700, seed=5) == recall_source(4, 3, 2, 700, seed=5)
    assert recall_source(4, 3, 2, 700, seed=5).text != recall_source(4, 3, 2, 700, seed=6).text


def test_recall_refuses_bad_parameters():
    with pytest.raises(ChargenError, match="at least one record of lag \\+ 3 = 13"):
        recall_source(lag=10, num_keys=4, filler_size=4, length=12, seed=0)
    with pytest.raises(ChargenError, match="at least one record of lag \\+ 4 = 14"):
        recall_source(lag=10, num_keys=4, filler_size=4, length=13, seed=0, cue=True)
    with pytest.raises(ChargenError, match="Received: num_keys=1"):
        recall_source(lag=10, num_keys=1, filler_size=4, length=100, seed=0)
    with pytest.raises(ChargenError, match="Received: lag=0"):
        recall_source(lag=0, num_keys=4, filler_size=4, length=100, seed=0)

