"""A corpus's characters and ids found from its bytes, for UTF-8, ASCII and Latin-1 files.

Decoding gigabytes into Python strings and back into code points runs at tens of megabytes a second.
For these three encodings the text can be read without strings: a byte below 0x80 is a character of
its own (in Latin-1, every byte is), so CPython's byte routines (`bytes.translate`, `isascii`) find
and map those at hundreds of megabytes a second, and the multi-byte UTF-8 characters are decoded in
numpy from their lead bytes alone. A piece of bytes that is not valid in its encoding goes to the
codec, which places an undecodable byte exactly and applies `--encoding-errors`, so the ids always
equal those of the codec's text (the tests hold this road to that on awkward text).

`pieces` cuts each source into pieces that end on a character boundary, read into one reused buffer:
a character whose bytes straddle two reads is held back whole, as an incremental decoder does.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from chargen import corpus as corpus_module
from chargen import vocab as vocab_module
from chargen.corpus import SEPARATOR, Corpus, Source
from chargen.vocab import Vocabulary

FAST_CODECS = ("utf-8", "ascii", "iso8859-1")  # codecs.lookup names of the encodings read from bytes
PIECE_BYTES = 1 << 18  # bytes read at a time: numpy's temporaries for a piece stay in the processor's cache
DENSE_FRACTION = 8  # numpy decodes a piece when under 1 byte in this many is 0x80 or above; the codec, when more
_HIGH = bytes(range(0x80, 0x100))
_CONTINUATIONS = bytes(range(0x80, 0xC0))
_NO_POSITIONS = np.zeros(0, np.int64)
_NO_POINTS = np.zeros(0, np.uint32)


class Piece(NamedTuple):
    """Part of a source's text: bytes whose multi-byte characters are decoded, or text from the codec.

    In bytes, the characters at `positions` (indices among the piece's characters) are the multi-byte
    ones, with code points `points`; every other character is one byte, its code point.
    """

    num_chars: int
    data: bytes | None = None  # a piece read from bytes; None for a decoded one
    positions: np.ndarray = _NO_POSITIONS  # int64[multi-byte characters]
    points: np.ndarray = _NO_POINTS  # uint32[multi-byte characters]
    text: str | None = None  # a piece the codec decoded


def fast_codec(text_corpus: Corpus) -> str | None:
    """The corpus's codec name when its files can be read from their bytes, else None."""
    name = codecs.lookup(text_corpus.encoding).name
    return name if name in FAST_CODECS else None


def pieces(text_corpus: Corpus, codec: str, digest=None) -> Iterator[tuple[int | None, Piece]]:
    """The corpus as (index of its source, piece), with (None, SEPARATOR) between sources: the text of
    `Corpus.chunks`, as bytes wherever they are valid. `digest` (a hashlib object) is fed the bytes read."""
    for index, source in enumerate(text_corpus.inputs):
        if index:
            yield None, Piece(len(SEPARATOR), text=SEPARATOR)
        encoding, errors = (codec, text_corpus.errors) if source.path else ("utf-8", "strict")
        for piece in _source_pieces(source, encoding, errors, digest):
            yield index, piece


def _source_pieces(source: Source, encoding: str, errors: str, digest) -> Iterator[Piece]:
    size = PIECE_BYTES
    buffer = bytearray(3 + size + 3)  # up to 3 bytes held back, a read, 3 spare: a character is read as a word
    view = memoryview(buffer)
    held, offset = 0, 0  # bytes carried over from the last read; the source offset of buffer[0]
    with corpus_module.open_source(source) as file:
        while True:
            count = corpus_module.read_into(file, source, view[held:held + size])
            if digest is not None:
                digest.update(view[held:held + count])
            end = held + count
            cut = end if count == 0 or encoding != "utf-8" else end - _unfinished(buffer, end)
            if cut:
                yield _piece(view, cut, encoding, errors, source, offset)
            if count == 0:
                return
            buffer[:end - cut] = buffer[cut:end]
            held, offset = end - cut, offset + cut


def _unfinished(buffer: bytearray, end: int) -> int:
    """How many bytes at the end of buffer[:end] begin a UTF-8 character that the next read may finish."""
    for back in range(1, min(3, end) + 1):
        byte = buffer[end - back]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:
            return back if back < (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4) else 0
    return 0


def _piece(view: memoryview, end: int, encoding: str, errors: str, source: Source, offset: int) -> Piece:
    data = bytes(view[:end])
    if encoding == "iso8859-1" or data.isascii():
        return Piece(end, data)
    padded = np.frombuffer(view, np.uint8)
    num_high = int(np.count_nonzero(padded[:end] >= 0x80))
    if encoding == "utf-8" and num_high * DENSE_FRACTION < end:  # the codec decodes text dense in them faster
        decoded = _multibyte(data, padded, num_high)
        if decoded is not None:
            return Piece(decoded[0], data, decoded[1], decoded[2])
    try:
        text = data.decode(encoding, errors)
    except UnicodeDecodeError as error:
        raise corpus_module.decoding_error(source, encoding, error, offset) from None
    return Piece(len(text), text=text)


def _multibyte(data: bytes, padded: np.ndarray, num_high: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(characters, positions, code points) of the multi-byte characters of `data`, or None when it is
    not valid UTF-8 (the codec then says where and why). `padded` holds `data` and 3 bytes more;
    `num_high` bytes of `data` are 0x80 or above.

    Each lead byte's character is decoded from the little-endian word of its 4 bytes, in uint32
    arithmetic. The bytes are valid when every lead byte starts a shortest-form character below
    U+110000 that is no surrogate, followed by its continuation bytes, and no other byte continues one.
    """
    end = len(data)
    leads = np.flatnonzero(padded[:end] >= 0xC0)  # [L]
    every_word = np.ndarray(shape=(end,), dtype="<u4", buffer=padded, strides=(1,))  # overlapping, unaligned
    # Indexing gathers few words quickly; take pays a fixed cost (an aligned copy) but gathers many faster.
    words = every_word[leads] if len(leads) * 64 < end else np.take(every_word, leads)  # lead byte lowest  [L]
    first = words & 0xFF
    length = (first >= 0xE0).view(np.uint8) + (first >= 0xF0).view(np.uint8) + np.uint8(2)  # bytes  [L]
    length = length.astype(np.uint32)
    unused = (4 - length) * 8  # bits of the word past the character
    continued = (((words & 0xC0C0C000) ^ 0x80808000) << unused) == 0
    points = ((first & (0x7F >> length)) << 18 | (words & 0x3F00) << 4 | (words & 0x3F0000) >> 10
              | (words & 0x3F000000) >> 24) >> (unused - unused // 4)  # 6 bits a byte past the character
    shortest = (points >> (length * 4 - 1 + (length == 4))) != 0  # at least 0x80, 0x800, 0x10000
    valid = continued & shortest & (first <= 0xF4) & (points <= 0x10FFFF) & ((points & 0x1FF800) != 0xD800)
    continuations = length - 1
    num_continuations = num_high - len(leads)
    if not valid.all() or int(continuations.sum()) != num_continuations or \
            (len(leads) and leads[-1] + length[-1] > end):
        return None
    positions = leads - (np.cumsum(continuations, dtype=np.int64) - continuations)  # characters before each
    return end - num_continuations, positions, points


def mark_characters(piece: Piece, present: np.ndarray) -> None:
    """Set the flags of the piece's characters in `present` (one per code point)."""
    if piece.text is not None:
        vocab_module.mark_characters(piece.text, present)
        return
    seen = bytes(np.flatnonzero(present[:256]).tolist())  # deleting them usually leaves nothing
    lead_bytes = _HIGH if len(piece.points) else b""  # in UTF-8, no character of their own
    present[np.frombuffer(piece.data.translate(None, seen + lead_bytes), np.uint8)] = True
    present[piece.points] = True


class PieceIds:
    """Ids of pieces in one vocabulary, as one dtype. A character of bytes outside the vocabulary gets -1
    (wrapped into the dtype), one of text is a `ChargenError`: only a corpus changed while it was read
    meets either."""

    def __init__(self, vocab: Vocabulary, dtype: np.dtype):
        self.vocab = vocab
        self.dtype = np.dtype(dtype)
        self.by_point = vocab.id_table()  # int32[0x110000]
        self.by_byte = self.by_point[:256].astype(self.dtype)  # [256]
        self.translation = self.by_byte.tobytes() if self.dtype == np.uint8 else None  # for bytes.translate

    def __call__(self, piece: Piece) -> np.ndarray:
        if piece.text is not None:
            return self.vocab.encode(piece.text, self.dtype)
        continuations = _CONTINUATIONS if len(piece.points) else b""  # left out: one byte a character
        if self.translation is not None:
            ids = np.frombuffer(piece.data.translate(self.translation, continuations), np.uint8)
        else:
            ids = self.by_byte[np.frombuffer(piece.data.translate(None, continuations), np.uint8)]
        if len(piece.points):
            ids = ids.copy() if not ids.flags.writeable else ids
            ids[piece.positions] = self.by_point[piece.points]
        return ids
