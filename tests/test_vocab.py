"""Vocabulary: ids in code-point order, chunked encoding, errors that name unknown characters."""

import numpy as np
import pytest

from chargen import vocab as vocab_module
from chargen.errors import ChargenError
from chargen.vocab import Vocabulary


def test_ids_follow_code_point_order_and_round_trip():
    vocab = Vocabulary.from_text(["héllo", "wörld €"])
    assert vocab.chars == sorted(set("héllowörld €"))
    text = "€ wörld héllo"
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and vocab.decode(ids) == text
    assert [vocab.chars[i] for i in ids] == list(text)


def test_encoding_in_chunks_gives_the_same_ids(monkeypatch):
    text = "".join(np.random.default_rng(0).choice(list("abcdé€\n"), 1000))
    whole = Vocabulary.from_text(text).encode(text)
    monkeypatch.setattr(vocab_module, "_ENCODE_CHUNK", 7)  # many chunks, a ragged last one
    assert Vocabulary.from_text(text).chars == Vocabulary(sorted(set(text))).chars
    np.testing.assert_array_equal(Vocabulary.from_text(text).encode(text), whole)


def test_unknown_characters_are_named_and_counted():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(ChargenError, match=r"3 character\(s\) are not in the model's vocabulary: 'x€'"):
        vocab.encode("axb€x")


def test_json_round_trip_and_damaged_json():
    vocab = Vocabulary.from_text("chargen\n")
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    with pytest.raises(ChargenError, match="not valid chargen JSON"):
        Vocabulary.from_json("{not json")
