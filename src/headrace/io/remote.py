"""Remote files that survive the network: ranged reads, retried where they broke, read ahead.

:class:`RemoteFS` wraps an fsspec filesystem (S3, GCS, Azure, HTTP, the Hub). Its listings and
metadata calls are retried on transient errors; its files are :class:`RemoteFile`\\ s, which read
byte ranges (``cat_file(url, start, end)``: one request each, only the bytes asked for — Parquet
column projection fetches only the projected column chunks) and retry a failed range from its first
byte not yet delivered, so a reset, a cut body or a 503 loses and repeats nothing. A file read in
sequence (JSONL, CSV, text) fetches ``block`` bytes at a time and the next block in the background
while the current one is parsed. With a :class:`~headrace.io.cache.DiskCache`, whole shards are
downloaded (the next ``ahead`` of them in the background) and read from local disk.

>>> import fsspec
>>> from headrace.io.remote import RemoteFS
>>> fs = RemoteFS(fsspec.filesystem("memory"))
>>> fs.pipe("/r/x.txt", b"hello")
>>> f = fs.open_remote("memory:///r/x.txt", size=5)
>>> f.read(2), f.read()
(b'he', b'llo')
"""

from __future__ import annotations

import contextlib
import io
import threading
import types
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from headrace.core.errors import SourceError
from headrace.core.redact import redact, register
from headrace.io.cache import DiskCache
from headrace.io.retry import Retry, RetryStats, Truncated, diagnose, status_of

BLOCK = 8 << 20  # bytes per sequential range request
RECENT = 4 << 20  # the last range read, up to this size, serves the reads inside it
COALESCE = 64 << 10  # prefetched ranges closer than this are fetched as one request
RETRIED = frozenset({"glob", "find", "info", "exists", "size", "ls", "isdir", "isfile", "cat_file", "du"})
_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="headrace-io-read")  # ranges: wait on nothing
_DOWNLOADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="headrace-io-download")  # whole shards


class RemoteFS:
    """An fsspec filesystem with retried metadata calls, retrying ranged files and an optional disk cache.

    Every other attribute is the wrapped filesystem's (``protocol``, ``unstrip_protocol``, ...).
    """

    def __init__(self, fs: Any, retry: Retry | None = None, cache: DiskCache | None = None, ahead: int = 2) -> None:
        self.fs = fs
        _without_own_retries(fs)
        self.retry = retry or Retry()
        self.cache = cache
        self.ahead = ahead
        self.stats = RetryStats()
        self._fetching: dict[str, Future[str | None]] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("fs", "retry", "stats"):
            raise AttributeError(name)
        attr = getattr(self.fs, name)
        if name in RETRIED and callable(attr):
            return lambda *args, **kwargs: self.retry.call(
                lambda: attr(*args, **kwargs), lambda: f"{self._url(args[0] if args else '')} ({name})", self.stats
            )
        return attr

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """The object's metadata, retried on transient errors like a read. On HTTP(S), one HEAD per try
        (a GET only when the HEAD is refused or gives no size) whose 404/403 stays a
        ``FileNotFoundError``/``PermissionError`` and whose 5xx or refused connection is tried again:
        fsspec's own ``info`` sends a HEAD and a GET and calls any failure "not found"."""
        once = (lambda: self._http_info(path)) if self._http else (lambda: self.fs.info(path, **kwargs))
        info: dict[str, Any] = self.retry.call(once, lambda: f"{self._url(path)} (info)", self.stats)
        return info

    def size(self, path: str) -> int | None:
        size = self.info(path).get("size")
        return None if size is None else int(size)

    def exists(self, path: str, **kwargs: Any) -> bool:
        """Whether the object is there: false only when the server says it is not (fsspec's ``exists``
        is false on any error, an outage or a wrong key included); other errors raise."""
        try:
            self.info(path, **kwargs)
        except FileNotFoundError:
            return False
        return True

    @property
    def _http(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol in ("http", "https")

    def _http_info(self, url: str) -> dict[str, Any]:
        from fsspec.asyn import sync

        info: dict[str, Any] = sync(self.fs.loop, self._http_info_async, url)
        return info

    async def _http_info_async(self, url: str) -> dict[str, Any]:
        from fsspec.implementations.http import _file_info

        session = await self.fs.set_session()
        info: dict[str, Any] = {}
        for policy in ("head", "get"):
            try:
                info.update(await _file_info(self.fs.encode_url(url), session, policy, **self.fs.kwargs))
            except Exception as e:
                status = status_of(e)
                if policy == "head" and (status == 501 or ((status or 0) // 100 == 4 and status not in (408, 429))):
                    continue  # HEAD refused (405, 501) or not signed for (a presigned GET URL): ask by GET
                if status in (404, 410):
                    raise FileNotFoundError(url) from e
                if status in (401, 403):
                    raise PermissionError(url) from e
                raise
            if info.get("size") is not None:
                break
        return {"name": url, "size": None, **info, "type": "file"}

    def _url(self, path: Any) -> str:
        """``path`` as a URL with its scheme, redacted, for messages."""
        url = str(path)
        if "://" not in url:
            with contextlib.suppress(Exception):  # a message without the scheme is still better than none
                url = self.fs.unstrip_protocol(url)
        return redact(url)

    def __getstate__(self) -> dict[str, Any]:
        return {"fs": self.fs, "retry": self.retry, "cache": self.cache, "ahead": self.ahead}

    def __setstate__(self, state: dict[str, Any]) -> None:
        register(getattr(state["fs"], "storage_options", None))  # unpickled in another process: mask its secrets
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"RemoteFS({protocol}, retry={self.retry}, cache={self.cache})"

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        """Reading: a :class:`RemoteFile` (or the cached copy); writing: the filesystem's own file."""
        if mode != "rb":
            return self.fs.open(path, mode, **kwargs)
        return self.open_remote(path)

    def open_remote(self, url: str, size: int | None = None, sequential: bool = False) -> BinaryIO:
        """The object's bytes: from the disk cache when there is one, else by retried ranged reads
        (``sequential``: buffered by ``BLOCK`` and read ahead)."""
        local = self.cached(url)
        if local is not None:
            return open(local, "rb")
        if size is None:
            size = self.size(url) or 0  # a server that gives no size: as resolve() counts it
        file = RemoteFile(self, url, size, ahead=sequential)
        return io.BufferedReader(file, BLOCK) if sequential else file  # type: ignore[return-value]

    def cached(self, url: str) -> str | None:
        """The path of ``url``'s up-to-date copy in the disk cache (downloaded now if it is not there);
        None without a cache (or when the cache cannot hold it, logged)."""
        if self.cache is None:
            return None
        with self._lock:
            pending = self._fetching.pop(url, None)
        if pending is not None:
            try:
                path = pending.result()
            except Exception:  # the download in the background failed: once more here, raising what it raises
                path = None
            if path is not None and self.cache.touch(path):
                return path
        return self._fetch(url)

    def prefetch(self, urls: Sequence[str]) -> None:
        """Start downloading the next ``ahead`` of ``urls`` into the disk cache (no-op without a cache)."""
        if self.cache is None:
            return
        with self._lock:
            for url in urls[: self.ahead]:
                if url not in self._fetching:
                    self._fetching[url] = _DOWNLOADS.submit(self._fetch, url)

    def _fetch(self, url: str) -> str | None:
        assert self.cache is not None
        info = self.info(url)
        size = int(info.get("size") or 0)
        version = next((str(info[k]) for k in VERSION_KEYS if info.get(k)), "")

        def fill(out: BinaryIO) -> None:
            with RemoteFile(self, url, size, ahead=True) as f:
                while chunk := f.read(BLOCK):
                    out.write(chunk)

        return self.cache.put(url, size, version, fill)


def _without_own_retries(fs: Any) -> None:
    """Switch off gcsfs' own retry loop (6 tries, waits of up to 32 s, around every request) on this
    instance, so that our ``Retry`` alone decides: attempts and deadline mean what they say (a 500 at open
    took minutes, not 5 tries). s3fs' and botocore's are switched off in :func:`~headrace.io.resolve.fs_for`."""
    if any(cls.__name__ == "GCSFileSystem" for cls in type(fs).__mro__):  # and gcsfs' ExtendedGcsFileSystem
        unwrapped = getattr(type(fs)._request, "__wrapped__", None)
        if unwrapped is not None and "_request" not in vars(fs):
            fs._request = types.MethodType(unwrapped, fs)


VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "Content-MD5", "Last-Modified", "LastModified",
                "last_modified", "mtime")  # fmt: skip


class RemoteFile(io.RawIOBase):
    """A seekable remote object read by ranged requests, each retried from its first undelivered byte.

    ``ahead=True`` fetches the next range in the background after each read (for readers in sequence).
    """

    def __init__(self, fs: RemoteFS, url: str, size: int, ahead: bool = False) -> None:
        self._fs, self.url, self.size, self._ahead = fs, url, size, ahead
        self._pos = 0
        self._next: tuple[int, int, Future[bytes]] | None = None
        self._ranges: dict[tuple[int, int], Future[bytes]] = {}  # prefetched: served to reads inside them
        self._recent: tuple[int, bytes] = (0, b"")  # the last range read (a Parquet footer read of a small file
        # is the whole file: the column chunks then come from it)
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def readall(self) -> bytes:
        return self.read(-1)

    def prefetch(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Fetch the byte ranges ``[start, end)`` concurrently in the background (bounded by the shared
        pool); a later read that falls inside one is served from it. :meth:`release` frees them."""
        with self._lock:
            for key in coalesce(ranges, self.size):
                if key[1] > key[0] and key not in self._ranges and not self._inside_recent(*key):
                    self._ranges[key] = _POOL.submit(self._range, *key)

    def release(self, ranges: Sequence[tuple[int, int]]) -> None:
        with self._lock:
            for key in coalesce(ranges, self.size):
                pending = self._ranges.pop(key, None)
                if pending is not None:
                    pending.cancel()

    def _inside_recent(self, start: int, end: int) -> bool:
        at, data = self._recent
        return at <= start and end <= at + len(data)

    def _prefetched(self, start: int, end: int) -> tuple[int, Future[bytes]] | None:
        """Where the prefetched range holding ``[start, end)`` begins, and its bytes to come; None if none."""
        with self._lock:
            for (a, b), pending in self._ranges.items():
                if a <= start and end <= b:
                    return a, pending
        return None

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        recent_at, recent = self._recent
        if recent_at <= self._pos and end <= recent_at + len(recent):  # inside the last range fetched
            data = recent[self._pos - recent_at : end - recent_at]
            self._pos = end
            return data
        found = self._prefetched(self._pos, end)
        if found is not None:
            a, pending = found
            data = pending.result()[self._pos - a : end - a]
            self._pos = end
            return data
        data = self._take(self._pos, end)
        if len(data) <= RECENT:
            self._recent = (self._pos, data)
        self._pos += len(data)
        if self._ahead and self._pos < self.size:  # the next read is most likely as long, from here
            start, stop = self._pos, min(self.size, self._pos + max(len(data), 1 << 16))
            self._next = (start, stop, _POOL.submit(self._range, start, stop))
        return data

    def _take(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``: from the read-ahead when it covers them, else fetched now."""
        pending, self._next = self._next, None
        if pending is not None and pending[0] == start and pending[1] >= end:
            data = pending[2].result()
            return data[: end - start]  # the rest is fetched again next time: rare (read sizes vary little)
        if pending is not None:
            pending[2].cancel()
        return self._range(start, end)

    def _range(self, start: int, end: int) -> bytes:
        """``[start, end)``, retried; a retry asks only for the bytes not yet received."""
        parts: list[bytes] = []
        got = 0

        def once() -> bytes:
            nonlocal got
            data: bytes = self._fs.fs.cat_file(self.url, start=start + got, end=end)
            want = end - start - got
            if len(data) == self.size and want < self.size:  # a server that ignored Range sent it all
                data = data[start + got : end]
            elif len(data) > want:
                data = data[:want]
            parts.append(data)
            got += len(data)
            if got < end - start:
                raise Truncated(f"the body ended {end - start - got} bytes early")
            return b""

        try:
            self._fs.retry.call(once, lambda: f"{redact(self.url)} (bytes {start + got}-{end} of {self.size})",
                                self._fs.stats, lambda: self.closed)  # fmt: skip
        except SourceError:
            raise
        except Exception as e:
            raise self._permanent(e, start + got, end) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _permanent(self, error: Exception, start: int, end: int) -> SourceError:
        """The error a read that no retry can mend raises: what happened, where, what to do."""
        status = status_of(error)
        url = redact(self.url)
        if isinstance(error, FileNotFoundError) or status in (404, 410):
            return SourceError(f"{url}: the object is gone (404) at byte {start} of {self.size}; it was deleted "
                               "or replaced while being read: list the dataset again")  # fmt: skip
        if isinstance(error, PermissionError) or status in (401, 403):
            return SourceError(f"{url}: access denied at byte {start} of {self.size} ({type(error).__name__}); "
                               "check the credentials in storage_options")  # fmt: skip
        what, advice = diagnose(error)
        return SourceError(f"{url}: cannot read bytes {start}-{end}: {what} ({type(error).__name__}: "
                           f"{redact(str(error))})" + (f"; {advice}" if advice else ""))  # fmt: skip

    def close(self) -> None:
        if self._next is not None:
            self._next[2].cancel()
            self._next = None
        self.release(list(self._ranges))
        super().close()


def coalesce(ranges: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """``ranges`` clipped to ``[0, size)``, sorted, and merged where they are less than ``COALESCE`` bytes
    apart: one request instead of several small ones (the bytes between are few).

    >>> coalesce([(100, 200), (0, 50), (5000000, 5000010)], 10**7)
    [(0, 200), (5000000, 5000010)]
    """
    merged: list[tuple[int, int]] = []
    for start, end in sorted((max(0, a), min(size, b)) for a, b in ranges):
        if merged and start - merged[-1][1] < COALESCE:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
