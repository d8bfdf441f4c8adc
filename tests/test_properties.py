"""Properties over generated inputs (Hypothesis): round trips, readers and strategies that never break.

Derandomized with modest example counts, so the file gives the same verdict on every run and takes seconds.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargen.corpus import read_corpus
from chargen.errors import ChargenError
from chargen.sampling import SamplingContext, parse_options, registry
from chargen.vocab import Vocabulary

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text that stresses a vocabulary: combining marks, emoji and other astral characters, CR/LF mixes, NUL.
awkward_characters = st.sampled_from(["\u0301", "\u0308", "😀", "👍🏽", "\U0001F9D1", "\U00010348", "\r", "\n",
                                      "\r\n", "\x00", "\ufeff", "\u200d", "a", "é", "ß"])
unicode_text = st.lists(st.one_of(st.text(min_size=1, max_size=5), awkward_characters), min_size=1,
                        max_size=30).map("".join)


@SETTINGS
@given(unicode_text)
def test_encode_then_decode_gives_back_any_text(text):
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    assert ids.min() >= 0 and ids.max() < len(vocab)


@SETTINGS
@given(st.binary(max_size=200), st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252", "ascii", "utf-32"]),
       st.sampled_from(["strict", "replace", "ignore"]))
def test_reading_any_bytes_in_any_encoding_gives_text_or_one_chargen_error(tmp_path_factory, data, encoding, errors):
    path = tmp_path_factory.mktemp("bytes") / "corpus.txt"
    path.write_bytes(data)
    try:
        text = read_corpus(path, encoding=encoding, errors=errors).text
    except ChargenError as error:
        assert "\n" not in str(error)
    else:
        assert text.strip()


TOKEN_STRATEGIES = ["greedy", "random", "top-k", "top-p", "min-p", "typical"]


@st.composite
def logits_batches(draw):
    """float32[batch, vocab] logits, finite or with -inf entries (at least one finite entry per row)."""
    batch, vocab_size = draw(st.integers(1, 5)), draw(st.integers(1, 12))
    finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)
    rows = draw(st.lists(st.lists(st.one_of(finite, st.just(-math.inf)), min_size=vocab_size, max_size=vocab_size),
                         min_size=batch, max_size=batch))
    logits = np.array(rows, np.float32)
    for row, column in enumerate(draw(st.lists(st.integers(0, vocab_size - 1), min_size=batch, max_size=batch))):
        if not np.isfinite(logits[row]).any():
            logits[row, column] = draw(finite)
    return logits


@SETTINGS
@given(name=st.sampled_from(TOKEN_STRATEGIES), logits=logits_batches(), seed=st.integers(0, 2**32 - 1))
def test_every_token_strategy_returns_valid_ids_for_any_logits(name, logits, seed):
    strategy = registry.load(name).create({})
    vocab = Vocabulary([chr(ord("a") + i) for i in range(logits.shape[1])])
    context = SamplingContext(step=0, ids=np.zeros((logits.shape[0], 1), np.int64),
                              rng=np.random.default_rng(seed), vocab=vocab)
    ids = strategy.sample(logits, context)
    assert ids.shape == (logits.shape[0],)
    assert np.isfinite(logits[np.arange(len(ids)), ids]).all(), "picked an impossible (-inf) character"


OPTION_STRATEGIES = {"top-k": ("k", int), "top-p": ("p", float), "min-p": ("p", float), "beam": ("width", int)}


@SETTINGS
@given(name=st.sampled_from(sorted(OPTION_STRATEGIES)), text=st.text(max_size=20))
def test_o_option_parsing_gives_the_declared_type_or_one_line(name, text):
    option, kind = OPTION_STRATEGIES[name]
    loaded = registry.load(name)
    try:
        parsed = parse_options(loaded.cls, [f"{option}={text}"])
    except ChargenError as error:
        assert "\n" not in str(error)
        return
    assert type(parsed[option]) is kind
    if kind is float:
        assert math.isfinite(parsed[option])
