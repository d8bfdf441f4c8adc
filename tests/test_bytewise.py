"""The encoding from bytes (`bytewise.py`) against the codec's text, on awkward bytes cut at every place."""

from __future__ import annotations

import numpy as np
import pytest

from chargen import bytewise, encoded
from chargen.corpus import read_corpus
from chargen.errors import ChargenError
from chargen.vocab import Vocabulary

# Characters at the edges of each UTF-8 length, a BOM, NUL, the last code point, and ordinary text.
EDGES = ["\x00", "\x7f", "\x80", "\u07ff", "\u0800", "\ufeff", "\uffff", "\U00010000", "\U0010ffff",
         "é", "€", "日本", "😀", "a", "\n"]
INVALID = [b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80",
           b"\xf5", b"\xff", b"\x80", b"\xbf\xbf", b"\xe2\x82", b"\xe2\x82A", b"\xf0\x9f\x98"]
PIECE_SIZES = [1, 2, 3, 4, 7, 64]


def codec_road(paths, encoding="utf-8", errors="strict") -> tuple[Vocabulary, np.ndarray] | str:
    """The reference: the corpus decoded by the incremental codec (`Corpus.chunks`), then encoded whole;
    or the one-line error it stops with."""
    try:
        text = "".join(piece for _, piece in read_corpus(paths, encoding, errors).chunks())
    except ChargenError as error:
        return str(error)
    vocab = Vocabulary(sorted(set(text)))
    return vocab, np.array([vocab.chars.index(char) for char in text], dtype=np.int64)


def byte_road(paths, encoding="utf-8", errors="strict") -> tuple[Vocabulary, np.ndarray] | str:
    """Both passes of `encoded.encode` from bytes, without the cache's writes."""
    text_corpus = read_corpus(paths, encoding, errors)
    codec = bytewise.fast_codec(text_corpus)
    assert codec is not None
    try:
        chars, _ = encoded._vocabulary_pass(bytewise.pieces(text_corpus, codec), len(text_corpus.inputs))
        vocab = Vocabulary(chars)
        ids_of = bytewise.PieceIds(vocab, encoded.id_dtype(len(vocab)))
        ids = np.concatenate([ids_of(piece) for _, piece in bytewise.pieces(text_corpus, codec)])
    except ChargenError as error:
        return str(error)
    return vocab, ids.astype(np.int64)


def cached_road(paths, cache, encoding="utf-8", errors="strict") -> tuple[Vocabulary, np.ndarray] | str:
    """`encoded.encode` itself, whichever road it takes."""
    try:
        prepared = encoded.encode(read_corpus(paths, encoding, errors), cache)
    except ChargenError as error:
        return str(error)
    return prepared.vocab, np.asarray(prepared.ids, dtype=np.int64)


def assert_same(expected, found, context):
    if isinstance(expected, str):
        assert found == expected, context
        return
    assert not isinstance(found, str), (context, found)
    assert found[0] == expected[0], context
    np.testing.assert_array_equal(found[1], expected[1], err_msg=str(context))


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def numpy_for_every_piece(monkeypatch):
    """numpy decodes every valid piece, however dense in multi-byte characters (in use the codec takes the
    dense ones, as tests/test_big_corpus.py runs it)."""
    monkeypatch.setattr(bytewise, "DENSE_FRACTION", 0)


def awkward_bytes(rng: np.random.Generator, count: int, invalid: bool) -> bytes:
    fragments = [char.encode() for char in EDGES] + (INVALID if invalid else [])
    return b"".join(fragments[index] for index in rng.integers(0, len(fragments), count))


@pytest.mark.parametrize("size", PIECE_SIZES)
def test_valid_utf8_cut_anywhere_gives_the_codecs_ids(tmp_path, cache, monkeypatch, size):
    monkeypatch.setattr(bytewise, "PIECE_BYTES", size)
    rng = np.random.default_rng(size)
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(awkward_bytes(rng, 300, invalid=False))
    second.write_bytes(b"plain ascii " * 20 + "ü".encode())
    for paths in ([first], [first, second], [second, first]):
        assert_same(codec_road(paths), byte_road(paths), (size, paths))


@pytest.mark.parametrize("size", [1, 4, 64])
@pytest.mark.parametrize("errors", ["strict", "replace", "ignore"])
def test_invalid_utf8_gives_the_codecs_text_or_its_error_at_the_same_offset(tmp_path, monkeypatch, size, errors):
    monkeypatch.setattr(bytewise, "PIECE_BYTES", size)
    file = tmp_path / "bad.txt"
    for seed in range(6):
        file.write_bytes(awkward_bytes(np.random.default_rng(seed), 60, invalid=True))
        assert_same(codec_road(file, errors=errors), byte_road(file, errors=errors),
                    (size, errors, seed, file.read_bytes()))


@pytest.mark.parametrize("bad", INVALID)
def test_each_invalid_sequence_is_refused_where_the_codec_refuses_it(tmp_path, monkeypatch, bad):
    monkeypatch.setattr(bytewise, "PIECE_BYTES", 4)
    file = tmp_path / "one.txt"
    file.write_bytes("日本 ok ".encode() + bad + b" tail")
    expected = codec_road(file)
    assert isinstance(expected, str) and "at byte offset" in expected
    assert byte_road(file) == expected


@pytest.mark.parametrize("encoding", ["latin-1", "ascii", "cp1252", "utf-16"])
def test_other_encodings_give_the_codecs_ids(tmp_path, cache, monkeypatch, encoding):
    monkeypatch.setattr(bytewise, "PIECE_BYTES", 3)
    file = tmp_path / "text.txt"
    text = "plain text, façade \u20ac\n" if encoding in ("cp1252", "utf-16") else "plain text\n"
    file.write_bytes(text.encode(encoding) + (bytes(range(256)) if encoding == "latin-1" else b""))
    for errors in ("strict", "replace"):
        assert_same(codec_road(file, encoding, errors), cached_road(file, cache / errors, encoding, errors),
                    (encoding, errors))
    if encoding == "ascii":
        file.write_bytes(b"abc\xe9def")
        assert byte_road(file, "ascii") == codec_road(file, "ascii")


def test_a_vocabulary_beyond_256_characters_takes_two_bytes_an_id(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(bytewise, "PIECE_BYTES", 7)
    file = tmp_path / "wide.txt"
    alphabet = [chr(0x400 + i) for i in range(300)] + list("abc \n")
    file.write_text("".join(np.random.default_rng(0).choice(alphabet, 3_000)) + "".join(alphabet), "utf-8")
    assert encoded.encode(read_corpus(file), cache).ids.dtype == np.uint16
    assert_same(codec_road(file), cached_road(file, cache), "wide")


def test_characters_split_across_pieces_and_counted_per_source(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(bytewise, "PIECE_BYTES", 2)
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("€😀€", "utf-8")  # 3 + 4 + 3 bytes: no read of 2 bytes ends on a character
    second.write_text("x€", "utf-8")
    prepared = encoded.encode(read_corpus([first, second]), cache)
    assert prepared.sources == ((str(first), 3), (str(second), 2))
    assert prepared.text == "€😀€\n\nx€"
