"""The encoded cache: a corpus's character ids on disk, read through a memory map, so any size trains.

Encoding streams the corpus in chunks of a few megabytes, twice: once to find its vocabulary, once to
write its ids, one byte a character when the vocabulary has at most 256 characters (two, or four,
otherwise). Nothing but a chunk is ever held, and training reads its windows from the map: the pages
of a mapped file belong to the operating system's page cache, not to the process.

An entry is found by its key, the sha256 of everything that decides the text: the sha256 of the bytes
read, how many bytes each source holds (the separators fall between sources), whether each is a file
or a built-in text, the encoding, the error policy, and this format's version. A corpus that changes
in any byte gets another key, so it never meets a stale entry; the same files read the same way find
theirs, and a second run only hashes the files (about 1 GB/s) and maps the ids.

Each entry is two files in the cache folder: KEY.ids (the ids, raw) and KEY.json (format version,
vocabulary, dtype, number of characters, characters of each source, sha256, bytes). Both are written
through `atomic.py`, the JSON last: an entry whose JSON is missing or does not match its ids (a killed
encoding, a damaged file) is never used, and the next encoding replaces it. The folder may be deleted
at any time; entries are made again when needed.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chargen import bytewise
from chargen.atomic import atomic_file, atomic_write_text
from chargen.corpus import Corpus
from chargen.errors import ChargenError
from chargen.vocab import Vocabulary

FORMAT_VERSION = 1
CACHE_VARIABLE = "CHARGEN_CACHE_DIR"  # overrides the cache folder (the tests point it at a temporary one)
_REMAP_CHUNK = 1 << 24  # ids translated at a time into another vocabulary's


def cache_folder() -> Path:
    """$CHARGEN_CACHE_DIR if set, else $XDG_CACHE_HOME/chargen/encoded, else ~/.cache/chargen/encoded."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chargen" / "encoded"


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer that holds every id of a vocabulary of this size."""
    return np.dtype(np.uint8 if vocab_size <= 1 << 8 else np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass(frozen=True, eq=False)
class EncodedCorpus:
    """A corpus as ids in a memory-mapped file, with what a run records about it.

    Its attributes `sources`, `sha256` and `num_bytes` mean what `Corpus`'s do.
    """

    ids: np.ndarray  # memory map, id_dtype(len(vocab))[num_chars]
    vocab: Vocabulary  # the corpus's own: the characters it holds, in code-point order
    sources: tuple[tuple[str, int], ...]  # (path or builtin:NAME, characters)
    sha256: str
    num_bytes: int
    path: Path  # the ids file
    reused: bool  # True: found in the cache; False: encoded by this call

    @property
    def num_chars(self) -> int:
        return len(self.ids)

    @property
    def text(self) -> str:
        """The text, decoded from the ids (whole: for corpora that fit in memory)."""
        return self.vocab.decode(self.ids)

    def ids_for(self, vocab: Vocabulary, drop_missing: bool = False) -> np.ndarray:
        """The ids of this text in another vocabulary (a saved model's), memory-mapped like `ids`.

        The translated ids are an entry of the cache too. A character that `vocab` lacks is a
        `ChargenError`, or with `drop_missing` is left out of the text.
        """
        if vocab == self.vocab:
            return self.ids
        missing = "".join(sorted(set(self.vocab.chars) - set(vocab.chars)))
        if missing and not drop_missing:
            raise ChargenError(f"{len(missing)} distinct character(s) are not in the model's vocabulary: "
                               f"{missing[:20]!r}; remove them from the text or train on text that has them")
        new_ids = {char: index for index, char in enumerate(vocab.chars)}
        table = np.array([new_ids.get(char, -1) for char in self.vocab.chars], dtype=np.int64)  # -1: missing
        key = _digest({"ids": self.path.stem, "vocab": vocab.chars, "drop": bool(missing)})

        def translated() -> Iterator[np.ndarray]:
            for start in range(0, len(self.ids), _REMAP_CHUNK):
                ids = table[self.ids[start:start + _REMAP_CHUNK]]
                yield ids[ids >= 0]

        folder = self.path.parent
        entry = _open_entry(folder, key)
        if entry is None:
            sources = [count for _, count in self.sources] if not missing else None
            entry = _write_entry(folder, key, vocab, translated(), sources, self.sha256, self.num_bytes)
        return entry[0]


def encode(text_corpus: Corpus | EncodedCorpus, folder: Path | None = None) -> EncodedCorpus:
    """The corpus's ids from the cache, encoding them first if the cache lacks them (an `EncodedCorpus`
    is returned as it is).

    Args:
        text_corpus: what to read (`corpus.resolve_corpus`).
        folder: the cache folder (default `cache_folder()`).
    """
    if isinstance(text_corpus, EncodedCorpus):
        return text_corpus
    folder = Path(folder) if folder is not None else cache_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ChargenError(f"cannot create the encoded-corpus cache folder {folder} ({error.strerror}); "
                           f"set {CACHE_VARIABLE} to a writable folder") from None
    fingerprint = text_corpus.fingerprint
    key = cache_key(text_corpus)
    entry, reused = _open_entry(folder, key), True
    if entry is None:
        entry, reused = _encode_into(folder, key, text_corpus), False
    ids, vocab, record = entry
    names = [source.name for source in text_corpus.inputs]
    return EncodedCorpus(ids=ids, vocab=vocab, sources=tuple(zip(names, record["source_chars"], strict=True)),
                         sha256=fingerprint.sha256, num_bytes=sum(fingerprint.sizes), path=folder / f"{key}.ids",
                         reused=reused)


def cache_key(text_corpus: Corpus) -> str:
    """The name of the corpus's entry: a digest of what decides its text (one pass over its bytes)."""
    fingerprint = text_corpus.fingerprint
    return _digest({
        "format": FORMAT_VERSION,
        "sha256": fingerprint.sha256,
        "sources": [["file" if source.path else "builtin", size]
                    for source, size in zip(text_corpus.inputs, fingerprint.sizes, strict=True)],
        "encoding": _codec_name(text_corpus.encoding),
        "errors": text_corpus.errors,
    })


def _encode_into(folder: Path, key: str, text_corpus: Corpus) -> tuple[np.ndarray, Vocabulary, dict]:
    """The vocabulary pass, then the ids pass, hashing the bytes again to be sure they did not change."""
    codec = bytewise.fast_codec(text_corpus)

    def read(digest=None) -> Iterator[tuple[int | None, bytewise.Piece]]:
        if codec is not None:  # from bytes, decoding only what numpy cannot
            yield from bytewise.pieces(text_corpus, codec, digest)
        else:
            for index, text in text_corpus.chunks(digest):
                yield index, bytewise.Piece(len(text), text=text)

    chars, source_chars = _vocabulary_pass(read(), len(text_corpus.inputs))
    if not "".join(chars).strip():
        text_corpus.refuse_blank()
    vocab = Vocabulary(chars)
    ids_of = bytewise.PieceIds(vocab, id_dtype(len(vocab)))
    digest = hashlib.sha256()
    changed = ChargenError(f"the corpus changed while it was being encoded ({text_corpus.inputs[0].name}, ...); "
                           "run the command again once its files stay as they are")

    def pieces() -> Iterator[np.ndarray]:
        try:  # the first pass read every character and byte without a fault: a fault now is a change
            for _, piece in read(digest):
                yield ids_of(piece)
        except ChargenError:
            raise changed from None

    def check_unchanged() -> None:
        if digest.hexdigest() != text_corpus.sha256:
            raise changed

    return _write_entry(folder, key, vocab, pieces(), source_chars, text_corpus.sha256, text_corpus.num_bytes,
                        before_publishing=check_unchanged)


def _vocabulary_pass(pieces: Iterable[tuple[int | None, bytewise.Piece]], num_sources: int
                     ) -> tuple[list[str], list[int]]:
    """The distinct characters of the pieces, in code-point order, and how many each source holds."""
    present = np.zeros(0x110000, bool)  # one flag per code point
    source_chars = [0] * num_sources
    for index, piece in pieces:
        if index is not None:
            source_chars[index] += piece.num_chars
        bytewise.mark_characters(piece, present)
    return [chr(point) for point in np.flatnonzero(present)], source_chars


def _write_entry(folder: Path, key: str, vocab: Vocabulary, pieces: Iterable[np.ndarray], source_chars,
                 sha256: str, num_bytes: int, before_publishing=None) -> tuple[np.ndarray, Vocabulary, dict]:
    """Write KEY.ids from `pieces` (ids of `vocab`, in order), then KEY.json; return the mapped entry."""
    dtype = id_dtype(len(vocab))
    num_chars = 0
    try:
        with atomic_file(folder / f"{key}.ids", binary=True) as file:
            for ids in pieces:
                ids = np.ascontiguousarray(ids, dtype=dtype)
                file.write(ids.data)
                num_chars += len(ids)
            if before_publishing is not None:
                before_publishing()
        record = {"format": FORMAT_VERSION, "key": key, "chars": vocab.chars, "dtype": dtype.name,
                  "num_chars": num_chars, "source_chars": source_chars, "sha256": sha256, "bytes": num_bytes}
        atomic_write_text(folder / f"{key}.json", json.dumps(record, ensure_ascii=False))
    except OSError as error:
        raise ChargenError(f"cannot write the encoded corpus into {folder} ({error.strerror}); free some space "
                           f"or set {CACHE_VARIABLE} to another folder") from None
    entry = _open_entry(folder, key)
    if entry is None:
        raise ChargenError(f"the encoded corpus just written into {folder} cannot be read back; "
                           f"delete {folder / key}.* and try again")
    return entry


def _open_entry(folder: Path, key: str) -> tuple[np.ndarray, Vocabulary, dict] | None:
    """(ids memory map, vocabulary, record) of a complete entry, or None if there is none (or a broken one)."""
    try:
        record = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        if record.get("format") != FORMAT_VERSION or record.get("key") != key:
            return None
        vocab = Vocabulary(record["chars"])
        dtype = np.dtype(record["dtype"])
        ids_path = folder / f"{key}.ids"
        if dtype != id_dtype(len(vocab)) or ids_path.stat().st_size != record["num_chars"] * dtype.itemsize:
            return None
        ids = np.memmap(ids_path, dtype=dtype, mode="r", shape=(record["num_chars"],))
    except (OSError, ValueError, KeyError, TypeError, ChargenError):
        return None
    return ids, vocab, record


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _codec_name(encoding: str) -> str:
    """One name per codec ("UTF8" and "utf-8" are the same text)."""
    return codecs.lookup(encoding).name
