"""Vocabulary: characters <-> integer ids, saved as JSON.

Pure Python and numpy, because sampling strategies (plugins) receive it and must not need TensorFlow.
Encoding is vectorised: text becomes an array of code points, the characters present are marked
in one scatter, and ids with one lookup in a table indexed by code point, so a 100 MB corpus
is read into ids in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np

from chargen.errors import ChargenError

_ENCODE_CHUNK = 1 << 22  # characters encoded at a time


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as uint32, without a Python loop per character."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


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
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ChargenError(f"a vocabulary needs distinct single characters. Received: chars={chars!r}")
        self.chars = sorted(chars)
        points = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._ids_by_point = np.full(0x110000, -1, dtype=np.int32)  # every code point -> id, -1 if absent
        self._ids_by_point[points] = np.arange(len(points), dtype=np.int32)
        self._char_array = np.array(self.chars)

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> Vocabulary:
        """The vocabulary of one text, or of several texts together."""
        texts = [text] if isinstance(text, str) else list(text)
        present = np.zeros(0x110000, bool)  # one flag per possible code point
        for text in texts:
            for start in range(0, len(text), _ENCODE_CHUNK):
                present[code_points(text[start:start + _ENCODE_CHUNK])] = True
        return cls([chr(p) for p in np.flatnonzero(present)])

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} characters)"

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text` as int32; a character outside the vocabulary is a `ChargenError` naming it.

        Works through the text in chunks, so beyond the result (4 bytes a character) it needs only
        a few tens of megabytes, however long the text.
        """
        ids = np.empty(len(text), dtype=np.int32)
        for start in range(0, len(text), _ENCODE_CHUNK):
            ids[start:start + _ENCODE_CHUNK] = self._ids_by_point[code_points(text[start:start + _ENCODE_CHUNK])]
        unknown = ids < 0
        if unknown.any():
            missing = sorted({text[i] for i in np.flatnonzero(unknown)[:100_000]})  # enough to name them
            shown = "".join(missing[:20])
            raise ChargenError(
                f"{int(unknown.sum())} character(s) are not in the model's vocabulary: {shown!r}; "
                "remove them from the text or train on text that has them"
            )
        return ids

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text of a sequence of ids."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return "".join(self._char_array[ids].tolist())

    def to_json(self) -> str:
        return json.dumps({"chars": self.chars}, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> Vocabulary:
        try:
            chars = json.loads(data)["chars"]
        except (ValueError, KeyError, TypeError) as error:
            raise ChargenError(f"the vocabulary file is not valid chargen JSON ({error})") from None
        return cls(chars)
