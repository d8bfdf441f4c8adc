"""Corpora: read text from files, folders or a built-in source; split it; cut it into training windows.

Reading needs only the standard library and numpy, so it stays fast; TensorFlow is imported inside
`training_dataset` alone. A corpus is read in chunks when asked for, never held whole unless asked
(`Corpus.text`): `encoded.py` streams it into ids on disk, read through a memory map, so the windows
below come from a corpus of any size.

Batches are a pure function of (seed, step): the data position of a run is its step number, so a resumed
run sees exactly the batches it would have seen without the interruption. `training_batch` computes a
step's batch in numpy; `training_dataset` serves those batches to TensorFlow, prefetched:

- Random windows (the default): the start of row b at step s is
  splitmix64(splitmix64(splitmix64(seed) ^ s) + b * golden) mod (number of starts), a counter-based hash
  in uint64 arithmetic. Windows are drawn with replacement, so an "epoch" (`steps_per_epoch`) is a
  character count, not a guarantee that each window is seen once.
- Stateful windows: the text is cut into `batch_size` contiguous streams of `windows_per_stream * seq_len`
  characters, and row b of step s holds window (s mod windows_per_stream) of stream b. Consecutive steps
  continue each row where it stopped, so the final state of a window can seed the next; one epoch
  predicts every character of the text once.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import functools
import hashlib
import io
import itertools
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from chargen.config import ENCODING_ERRORS
from chargen.errors import ChargenError

# Several files become one stream with this between them: a blank line, which reads as a paragraph
# break to the model and is ordinary text in nearly every corpus.
SEPARATOR = "\n\n"
BUILTIN_PREFIX = "builtin:"
READ_BYTES = 1 << 22  # bytes read from a file at a time

_GOLDEN = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB


class Fingerprint(NamedTuple):
    sha256: str  # of all the bytes read, in order
    sizes: tuple[int, ...]  # bytes of each source


@dataclass(frozen=True)
class Source:
    """One input of a corpus: a file, or a built-in text (`path` None)."""

    name: str  # the path as given or found, or builtin:NAME
    path: Path | None


@dataclass(frozen=True)
class Corpus:
    """What to read and how to decode it; the text itself is read when asked for, in chunks.

    A corpus may be far larger than memory: `chunks` streams its text, `fingerprint` its bytes, and
    `encoded.encode` turns it into ids on disk. `text` and `sources` read it whole, for small corpora.
    """

    inputs: tuple[Source, ...]  # in reading order
    encoding: str = "utf-8"  # of the files; a built-in text is always UTF-8
    errors: str = "strict"  # what to do with undecodable bytes: strict, replace or ignore
    skipped: tuple[tuple[str, str], ...] = ()  # (path, what it is) of folder entries that are not regular files

    @functools.cached_property
    def fingerprint(self) -> Fingerprint:
        """The sha256 and sizes of the bytes read (one pass over them, no decoding)."""
        digest, sizes = hashlib.sha256(), []
        for source in self.inputs:
            size = 0
            for data in self._byte_chunks(source):
                digest.update(data)
                size += len(data)
            sizes.append(size)
        return Fingerprint(digest.hexdigest(), tuple(sizes))

    @property
    def sha256(self) -> str:
        """Hex digest of the raw bytes read, in order (a built-in's UTF-8 text)."""
        return self.fingerprint.sha256

    @property
    def num_bytes(self) -> int:
        return sum(self.fingerprint.sizes)

    @functools.cached_property
    def text(self) -> str:
        """Every source's text, joined with SEPARATOR (read whole: for corpora that fit in memory)."""
        text = "".join(piece for _, piece in self.chunks())
        if not text or text.isspace():
            self.refuse_blank()
        return text

    @functools.cached_property
    def sources(self) -> tuple[tuple[str, int], ...]:
        """(path or builtin:NAME, characters) in reading order."""
        counts = [0] * len(self.inputs)
        for index, piece in self.chunks():
            if index is not None:
                counts[index] += len(piece)
        return tuple((source.name, count) for source, count in zip(self.inputs, counts))

    def chunks(self, digest=None) -> Iterator[tuple[int | None, str]]:
        """The text in pieces of at most a few million characters: (index of the source, piece), and
        (None, SEPARATOR) between two sources. `digest` (a hashlib object), if given, is fed the bytes read.

        Each file is decoded incrementally, so a character whose bytes straddle two reads decodes
        whole; an undecodable byte under errors="strict" is a `ChargenError` naming the file and offset.
        """
        for index, source in enumerate(self.inputs):
            if index:
                yield None, SEPARATOR
            encoding, errors = (self.encoding, self.errors) if source.path else ("utf-8", "strict")
            decoder = codecs.getincrementaldecoder(encoding)(errors)
            offset = 0  # bytes of this source passed to the decoder so far
            for data in itertools.chain(self._byte_chunks(source), [b""]):
                if digest is not None:
                    digest.update(data)
                pending = len(decoder.getstate()[0])  # bytes of an unfinished character, held back
                try:
                    piece = decoder.decode(data, final=not data)
                except UnicodeError as error:
                    raise decoding_error(source, encoding, error, offset - pending) from None
                offset += len(data)
                if piece:
                    yield index, piece

    def refuse_blank(self) -> None:
        names = ", ".join(source.name for source in self.inputs[:3]) + (", ..." if len(self.inputs) > 3 else "")
        raise ChargenError(f"the corpus is empty: {names} hold(s) no text besides whitespace; "
                           "pass files that contain text")

    @staticmethod
    def _byte_chunks(source: Source) -> Iterator[bytes]:
        with open_source(source) as file:
            while data := _read(file, source, READ_BYTES):
                yield data


@contextlib.contextmanager
def open_source(source: Source) -> Iterator[BinaryIO]:
    """A source's bytes as a binary file: a regular file opened for reading, or a built-in's UTF-8 text."""
    if source.path is None:
        yield io.BytesIO(BUILTIN_CORPORA[source.name[len(BUILTIN_PREFIX):]]().encode("utf-8"))
        return
    try:
        file = _open_regular_file(source)
    except OSError as error:
        raise ChargenError(f"cannot read {source.name}: {error.strerror}") from None
    with file:
        yield file


def read_into(file: BinaryIO, source: Source, view: memoryview) -> int:
    """Fill `view` from `file` as far as one read goes; the bytes read (0 at the end)."""
    try:
        return file.readinto(view) or 0
    except OSError as error:
        raise ChargenError(f"cannot read {source.name}: {error.strerror}") from None


def _read(file: BinaryIO, source: Source, size: int) -> bytes:
    try:
        return file.read(size)
    except OSError as error:
        raise ChargenError(f"cannot read {source.name}: {error.strerror}") from None


def decoding_error(source: Source, encoding: str, error: UnicodeError, offset: int) -> ChargenError:
    """What to tell the user when `source`'s bytes from `offset` on do not decode as `encoding`."""
    if isinstance(error, UnicodeDecodeError):
        return ChargenError(
            f"cannot decode {source.name} as {encoding}: byte 0x{error.object[error.start]:02x} at byte "
            f"offset {offset + error.start} ({error.reason}); pass --encoding, e.g. "
            "--encoding latin-1, or --encoding-errors replace"
        )
    return ChargenError(f"cannot decode {source.name} as {encoding} ({error}); pass the encoding "  # e.g. no BOM
                        "with its byte order, e.g. --encoding utf-16-le, or another --encoding")


def _open_regular_file(source: Source):
    """The file opened for reading, once it is known to be a regular file.

    Opening does not wait (a FIFO would block until a writer came), and the kind is checked on the open
    file itself: a path that became a pipe or a device since the corpus was listed is refused, not read.
    """
    descriptor = os.open(source.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        kind = _kind_of(os.fstat(descriptor).st_mode)
        if kind != "file":
            raise ChargenError(f"cannot read {source.name}: it is {kind}, not a regular file; "
                               "chargen reads text files only")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _python_docs_text() -> str:
    """The help topics of the Python reference manual that CPython ships (`pydoc_data.topics`)."""
    from pydoc_data.topics import topics

    return SEPARATOR.join(topics[name] for name in sorted(topics))


# Corpora that need no download: name -> a function that assembles the text when asked for.
BUILTIN_CORPORA: dict[str, Callable[[], str]] = {"python-docs": _python_docs_text}


def read_corpus(
    paths: str | os.PathLike | Sequence[str | os.PathLike], encoding: str = "utf-8", errors: str = "strict"
) -> Corpus:
    """Files and folders as one text; folders give their regular files recursively, sorted by path.

    Hidden files and folders (names starting with ".") inside a folder are skipped; a file named
    directly is always read. The paths and the encoding are checked now; the files are read when the
    corpus's text, fingerprint or chunks are asked for.

    Args:
        paths: one path or several, each a file or a folder.
        encoding: a Python codec name, e.g. "utf-8", "latin-1".
        errors: what to do with bytes the encoding cannot decode: "strict" (stop with an error that
            names the file and byte offset), "replace" (U+FFFD) or "ignore" (drop them).
    """
    return resolve_corpus([Path(path) for path in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)],
                          encoding, errors)


def builtin_corpus(name: str) -> Corpus:
    """One of `BUILTIN_CORPORA` by name, e.g. "python-docs"."""
    return Corpus((_builtin_source(name),))


def resolve_corpus(
    paths: str | os.PathLike | Sequence[str | os.PathLike], encoding: str = "utf-8", errors: str = "strict"
) -> Corpus:
    """The CLI's corpus arguments: paths and `builtin:NAME` entries, read in order as one text.

    Example:
        >>> corpus = resolve_corpus(["builtin:python-docs"])
        >>> corpus.sources[0][0], len(corpus.text) > 400_000
        ('builtin:python-docs', True)
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    _check_encoding(encoding, errors)
    sources, skipped = [], []
    for path in paths:
        if isinstance(path, str) and path.startswith(BUILTIN_PREFIX):
            sources.append(_builtin_source(path[len(BUILTIN_PREFIX):]))
        else:
            files, passed_over = _file_sources(Path(path))
            sources += files
            skipped += passed_over
    return Corpus(tuple(sources), encoding, errors, tuple(skipped))


def _check_encoding(encoding: str, errors: str) -> None:
    if errors not in ENCODING_ERRORS:
        raise ChargenError(f"unknown encoding-errors policy; use one of {', '.join(ENCODING_ERRORS)}. "
                           f"Received: errors={errors!r}")
    try:  # a text encoding decodes bytes to str; base64 and rot13 are codecs but not text encodings
        is_text_encoding = isinstance(codecs.lookup(encoding).decode(b"")[0], str)
    except (LookupError, TypeError):
        is_text_encoding = False
    if not is_text_encoding:
        raise ChargenError(f"unknown text encoding; pass a Python codec name such as utf-8, latin-1 or cp1252. "
                           f"Received: encoding={encoding!r}")


def _file_sources(path: Path) -> tuple[list[Source], list[tuple[str, str]]]:
    """The regular files a corpus path stands for, and the folder entries skipped as not regular files."""
    kind = _entry_kind(path)
    if kind == "missing":
        raise ChargenError(f"corpus path not found: {path}; check the path, or use "
                           f"{BUILTIN_PREFIX}python-docs for the built-in corpus")
    if kind == "file":
        return [Source(str(path), path)], []
    if kind != "folder":
        raise ChargenError(f"corpus path {path} is {kind}, not a regular file or a folder; "
                           "chargen reads text files: name files or folders of them")
    files, skipped = [], []
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            if not name.startswith("."):
                entry = Path(folder, name)
                kind = _entry_kind(entry)
                if kind == "file":
                    files.append(entry)
                elif kind != "missing":  # gone since it was listed: nothing to say
                    skipped.append((str(entry), kind))
    files.sort(key=lambda file: file.relative_to(path).parts)
    if not files:
        raise ChargenError(f"folder {path} has no files to read (hidden files and folders, pipes, devices and "
                           "sockets are skipped); put text files in it or name the files")
    return [Source(str(file), file) for file in files], sorted(skipped)


def _entry_kind(path: Path) -> str:
    """"file", "folder", "missing", or what else the path is, as a message names it ("a named pipe")."""
    try:
        return _kind_of(os.stat(path).st_mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symlink loop"
        if os.path.islink(path):
            return "a broken symlink"
        return "missing" if error.errno in (errno.ENOENT, errno.ENOTDIR) else f"unreadable ({error.strerror})"


def _kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _builtin_source(name: str) -> Source:
    if name not in BUILTIN_CORPORA:
        raise ChargenError(f"unknown built-in corpus; the built-in corpora are "
                           f"{', '.join(BUILTIN_PREFIX + known for known in sorted(BUILTIN_CORPORA))}. "
                           f"Received: name={name!r}")
    return Source(BUILTIN_PREFIX + name, None)


def split_ids(ids: np.ndarray, val_fraction: float, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Split encoded text into training ids and the contiguous tail for validation.

    The tail holds round(len(ids) * val_fraction) characters, raised or lowered where needed so that
    each side holds at least one window of seq_len + 1 characters. val_fraction 0 means no validation.

    Returns:
        (train_ids int32[N_train], val_ids int32[N_val]), views into `ids`.
    """
    if not 0 <= val_fraction < 1:
        raise ChargenError(f"the validation fraction must be at least 0 and below 1. "
                           f"Received: val_fraction={val_fraction}")
    _check_positive(seq_len=seq_len)
    window = seq_len + 1
    num_chars = len(ids)
    if val_fraction == 0:
        if num_chars < window:
            raise ChargenError(f"the corpus has {num_chars:,} characters; training windows of seq_len {seq_len} "
                               f"need at least {window:,}; use a longer corpus or a shorter --seq-len")
        return ids, ids[num_chars:]
    if num_chars < 2 * window:
        raise ChargenError(f"the corpus has {num_chars:,} characters; a training and a validation window of "
                           f"seq_len {seq_len} need at least {2 * window:,}; use a longer corpus, a shorter "
                           "--seq-len, or no validation (--val-fraction 0)")
    num_val = min(max(round(num_chars * val_fraction), window), num_chars - window)
    return ids[:num_chars - num_val], ids[num_chars - num_val:]


def steps_per_epoch(num_train_chars: int, seq_len: int, batch_size: int) -> int:
    """Steps whose windows hold as many predictions as the training text has characters (at least 1).

    For stateful training this is exactly the number of windows per stream.
    """
    _check_positive(seq_len=seq_len, batch_size=batch_size)
    return max(1, (num_train_chars - 1) // (seq_len * batch_size))


def training_batch(
    train_ids: np.ndarray, seq_len: int, batch_size: int, seed: int, step: int, stateful: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The batch of one training step, in numpy: the reference that `training_dataset` equals.

    Returns:
        (inputs int32[batch_size, seq_len], targets int32[batch_size, seq_len]), targets = inputs
        shifted one character ahead.
    """
    _check_training_text(len(train_ids), seq_len, batch_size, stateful)
    rows = np.arange(batch_size, dtype=np.uint64)  # [B]
    if stateful:
        windows_per_stream = steps_per_epoch(len(train_ids), seq_len, batch_size)
        starts = (rows.astype(np.int64) * windows_per_stream + step % windows_per_stream) * seq_len  # [B]
    else:
        step_key = _splitmix64_numpy(_splitmix64_numpy(np.uint64(seed % 2**64)) ^ np.uint64(step))
        hashes = _splitmix64_numpy(step_key + rows * np.uint64(_GOLDEN))  # [B]
        starts = (hashes % np.uint64(len(train_ids) - seq_len)).astype(np.int64)  # [B]
    windows = np.asarray(train_ids)[starts[:, None] + np.arange(seq_len + 1)]  # [B, seq_len + 1]
    windows = windows.astype(np.int32)
    return windows[:, :-1], windows[:, 1:]


def training_dataset(
    train_ids: np.ndarray, seq_len: int, batch_size: int, seed: int, start_step: int = 0, stateful: bool = False
):
    """An endless `tf.data.Dataset` of training batches from step `start_step` on.

    Element i is `training_batch(..., step=start_step + i)` as (int32[batch_size, seq_len],
    int32[batch_size, seq_len]), gathered by numpy from `train_ids` (an array, or a memory map of a
    corpus larger than memory: only the windows drawn are read) and prefetched while the step runs.
    """
    import tensorflow as tf

    _check_training_text(len(train_ids), seq_len, batch_size, stateful)

    def batch_at(step):
        return training_batch(train_ids, seq_len, batch_size, seed, int(step), stateful)

    def batch_tensors(step):
        inputs, targets = tf.numpy_function(batch_at, [step], (tf.int32, tf.int32), stateful=False)
        return tf.ensure_shape(inputs, (batch_size, seq_len)), tf.ensure_shape(targets, (batch_size, seq_len))

    return (
        tf.data.Dataset.counter(start=start_step)
        .map(batch_tensors, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


class EvaluationBatch(NamedTuple):
    """One window of every evaluation stream; padding past a stream's end has weight 0."""

    inputs: np.ndarray  # int32[rows, seq_len]
    targets: np.ndarray  # int32[rows, seq_len], inputs shifted one character ahead
    weights: np.ndarray  # float32[rows, seq_len], 1 where the target is scored, 0 on padding


class EvaluationBatches(Sequence):
    """The batches of `evaluation_batches`, each cut from the ids when asked for, so scoring a text
    larger than memory needs memory for one batch only."""

    def __init__(self, ids: np.ndarray, seq_len: int, batch_size: int):
        num_predictions = len(ids) - 1
        num_rows = min(batch_size, num_predictions)
        self.lengths = np.full(num_rows, num_predictions // num_rows)  # [rows]
        self.lengths[:num_predictions % num_rows] += 1
        self.stream_starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])  # [rows]
        self.ids, self.seq_len = ids, seq_len
        self.num_windows = -(-int(self.lengths.max()) // seq_len)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, window: int) -> EvaluationBatch:
        if not -self.num_windows <= window < self.num_windows:
            raise IndexError(window)
        window %= self.num_windows
        positions = window * self.seq_len + np.arange(self.seq_len)  # [seq_len]
        input_index = np.minimum(self.stream_starts[:, None] + positions, len(self.ids) - 2)  # [rows, seq_len]
        inputs = np.asarray(self.ids[input_index], dtype=np.int32)
        targets = np.asarray(self.ids[input_index + 1], dtype=np.int32)
        weights = (positions[None, :] < self.lengths[:, None]).astype(np.float32)  # [rows, seq_len]
        return EvaluationBatch(inputs, targets, weights)


def evaluation_batches(ids: np.ndarray, seq_len: int, batch_size: int) -> tuple[EvaluationBatches, int]:
    """Windows that score every character of `ids` but the first exactly once, for a stateful evaluation.

    The len(ids) - 1 predictions are shared among min(batch_size, len(ids) - 1) contiguous streams, one per
    row, whose lengths differ by at most one; stream b+1 starts where stream b ends (its first input is
    stream b's last target). Consecutive batches hold consecutive windows of each stream, so a model
    that carries its state from one batch to the next (reset before the first) sees each stream in order.
    Every batch has the same shape; the positions past a stream's end are padding with weight 0.
    The figure depends only on the text, seq_len and batch_size.

    Returns:
        (batches, a sequence made as it is read; number of scored characters = len(ids) - 1 = the sum of all
        weights). Bits per character is sum(weights * cross-entropy in bits) / scored.
    """
    _check_positive(seq_len=seq_len, batch_size=batch_size)
    if len(ids) < 2:
        raise ChargenError(f"evaluation needs a text of at least 2 characters. Received: {len(ids)} character(s)")
    return EvaluationBatches(ids, seq_len, batch_size), len(ids) - 1


def _check_training_text(num_chars: int, seq_len: int, batch_size: int, stateful: bool) -> None:
    _check_positive(seq_len=seq_len, batch_size=batch_size)
    minimum = batch_size * seq_len + 1  # batch_size streams of one window, and the last target
    if stateful and num_chars < minimum:
        raise ChargenError(f"stateful training cuts the text into batch_size streams of at least one window: "
                           f"{minimum:,} characters for batch_size {batch_size} and seq_len {seq_len}, "
                           f"and the training text has {num_chars:,}; lower --batch-size or --seq-len")
    if num_chars < seq_len + 1:
        raise ChargenError(f"the training text has {num_chars:,} characters; a window of seq_len {seq_len} "
                           f"needs {seq_len + 1:,}; use a longer corpus or a shorter --seq-len")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ChargenError(f"{name} must be at least 1. Received: {name}={value}")


def _splitmix64_numpy(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function: a bijective uint64 mixer (wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX_1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX_2)
        return z ^ (z >> np.uint64(31))
