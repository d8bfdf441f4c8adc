"""Well-known public corpora, downloaded on request and checked against a pinned sha256.

The repository holds no copied text: a user with internet fetches a corpus once, into a folder of
their own. A download streams into a temporary file beside its destination, hashing as it goes, and
is renamed into place only when the whole file matches the pinned hash, so an interrupted, truncated
or altered download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chargen.atomic import atomic_file
from chargen.errors import ChargenError

_CHUNK = 1 << 16


@dataclass(frozen=True)
class KnownCorpus:
    name: str
    url: str  # the canonical address
    sha256: str  # of the file's bytes at that address
    size: int  # bytes
    description: str


KNOWN = {known.name: known for known in (
    KnownCorpus(
        name="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
        description="about 40,000 lines from Shakespeare's plays, as collected for char-rnn (Karpathy, 2015)",
    ),
)}


def default_folder() -> Path:
    """Where fetched corpora go unless told: the user's cache folder (XDG), not the repository."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "chargen" / "corpora"


def lookup(name: str) -> KnownCorpus:
    if name not in KNOWN:
        raise ChargenError(f"no known corpus named {name!r}; the known ones are {', '.join(sorted(KNOWN))}")
    return KNOWN[name]


def fetch(
    name: str,
    folder: Path,
    url: str | None = None,
    on_bytes: Callable[[int, int | None], None] | None = None,
    timeout: float = 30.0,
) -> tuple[Path, bool]:
    """Download corpus `name` into `folder`, unless a copy with the pinned hash is already there.

    Args:
        url: another address to download from (a mirror); the pinned hash still decides.
        on_bytes: called with each chunk's size and the expected total (for a progress bar).

    Returns:
        (the file's path, whether it was downloaded now).
    """
    known = lookup(name)
    target = Path(folder) / f"{known.name}.txt"
    if target.exists():
        if _sha256_of(target) == known.sha256:
            return target, False
        raise ChargenError(f"{target} exists but is not the pinned {known.name} (its sha256 differs); "
                           "move it away or pass another --output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    source = url or known.url
    with atomic_file(target, binary=True) as file:
        digest = _download(known, source, file, on_bytes, timeout)
        if digest != known.sha256:
            raise ChargenError(f"the file from {source} is not the pinned {known.name}: sha256 {digest[:12]}… "
                               f"instead of {known.sha256[:12]}…; nothing was saved")
    return target, True


def _download(known: KnownCorpus, source: str, file, on_bytes, timeout: float) -> str:
    """Stream `source` into `file`; returns the sha256 of what arrived. Network failures are ChargenErrors."""
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > known.size:
                    raise ChargenError(f"{source} sent more than the {known.size:,} bytes of {known.name}; "
                                       "nothing was saved")
                digest.update(chunk)
                file.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk), known.size)
    except urllib.error.HTTPError as error:
        raise ChargenError(f"could not download {known.name} from {source}: HTTP {error.code} {error.reason}; "
                           "pass --url with another address if this one moved") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise ChargenError(f"could not download {known.name} from {source}: {reason}; "
                           "check the connection, or pass --url with a mirror") from None
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
