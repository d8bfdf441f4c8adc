"""Writing files and folders so that a reader sees the old version or the new one, never a part.

One mechanism for every durable write chargen makes (run files, snapshots, downloaded corpora): write
into a temporary name beside the target, flush it to disk (fsync), rename it into place, and flush the
rename through its folder, so that neither a kill nor a power cut can publish half a file. Temporary
names start with `TEMPORARY_PREFIX`, so leftovers of a killed write can be recognised and removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TEMPORARY_PREFIX = ".tmp-"


def _mode_for_new_files() -> int:
    """What `open` would give a new file: 0666 less the process's umask (read without changing it, via /proc
    where it can be; otherwise set and restored at once, before any thread of ours writes files)."""
    try:
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _mode_for_new_files()


def sync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def sync_folder(path: Path) -> None:
    """Make a folder's entries (a new file, a rename) durable. POSIX only: Windows cannot open a folder."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish(temporary: Path, target: Path) -> None:
    """Rename a complete temporary file or folder onto `target`, its contents on disk before the rename.

    A folder's subfolders are flushed too, deepest first (a SavedModel nests its variables).
    """
    if temporary.is_dir():
        for entry in sorted(temporary.rglob("*"), key=lambda path: len(path.parts), reverse=True):
            (sync_folder if entry.is_dir() else sync_file)(entry)
        sync_folder(temporary)
    else:
        sync_file(temporary)
    os.replace(temporary, target)
    sync_folder(target.parent)


@contextlib.contextmanager
def atomic_file(path: Path, binary: bool = False) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; when the block ends without an error it replaces `path`.

    An error inside the block (or a failed rename) removes the temporary file and leaves `path` as it was.

    Example:
        >>> with atomic_file(Path("notes.txt")) as file:
        ...     file.write("all or nothing")
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=path.parent)
    temporary = Path(name)
    try:
        os.chmod(name, _NEW_FILE_MODE)  # mkstemp's 0600 would make a run unreadable to the user's group
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as file:
            yield file
        publish(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) in one step."""
    with atomic_file(path) as file:
        file.write(text)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; when the block ends without an error it becomes `path`."""
    path = Path(path)
    temporary = path.with_name(TEMPORARY_PREFIX + path.name)
    temporary.mkdir(parents=True)
    try:
        yield temporary
        publish(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
