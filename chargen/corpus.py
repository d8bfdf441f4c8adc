"""Corpora: read text from files, folders or a built-in source; split it; cut it into training windows.

Reading needs only the standard library and numpy, so it stays fast; TensorFlow is imported inside
`training_dataset` alone.

Batches are a pure function of (seed, step): the data position of a run is its step number, so a resumed
run sees exactly the batches it would have seen without the interruption. `training_batch` (numpy) and
`training_dataset` (tf.data, the fast path) compute the same arrays from the same formula:

- Random windows (the default): the start of row b at step s is
  splitmix64(splitmix64(splitmix64(seed) ^ s) + b * golden) mod (number of starts), a counter-based hash
  that numpy and TensorFlow both evaluate in uint64 arithmetic. Windows are drawn with replacement, so
  an "epoch" (`steps_per_epoch`) is a character count, not a guarantee that each window is seen once.
- Stateful windows: the text is cut into `batch_size` contiguous streams of `windows_per_stream * seq_len`
  characters, and row b of step s holds window (s mod windows_per_stream) of stream b. Consecutive steps
  continue each row where it stopped, so the final state of a window can seed the next; one epoch
  predicts every character of the text once.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from chargen.config import ENCODING_ERRORS
from chargen.errors import ChargenError

# Several files become one stream with this between them: a blank line, which reads as a paragraph
# break to the model and is ordinary text in nearly every corpus.
SEPARATOR = "\n\n"
BUILTIN_PREFIX = "builtin:"

_GOLDEN = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB


@dataclass(frozen=True)
class Corpus:
    """A text ready to train on, and where it came from (recorded in a run's config)."""

    text: str = field(repr=False)  # every source's text, joined with SEPARATOR
    sources: tuple[tuple[str, int], ...]  # (path or builtin:name, characters) in reading order
    sha256: str  # hex digest of the raw bytes read, in order (a built-in's UTF-8 text)
    num_bytes: int  # raw bytes read


def _python_docs_text() -> str:
    """The help topics of the Python reference manual that CPython ships (`pydoc_data.topics`)."""
    from pydoc_data.topics import topics

    return SEPARATOR.join(topics[name] for name in sorted(topics))


# Corpora that need no download: name -> a function that assembles the text when asked for.
BUILTIN_CORPORA: dict[str, Callable[[], str]] = {"python-docs": _python_docs_text}


def read_corpus(
    paths: str | os.PathLike | Sequence[str | os.PathLike], encoding: str = "utf-8", errors: str = "strict"
) -> Corpus:
    """Read files and folders as one text; folders give their regular files recursively, sorted by path.

    Hidden files and folders (names starting with ".") inside a folder are skipped; a file named
    directly is always read.

    Args:
        paths: one path or several, each a file or a folder.
        encoding: a Python codec name, e.g. "utf-8", "latin-1".
        errors: what to do with bytes the encoding cannot decode: "strict" (stop with an error that
            names the file and byte offset), "replace" (U+FFFD) or "ignore" (drop them).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    _check_encoding(encoding, errors)
    return _assemble(piece for path in paths for piece in _file_pieces(Path(path), encoding, errors))


def builtin_corpus(name: str) -> Corpus:
    """One of `BUILTIN_CORPORA` by name, e.g. "python-docs"."""
    return _assemble([_builtin_piece(name)])


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

    def pieces() -> Iterator[tuple[str, bytes, str]]:
        for path in paths:
            if isinstance(path, str) and path.startswith(BUILTIN_PREFIX):
                yield _builtin_piece(path[len(BUILTIN_PREFIX):])
            else:
                yield from _file_pieces(Path(path), encoding, errors)

    return _assemble(pieces())


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


def _file_pieces(path: Path, encoding: str, errors: str) -> Iterator[tuple[str, bytes, str]]:
    """(path, raw bytes, text) for each file that `path` names, read one at a time."""
    for file in _files_under(path):
        try:
            data = file.read_bytes()
        except OSError as error:
            raise ChargenError(f"cannot read {file}: {error.strerror}") from None
        try:
            text = data.decode(encoding, errors)
        except UnicodeDecodeError as error:
            raise ChargenError(
                f"cannot decode {file} as {encoding}: byte 0x{data[error.start]:02x} at byte offset {error.start} "
                f"({error.reason}); pass --encoding, e.g. --encoding latin-1, or --encoding-errors replace"
            ) from None
        yield str(file), data, text


def _files_under(path: Path) -> list[Path]:
    if not path.exists():
        raise ChargenError(f"corpus path not found: {path}; check the path, or use "
                           f"{BUILTIN_PREFIX}python-docs for the built-in corpus")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ChargenError(f"corpus path is neither a regular file nor a folder: {path}")
    files = []
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        files += [Path(folder, name) for name in names if not name.startswith(".")]
    files = sorted((file for file in files if file.is_file()), key=lambda file: file.relative_to(path).parts)
    if not files:
        raise ChargenError(f"folder {path} has no files to read (hidden files and folders are skipped); "
                           "put text files in it or name the files")
    return files


def _builtin_piece(name: str) -> tuple[str, bytes, str]:
    if name not in BUILTIN_CORPORA:
        raise ChargenError(f"unknown built-in corpus; the built-in corpora are "
                           f"{', '.join(BUILTIN_PREFIX + known for known in sorted(BUILTIN_CORPORA))}. "
                           f"Received: name={name!r}")
    text = BUILTIN_CORPORA[name]()
    return BUILTIN_PREFIX + name, text.encode("utf-8"), text


def _assemble(pieces: Iterable[tuple[str, bytes, str]]) -> Corpus:
    """Join the pieces' texts with SEPARATOR, hashing their raw bytes as they pass."""
    digest = hashlib.sha256()
    texts, sources, num_bytes = [], [], 0
    for source, data, text in pieces:
        digest.update(data)
        num_bytes += len(data)
        texts.append(text)
        sources.append((source, len(text)))
    text = SEPARATOR.join(texts)
    if not text or text.isspace():
        names = ", ".join(source for source, _ in sources[:3]) + (", ..." if len(sources) > 3 else "")
        raise ChargenError(f"the corpus is empty: {names} hold(s) no text besides whitespace; "
                           "pass files that contain text")
    return Corpus(text=text, sources=tuple(sources), sha256=digest.hexdigest(), num_bytes=num_bytes)


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
    int32[batch_size, seq_len]), computed in TensorFlow (hash, gather) in parallel and prefetched.
    """
    import tensorflow as tf

    _check_training_text(len(train_ids), seq_len, batch_size, stateful)
    ids = tf.constant(np.asarray(train_ids, dtype=np.int32))  # [N]
    offsets = tf.range(seq_len + 1, dtype=tf.int64)  # [seq_len + 1]
    rows = tf.range(batch_size, dtype=tf.int64)  # [B]
    windows_per_stream = steps_per_epoch(len(train_ids), seq_len, batch_size)
    seed_key = tf.constant(int(_splitmix64_numpy(np.uint64(seed % 2**64))), dtype=tf.uint64)
    num_starts = tf.constant(len(train_ids) - seq_len, dtype=tf.uint64)

    def batch_at(step):
        if stateful:
            starts = (rows * windows_per_stream + step % windows_per_stream) * seq_len  # [B]
        else:
            step_key = _splitmix64_tf(tf.bitwise.bitwise_xor(seed_key, tf.cast(step, tf.uint64)))
            hashes = _splitmix64_tf(step_key + tf.cast(rows, tf.uint64) * tf.constant(_GOLDEN, tf.uint64))  # [B]
            starts = tf.cast(hashes % num_starts, tf.int64)  # [B]
        windows = tf.gather(ids, starts[:, None] + offsets[None, :])  # [B, seq_len + 1]
        return windows[:, :-1], windows[:, 1:]

    return (
        tf.data.Dataset.counter(start=start_step)
        .map(batch_at, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


class EvaluationBatch(NamedTuple):
    """One window of every evaluation stream; padding past a stream's end has weight 0."""

    inputs: np.ndarray  # int32[rows, seq_len]
    targets: np.ndarray  # int32[rows, seq_len], inputs shifted one character ahead
    weights: np.ndarray  # float32[rows, seq_len], 1 where the target is scored, 0 on padding


def evaluation_batches(ids: np.ndarray, seq_len: int, batch_size: int) -> tuple[list[EvaluationBatch], int]:
    """Windows that score every character of `ids` but the first exactly once, for a stateful evaluation.

    The len(ids) - 1 predictions are shared among min(batch_size, len(ids) - 1) contiguous streams, one per
    row, whose lengths differ by at most one; stream b+1 starts where stream b ends (its first input is
    stream b's last target). Consecutive batches hold consecutive windows of each stream, so a model
    that carries its state from one batch to the next (reset before the first) sees each stream in order.
    Every batch has the same shape; the positions past a stream's end are padding with weight 0.
    The figure depends only on the text, seq_len and batch_size.

    Returns:
        (batches, number of scored characters = len(ids) - 1 = the sum of all weights). Bits per character
        is sum(weights * cross-entropy in bits) / scored.
    """
    _check_positive(seq_len=seq_len, batch_size=batch_size)
    num_predictions = len(ids) - 1
    if num_predictions < 1:
        raise ChargenError(f"evaluation needs a text of at least 2 characters. Received: {len(ids)} character(s)")
    num_rows = min(batch_size, num_predictions)
    lengths = np.full(num_rows, num_predictions // num_rows)  # [rows]
    lengths[:num_predictions % num_rows] += 1
    stream_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # [rows]
    num_windows = -(-int(lengths.max()) // seq_len)
    positions = np.arange(num_windows * seq_len)  # [T]
    input_index = np.minimum(stream_starts[:, None] + positions, num_predictions - 1)  # [rows, T]
    ids = np.asarray(ids, dtype=np.int32)
    inputs = ids[input_index]  # [rows, T]
    targets = ids[input_index + 1]  # [rows, T]
    weights = (positions[None, :] < lengths[:, None]).astype(np.float32)  # [rows, T]
    batches = [
        EvaluationBatch(inputs[:, window], targets[:, window], weights[:, window])
        for window in (slice(start, start + seq_len) for start in range(0, num_windows * seq_len, seq_len))
    ]
    return batches, num_predictions


def _check_training_text(num_chars: int, seq_len: int, batch_size: int, stateful: bool) -> None:
    _check_positive(seq_len=seq_len, batch_size=batch_size)
    if stateful and num_chars < batch_size * seq_len + 1:
        raise ChargenError(f"stateful training cuts the text into batch_size streams of at least one window: "
                           f"{batch_size * seq_len + 1:,} characters for batch_size {batch_size} and seq_len "
                           f"{seq_len}, and the training text has {num_chars:,}; lower --batch-size or --seq-len")
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


def _splitmix64_tf(x):
    """`_splitmix64_numpy` in TensorFlow ops, on a uint64 tensor."""
    import tensorflow as tf

    def xor_shift(z, bits):
        return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(bits, tf.uint64)))

    z = x + tf.constant(_GOLDEN, tf.uint64)
    z = xor_shift(z, 30) * tf.constant(_MIX_1, tf.uint64)
    z = xor_shift(z, 27) * tf.constant(_MIX_2, tf.uint64)
    return xor_shift(z, 31)
