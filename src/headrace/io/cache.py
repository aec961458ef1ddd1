"""A disk cache of whole remote objects, with a size limit and least-recently-used eviction, shared safely
by every process and thread of a node.

An entry's name is a hash of the URL, its size and its version (ETag, generation or modification time),
so a changed object gets a new name and is fetched again, never served stale; the older copy is
removed. A download goes to a ``.part`` file created at its full size, then is renamed into place
(atomic: a reader sees a whole entry or none). Two processes wanting the same object take the same
``flock``; one downloads, the other then finds it. Room is made under a cache-wide ``flock`` before a
download starts, counting the ``.part`` files of downloads in flight, so the files in the directory
never add up to more than ``limit`` bytes. A read touches the entry (its mtime), and eviction removes
the entries touched longest ago. All locks and files live in ``directory``: nothing in ``/dev/shm``.

>>> import tempfile
>>> from headrace.io.cache import DiskCache
>>> cache = DiskCache(tempfile.mkdtemp(), limit=10)
>>> path = cache.put("s3://b/x", 5, "etag1", lambda out: out.write(b"hello"))
>>> open(path, "rb").read(), cache.usage()
(b'hello', 5)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from headrace.core.errors import SourceError
from headrace.core.redact import redact

log = logging.getLogger("headrace.io")
STRIPES = 64  # per-entry download locks, shared by hash: a bounded number of lock files
WAIT_FOR_ROOM_S = 60.0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_fetched: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


class DiskCache:
    """Whole objects on local disk under ``directory``, at most ``limit`` bytes (None: no limit)."""

    def __init__(self, directory: str | os.PathLike[str], limit: int | None = None) -> None:
        if limit is not None and limit <= 0:
            raise ValueError(f"cache_limit must be a positive number of bytes, got {limit}")
        self.directory = Path(directory).expanduser().resolve()
        self.limit = limit
        self.stats = CacheStats()
        try:
            (self.directory / ".locks").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SourceError(
                f"cannot create the cache directory {self.directory} ({e}); pass a writable cache_dir"
            ) from None

    def __repr__(self) -> str:
        return f"DiskCache({str(self.directory)!r}, limit={self.limit})"

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "limit": self.limit}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @staticmethod
    def key(url: str) -> str:
        return hashlib.sha256(url.encode()).hexdigest()[:32]

    def entry(self, url: str, size: int, version: str) -> Path:
        """Where ``url`` at this size and version lives: ``<hash of url>-<hash of size and version>``."""
        tag = hashlib.sha256(f"{size}|{version}".encode()).hexdigest()[:16]
        return self.directory / f"{self.key(url)}-{tag}"

    def touch(self, path: str | Path) -> bool:
        """Mark an entry used now; False if it is gone (evicted)."""
        try:
            os.utime(path)
            return True
        except FileNotFoundError:
            return False

    def put(self, url: str, size: int, version: str, fill: Callable[[BinaryIO], None]) -> str | None:
        """The path of ``url``'s entry, calling ``fill(file)`` to download it when it is missing.

        None when the entry cannot get room within a minute (other processes' downloads fill the cache):
        the caller then reads the object remotely.
        """
        path = self.entry(url, size, version)
        if self.touch(path):
            self.stats.add(hits=1)
            return str(path)
        if self.limit is not None and size > self.limit:
            raise SourceError(
                f"{redact(url)}: {size} bytes do not fit in the cache (cache_limit={self.limit}); raise cache_limit "
                "above the largest shard, or read without cache_dir"
            )
        with self._locked(self.directory / ".locks" / f"{int(self.key(url), 16) % STRIPES}.lock"):
            if self.touch(path):  # another process or thread downloaded it meanwhile
                self.stats.add(hits=1)
                return str(path)
            part = self._reserve(path, size)
            if part is None:
                log.warning("%s: no room in the cache at %s; reading it without caching", redact(url), self.directory)
                return None
            try:
                with open(part, "r+b") as out:
                    fill(out)
                    written = out.tell()
                if written != size:
                    raise SourceError(f"{redact(url)}: downloaded {written} bytes, expected {size}; the object "
                                      "changed while being read: list the dataset again")  # fmt: skip
                # Names change only under the cache-wide lock: a directory scan racing a rename can miss
                # the file, and a reservation counting too little would let the cache pass its limit.
                with self._locked(self.directory / ".locks" / "cache.lock"):
                    os.replace(part, path)
                    for stale in self.directory.glob(f"{self.key(url)}-*"):  # older versions of the object
                        if stale != path and not stale.name.endswith(".part"):
                            with contextlib.suppress(OSError):
                                stale.unlink()
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(part)
                raise
            self.stats.add(misses=1, bytes_fetched=size)
            return str(path)

    def usage(self) -> int:
        """Bytes on disk in entries and downloads in flight."""
        return sum(size for _, size, _ in self._files())

    def _files(self) -> Iterator[tuple[Path, int, float]]:
        with os.scandir(self.directory) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield Path(e.path), st.st_size, st.st_mtime

    def _reserve(self, path: Path, size: int) -> Path | None:
        """A ``.part`` file of ``size`` bytes, after evicting least-recently-used entries to make room."""
        part = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        deadline = time.monotonic() + WAIT_FOR_ROOM_S
        while True:
            with self._locked(self.directory / ".locks" / "cache.lock"):
                if self.limit is None or self._evict(size):
                    with open(part, "wb") as f:
                        f.truncate(size)  # counted at full size from now on
                    return part
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def _evict(self, size: int) -> bool:
        """Remove entries, least recently used first, until ``size`` more bytes fit; False if they cannot
        (the rest is downloads in flight)."""
        assert self.limit is not None
        files = list(self._files())
        used = sum(s for _, s, _ in files)
        entries = sorted((mtime, p, s) for p, s, mtime in files if not p.name.endswith(".part"))
        for _, p, s in entries:
            if used + size <= self.limit:
                break
            with contextlib.suppress(FileNotFoundError):
                p.unlink()  # an open copy stays readable: unlinking frees the name, not the reader's data
                used -= s
                self.stats.add(evictions=1)
        return used + size <= self.limit

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with open(path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
