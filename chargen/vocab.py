"""Vocabulary: characters <-> integer ids, saved as JSON.

Pure Python and numpy, because sampling strategies (plugins) receive it and must not need TensorFlow.
Encoding is vectorised: text becomes an array of code points, the characters present are marked
in one scatter, and ids with one lookup in a table indexed by code point, so a 100 MB corpus
is read into ids in seconds. Text whose characters all lie below U+0100 (most corpora) takes a faster
road through bytes: its Latin-1 bytes are compared or translated by CPython's byte routines, with
no array of code points at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np

from chargen.errors import ChargenError

_ENCODE_CHUNK = 1 << 22  # characters encoded at a time
_UNKNOWN_BYTE = 255  # in a byte translation table: a character outside a vocabulary of at most 255


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as uint32, without a Python loop per character."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def characters_of(text: str | Iterable[str]) -> list[str]:
    """The distinct characters of one text or several (any iterable, read once), in code-point order."""
    present = np.zeros(0x110000, bool)  # one flag per possible code point
    for piece in [text] if isinstance(text, str) else text:
        mark_characters(piece, present)
    return [chr(point) for point in np.flatnonzero(present)]


def mark_characters(text: str, present: np.ndarray) -> None:
    """Set the flags of the characters of `text` in `present` (bool[0x110000], one per code point)."""
    for start in range(0, len(text), _ENCODE_CHUNK):
        piece = text[start:start + _ENCODE_CHUNK]
        try:  # below U+0100: delete the bytes already seen; usually nothing is left
            unseen = piece.encode("latin-1").translate(None, bytes(np.flatnonzero(present[:256]).tolist()))
        except UnicodeEncodeError:
            present[code_points(piece)] = True
        else:
            present[np.frombuffer(unseen, np.uint8)] = True


class Vocabulary:
    """The characters a model knows, in a fixed order; id i is `chars[i]`.

    Args:
        chars: the distinct characters, sorted by code point (built by `from_text`).

    Example:
        >>> vocab = Vocabulary.from_text("hello")
        >>> vocab.decode(vocab.encode("hell"))
        'hell'
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars:
            raise ChargenError("the vocabulary is empty: the corpus has no characters")
        for index, char in enumerate(chars):
            if not isinstance(char, str) or len(char) != 1 or 0xD800 <= ord(char) <= 0xDFFF:
                raise ChargenError(f"a vocabulary needs single characters (no lone surrogates), and entry {index} "
                                   f"of chars is {char!r}")
        if len(set(chars)) != len(chars):
            repeated = sorted({char for char in chars if chars.count(char) > 1})[:10]
            raise ChargenError(f"a vocabulary needs distinct characters, and chars repeats {''.join(repeated)!r}")
        self.chars = sorted(chars)
        points = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._ids_by_point = np.full(0x110000, -1, dtype=np.int32)  # every code point -> id, -1 if absent
        self._ids_by_point[points] = np.arange(len(points), dtype=np.int32)
        self._char_points = points.astype("<u4")  # id -> code point, for decoding through UTF-32
        # Latin-1 byte -> id, for vocabularies small enough to keep one byte value free to mean "unknown".
        self._ids_by_byte = bytes(
            _UNKNOWN_BYTE if i < 0 else i for i in self._ids_by_point[:256].tolist()
        ) if len(self.chars) <= _UNKNOWN_BYTE else None

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> Vocabulary:
        """The vocabulary of one text, or of several texts together (any iterable, read once, e.g. a stream)."""
        return cls(characters_of(text))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} characters)"

    def encode(self, text: str, dtype: np.dtype | type = np.int32) -> np.ndarray:
        """Ids of `text` as `dtype` (int32 unless asked; uint8 needs at most 256 characters); a character
        outside the vocabulary is a `ChargenError` naming it.

        Works through the text in chunks, so beyond the result it needs only a few tens of megabytes,
        however long the text.
        """
        ids = np.empty(len(text), dtype=dtype)
        for start in range(0, len(text), _ENCODE_CHUNK):
            piece = text[start:start + _ENCODE_CHUNK]
            piece_ids = self._piece_ids(piece)
            if piece_ids is None:
                self._refuse_unknown(text)
            ids[start:start + len(piece)] = piece_ids
        return ids

    def _piece_ids(self, piece: str) -> np.ndarray | None:
        """Ids of a piece of text (uint8 or int32), or None when a character is outside the vocabulary."""
        if self._ids_by_byte is not None:
            try:
                translated = piece.encode("latin-1").translate(self._ids_by_byte)
            except UnicodeEncodeError:
                pass  # a character above U+00FF: the general road below
            else:
                return np.frombuffer(translated, np.uint8) if _UNKNOWN_BYTE not in translated else None
        ids = self._ids_by_point[code_points(piece)]
        return ids if ids.min(initial=0) >= 0 else None

    def _refuse_unknown(self, text: str) -> None:
        count, missing = 0, set()
        for start in range(0, len(text), _ENCODE_CHUNK):
            piece = text[start:start + _ENCODE_CHUNK]
            unknown = np.flatnonzero(self._ids_by_point[code_points(piece)] < 0)
            count += len(unknown)
            missing.update(piece[i] for i in unknown[:100_000])  # enough to name them
        shown = "".join(sorted(missing)[:20])
        raise ChargenError(
            f"{count} character(s) are not in the model's vocabulary: {shown!r}; "
            "remove them from the text or train on text that has them"
        )

    def id_table(self) -> np.ndarray:
        """int32[0x110000]: the id of each code point, -1 for a character outside the vocabulary (read only)."""
        table = self._ids_by_point.view()
        table.flags.writeable = False
        return table

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of a sequence of ids."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return self._char_points[ids].tobytes().decode("utf-32-le")

    def to_json(self) -> str:
        return json.dumps({"chars": self.chars}, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> Vocabulary:
        try:
            chars = json.loads(data)["chars"]
        except (ValueError, KeyError, TypeError) as error:
            raise ChargenError(f"the vocabulary file is not valid chargen JSON ({error})") from None
        if not isinstance(chars, list):
            raise ChargenError(f"the vocabulary file's chars is a JSON {type(chars).__name__}, not a list of "
                               "characters")
        vocab = cls(chars)
        if vocab.chars != chars:  # ids are positions in the file's list: another order would change them
            raise ChargenError("the vocabulary file's chars are not in code-point order, the order chargen saves "
                               "them in")
        return vocab
