"""A disk cache of whole remote objects, with a size limit and least-recently-used eviction, shared safely
by every process and thread of a node.

An entry's name is a hash of the URL, its size and its version (ETag, generation or modification time),
so a changed object gets a new name and is fetched again, never served stale; the older copy is
removed. A download goes to a ``.part`` file created at its full size, then is renamed into place
(atomic: a reader sees a whole entry or none). Two processes wanting the same object take the same
``flock``; one downloads, the other then finds it. Room is made under a cache-wide ``flock`` before a
download starts, counting the ``.part`` files of downloads in flight, so the cache's files never add
up to more than ``limit`` bytes. A read touches the entry (its mtime), and eviction removes the
entries touched longest ago. All locks and files live in ``directory``: nothing in ``/dev/shm``.

The cache only ever touches its own files, which it knows by their exact names (:data:`ENTRY`,
:data:`PART`): anything else in ``directory`` (a checkpoint, notes, a folder) is ignored, never
counted against ``limit`` and never deleted. A download holds an ``flock`` on its ``.part`` file
until it is renamed into place; a ``.part`` whose lock nobody holds was left by a process that died
(SIGKILL, a crash, a power cut) and is removed by the next process that opens the cache or makes room.

>>> import tempfile
>>> from headrace.io.cache import DiskCache
>>> cache = DiskCache(tempfile.mkdtemp(), limit=10)
>>> path = cache.put("s3://b/x", 5, "etag1", lambda out: out.write(b"hello"))
>>> open(path, "rb").read(), cache.usage()
(b'hello', 5)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from headrace.core.errors import SourceError
from headrace.core.redact import redact

log = logging.getLogger("headrace.io")
STRIPES = 64  # per-entry download locks, shared by hash: a bounded number of lock files
WAIT_FOR_ROOM_S = 60.0
ENTRY = re.compile(r"[0-9a-f]{32}-[0-9a-f]{16}")  # <hash of url>-<hash of size and version>
PART = re.compile(r"(?P<entry>[0-9a-f]{32}-[0-9a-f]{16})\.(?P<pid>\d+)\.(?P<thread>\d+)\.part")  # a download
# The downloads in flight in this process, by path: never taken for a dead process's, even where flock is
# emulated by POSIX locks (NFS), which a process does not conflict with itself on.
_MINE: set[str] = set()
_MINE_LOCK = threading.Lock()


@dataclass
class CacheStats:
    """What one :class:`DiskCache` object did: ``waited`` counts downloads that had to wait for room
    (others' downloads in flight filled the cache), ``uncached`` the objects read remotely instead (no room
    in time, or the disk failed: full, over quota), ``reclaimed`` the dead processes' ``.part`` files removed."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_fetched: int = 0
    waited: int = 0
    uncached: int = 0
    reclaimed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


class _DiskError(Exception):
    """The cache's own file failed (disk full, over quota, file size limit), not the download."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _PartFile(io.FileIO):
    """A download's ``.part`` file: each write writes all its bytes, and its ``OSError`` comes out as
    :class:`_DiskError`, told apart from the download's own errors."""

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = super().write(view[done:])
                if not n:
                    raise OSError(errno.EIO, "the disk took no bytes")
                done += n
        except OSError as e:
            raise _DiskError(e) from e
        return done


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    mtime: float
    part: bool


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
        try:
            with self._locked(self.directory / ".locks" / "cache.lock"):
                self._reclaim()  # a killed run's downloads, before anything counts them
        except OSError as e:
            raise SourceError(f"cannot write in the cache directory {self.directory} ({e}); pass a writable "
                              "cache_dir") from None  # fmt: skip

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

        None when the entry cannot get room within a minute (other processes' downloads fill the cache)
        or the disk fails (full, over quota: logged): the caller then reads the object remotely.
        """
        path = self.entry(url, size, version)
        if self._whole(path, size):
            self.stats.add(hits=1)
            return str(path)
        if self.limit is not None and size > self.limit:
            raise SourceError(
                f"{redact(url)}: {size} bytes do not fit in the cache (cache_limit={self.limit}); raise cache_limit "
                "above the largest shard, or read without cache_dir"
            )
        with self._locked(self.directory / ".locks" / f"{int(self.key(url), 16) % STRIPES}.lock"):
            if self._whole(path, size, repair=True):  # another process or thread downloaded it meanwhile
                self.stats.add(hits=1)
                return str(path)
            try:
                reserved = self._reserve(path, size)
            except OSError as e:
                self._uncached(url, str(e))
                return None
            if reserved is None:
                self._uncached(url, "no room")
                return None
            part, out = reserved
            try:
                fill(cast(BinaryIO, out))
                written = out.tell()
                if written != size:
                    raise SourceError(f"{redact(url)}: downloaded {written} bytes, expected {size}; the object "
                                      "changed while being read: list the dataset again")  # fmt: skip
                # Names change only under the cache-wide lock: a directory scan racing a rename can miss
                # the file, and a reservation counting too little would let the cache pass its limit.
                try:
                    with self._locked(self.directory / ".locks" / "cache.lock"):
                        os.replace(part, path)
                        older = f"{self.key(url)}-"  # older versions of the object
                        for stale in self._own():
                            if not stale.part and stale.path.name.startswith(older) and stale.path != path:
                                with contextlib.suppress(OSError):
                                    stale.path.unlink()
                except OSError as e:
                    raise _DiskError(e) from e
            except BaseException as e:
                with contextlib.suppress(OSError):
                    os.unlink(part)
                if not isinstance(e, _DiskError):
                    raise
                self._uncached(url, str(e.error))
                return None
            finally:
                with _MINE_LOCK:
                    _MINE.discard(str(part))
                out.close()  # and so its lock: after the rename, never a moment as an unlocked .part
            self.stats.add(misses=1, bytes_fetched=size)
            return str(path)

    def _uncached(self, url: str, why: str) -> None:
        log.warning("%s: cannot keep it in the cache at %s (%s); reading it without caching", redact(url),
                    self.directory, why)  # fmt: skip
        self.stats.add(uncached=1)

    def usage(self) -> int:
        """Bytes on disk in the cache's entries and downloads (the files of others in ``directory`` not counted)."""
        return sum(f.size for f in self._own())

    def _whole(self, path: Path, size: int, repair: bool = False) -> bool:
        """Whether ``path`` is an entry of ``size`` bytes, touched now. One of another size (cut short by a
        power cut before the disk had it all) is removed with ``repair`` (under the entry's lock, which a
        new copy is renamed into place under), to be downloaded again."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False  # not the cache's (a folder or a link someone made): left alone
        if st.st_size != size:
            if not repair:
                return False
            log.warning("%s: a cache entry of %d bytes, expected %d; downloading it again", path, st.st_size, size)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return False
        return self.touch(path)

    def _own(self) -> Iterator[_File]:
        """The cache's entries and downloads in ``directory``: regular files with the names it gives, only."""
        with os.scandir(self.directory) as it:
            for e in it:
                part = PART.fullmatch(e.name) is not None
                if not (part or ENTRY.fullmatch(e.name)) or not e.is_file(follow_symlinks=False):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield _File(Path(e.path), st.st_size, st.st_mtime, part)

    def _reclaim(self) -> int:
        """Remove the ``.part`` files whose download lock nobody holds (their process died); the count.
        Called under the cache-wide lock, which every ``.part`` is created and renamed under."""
        gone = 0
        for f in self._own():
            if not f.part:
                continue
            with _MINE_LOCK:
                if str(f.path) in _MINE:
                    continue
            try:
                with open(f.path, "rb") as probe:
                    try:
                        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a download in flight
                    f.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:  # e.g. another user's download in a shared folder: not ours to remove
                log.info("cannot reclaim %s in the cache at %s: %s", f.path.name, self.directory, e)
                continue
            gone += 1
            log.info("removed %s from the cache at %s: its download's process died", f.path.name, self.directory)
        if gone:
            self.stats.add(reclaimed=gone)
        return gone

    def _reserve(self, path: Path, size: int) -> tuple[Path, _PartFile] | None:
        """A ``.part`` file of ``size`` bytes, open for writing with its lock held, after evicting
        least-recently-used entries to make room; None if there is no room within ``WAIT_FOR_ROOM_S``."""
        part = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
        deadline = time.monotonic() + WAIT_FOR_ROOM_S
        waited = False
        while True:
            with self._locked(self.directory / ".locks" / "cache.lock"):
                self._reclaim()
                if self.limit is None or self._evict(size):
                    out = _PartFile(part, "w")  # closed by put once renamed into place
                    try:
                        fcntl.flock(out, fcntl.LOCK_EX)  # held until renamed: a .part nobody locks is a dead one's
                        with _MINE_LOCK:
                            _MINE.add(str(part))
                        out.truncate(size)  # counted at full size from now on
                    except BaseException:
                        with _MINE_LOCK:
                            _MINE.discard(str(part))
                        with contextlib.suppress(OSError):
                            os.unlink(part)
                        out.close()
                        raise
                    return part, out
            if not waited:
                waited = True
                self.stats.add(waited=1)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def _evict(self, size: int) -> bool:
        """Remove entries, least recently used first, until ``size`` more bytes fit; False if they cannot
        (the rest is downloads in flight)."""
        assert self.limit is not None
        files = list(self._own())
        used = sum(f.size for f in files)
        for f in sorted((f for f in files if not f.part), key=lambda f: (f.mtime, f.path)):
            if used + size <= self.limit:
                break
            with contextlib.suppress(FileNotFoundError):
                f.path.unlink()  # an open copy stays readable: unlinking frees the name, not the reader's data
                used -= f.size
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
