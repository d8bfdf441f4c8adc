"""One writer at a time: a lock file that the operating system releases when its holder dies.

The holder takes `fcntl.flock` on the file and writes who it is (pid, host, start time) into it, so a
process refused the lock can name the one that has it. The kernel drops the lock when its holder's
process ends, however it ends (SIGKILL included): a lock left behind by a killed process is free at
once, and a file left with a dead holder's record is simply taken over.

Shared filesystems: Linux's NFS client turns `flock` into a lock the server arbitrates, so processes
on two machines still exclude each other, and a crashed machine's lock lapses with its lease. Where
the filesystem cannot lock at all (`flock` fails with ENOLCK or EOPNOTSUPP; some FUSE and old NFS
mounts) or `fcntl` does not exist (Windows), the file's existence is the lock, created exclusively and
removed on release: a record naming a process that is gone from this host is stale and taken over; a
record naming another host cannot be checked from here, so it is refused with the file to delete once
that process is known to be gone.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from datetime import datetime
from pathlib import Path

from chargen.errors import ChargenError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# flock's answers meaning "this filesystem has no locks", as opposed to "someone else holds it"
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockHeld(ChargenError):
    """Another process holds the lock; the message names it."""


def this_holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().isoformat(timespec="seconds")}


def process_is_gone(holder: dict) -> bool:
    """Whether `holder` names a process of this host that no longer exists (never true for another host)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int) or os.name != "posix":
        return False
    try:
        os.kill(holder["pid"], 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


class WriterLock:
    """The lock on `path`, for `what` (as the refusal names it, e.g. "run checkpoints/tiny").

    Example:
        >>> with WriterLock(run / "writer.lock", f"run {run}"):
        ...     train()
    """

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self._descriptor = None
        self._flocked = False

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock now or raise `LockHeld` naming its holder; never waits."""
        if fcntl is not None:
            while True:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(descriptor)
                    raise self._held(self._read_holder()) from None
                except OSError as error:
                    os.close(descriptor)
                    if error.errno not in NO_LOCKS:
                        raise
                    break  # no locks on this filesystem: the exclusive file below
                if self._still_the_file(descriptor):
                    self._descriptor, self._flocked = descriptor, True
                    self._write_holder()
                    return
                os.close(descriptor)  # its holder released and removed it between our open and flock: again
        self._acquire_by_existence()

    def release(self) -> None:
        """Remove the file and let go; safe to call twice, and after the folder holding it was removed."""
        if self._descriptor is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: a newcomer must not take a file on its way out
        except OSError:
            pass  # a read-only or vanished folder: the lock goes with the descriptor all the same
        if self._flocked:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        os.close(self._descriptor)
        self._descriptor, self._flocked = None, False

    def _still_the_file(self, descriptor: int) -> bool:
        try:
            return os.path.samestat(os.fstat(descriptor), os.stat(self.path))
        except FileNotFoundError:
            return False

    def _acquire_by_existence(self) -> None:
        for _ in range(2):
            try:
                self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder and not process_is_gone(holder):
                    raise self._held(holder, unverifiable=holder.get("host") != socket.gethostname()) from None
                self.path.unlink(missing_ok=True)  # stale: its holder died without removing it
                continue
            self._write_holder()
            return
        raise self._held(self._read_holder())

    def _write_holder(self) -> None:
        record = json.dumps(this_holder()).encode()
        os.ftruncate(self._descriptor, 0)
        os.lseek(self._descriptor, 0, os.SEEK_SET)
        os.write(self._descriptor, record)
        os.fsync(self._descriptor)

    def _read_holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _held(self, holder: dict, unverifiable: bool = False) -> LockHeld:
        who = (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"
               f" (since {holder.get('since', '?')})" if holder else "another process")
        line = f"{self.what} is being written by {who}; wait for it to finish or stop it, then try again"
        if unverifiable:
            line += f" (if that process is gone, delete {self.path})"
        return LockHeld(line)
