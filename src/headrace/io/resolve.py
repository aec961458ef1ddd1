"""From what the user typed (paths, globs, directories, lists) to an ordered list of shards."""

from __future__ import annotations

import io
import lzma
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from headrace.core.errors import SourceError
from headrace.core.redact import redact, register
from headrace.io.cache import DiskCache
from headrace.io.remote import RemoteFS
from headrace.io.retry import Retry, diagnose

COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
GLOB_CHARS = set("*?[")
METADATA_FILES = frozenset({"manifest.json"})  # written beside token shards by `headrace prepare`; not data


@dataclass(frozen=True)
class Shard:
    """One file of a dataset: where it is, how big, in which format and compression."""

    url: str
    size: int
    format: str
    compression: str | None = None

    @property
    def name(self) -> str:
        return url_path(self.url).rsplit("/", 1)[-1]

    def __repr__(self) -> str:
        return f"Shard({redact(self.url)!r}, size={self.size}, format={self.format!r})"


def url_path(url: str) -> str:
    """``url`` without the query and fragment of an HTTP(S) URL (``?X-Amz-Signature=...``, ``?sig=...``):
    the part that names the file, its suffix and any glob."""
    if url.lower().startswith(("http://", "https://")):
        return url.split("#", 1)[0].split("?", 1)[0]
    return url


def split_suffix(url: str) -> tuple[str, str | None]:
    """``("x.jsonl", "zstd")`` for ``"x.jsonl.zst"``: the name without its compression suffix."""
    url = url_path(url)
    lower = url.lower()
    for suffix, codec in COMPRESSIONS.items():
        if lower.endswith(suffix):
            return url[: -len(suffix)], codec
    return url, None


def resolve(
    urls: str | Sequence[str],
    fs_for: Any,
    known_suffix: Any,
) -> list[tuple[str, int]]:
    """``(url, size)`` of every file ``urls`` names, in order: each glob/directory sorted, lists kept in order.

    ``fs_for(url) -> (fs, path)`` opens the filesystem; ``known_suffix(name) -> bool`` keeps the data
    files of a directory (hidden files and ``_SUCCESS`` markers are skipped).
    """
    items = [urls] if isinstance(urls, str) else list(urls)
    if not items:
        raise SourceError("no path given: pass a file, directory, glob or a list of them to headrace.open")
    found: list[tuple[str, int]] = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise SourceError(f"not a path: {item!r}; pass strings such as 'data/*.parquet'")
        fs, path = fs_for(item)
        if isinstance(fs, LocalFileSystem):
            path = os.path.normpath(os.path.abspath(path))  # one file, one shard, however it is spelled
        try:
            found += _expand(fs, path, item, known_suffix)
        except SourceError:  # a clear one already (GaveUp: the retries are spent, saying on what)
            raise
        except Exception as e:  # OSError, and what HTTP clients raise of their own (httpx, aiohttp)
            raise cannot_open(item, e, isinstance(fs, LocalFileSystem)) from None
    seen: set[str] = set()
    unique = []
    for url, size in found:
        if url not in seen:
            seen.add(url)
            unique.append((url, size))
    return unique


def _expand(fs: Any, path: str, given: str, known_suffix: Any) -> list[tuple[str, int]]:
    if any(c in (url_path(path) if _is_http(fs) else path) for c in GLOB_CHARS):
        infos = fs.glob(path, detail=True)
        files = sorted((p, i) for p, i in infos.items() if i.get("type") != "directory")
        if not files:
            raise SourceError(f"the glob {given!r} matched no files; check the pattern and the working directory")
        return [(_unstrip(fs, p, given), _size(fs, p, i)) for p, i in files]
    info = fs.info(path)  # info, not exists: fsspec's exists() answers False on any error, a network fault included
    if info.get("type") == "directory" or (path.endswith("/") and _is_http(fs) and fs.isdir(path)):
        infos = fs.find(path, detail=True)
        files = sorted(
            (p, i)
            for p, i in infos.items()
            if not any(part.startswith((".", "_")) for part in p[len(path) :].split("/"))
            and p.rsplit("/", 1)[-1] not in METADATA_FILES
            and known_suffix(p)
        )
        if not files:
            raise SourceError(f"the directory {given!r} holds no data files headrace can read")
        return [(_unstrip(fs, p, given), _size(fs, p, i)) for p, i in files]
    return [(_unstrip(fs, path, given), _size(fs, path, info))]


def cannot_open(given: str, error: Exception, local: bool = False) -> SourceError:
    """The error for a path or URL that cannot be listed or opened: what the server answered (not found,
    access denied, unknown host, connection refused, a status) and what to do about it."""
    if local:
        if isinstance(error, FileNotFoundError):
            return SourceError(f"no such file or directory: {given!r}")
        if isinstance(error, PermissionError):
            return SourceError(f"{given}: access denied ({error}); check the file's permissions")
        return SourceError(f"{given}: cannot list or open ({type(error).__name__}: {error})")
    what, advice = diagnose(error)
    if what.startswith("not found"):
        return SourceError(f"no such file or directory: {given!r}: {what}; {advice}")
    if what.startswith("access denied"):
        return SourceError(f"{given}: {what}; {advice}")
    said = f"{type(error).__name__}: {redact(str(error))}"
    what = "" if what == type(error).__name__ else f": {what}"
    return SourceError(f"{given}: cannot list or open ({said}){what}" + (f"; {advice}" if advice else ""))


def _size(fs: Any, path: str, info: Mapping[str, Any]) -> int:
    """The file's size; listings of HTTP servers (links in a page) have none, so ask the file (HEAD)."""
    size = info.get("size")
    if size is None:
        size = fs.size(path)
    return int(size or 0)


def _is_http(fs: Any) -> bool:
    """An HTTP "directory" is a page of links: ``info`` calls it a file, so ``dir/`` is listed on request."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("http", "https")


def _unstrip(fs: Any, path: str, given: str) -> str:
    """The URL of ``path``, in the scheme the user wrote when the filesystem has several (``az://``, not
    adlfs' first name ``abfs://``), so that shard names and errors read as the user's URLs."""
    if isinstance(fs, LocalFileSystem):
        return path
    url: str = fs.unstrip_protocol(path)
    scheme = given.split("://", 1)[0] if "://" in given else ""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if scheme in protocols and "://" in url and not url.startswith(f"{scheme}://"):
        url = f"{scheme}://{url.split('://', 1)[1]}"
    return url


def fs_for(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    retry: Retry | None = None,
    cache: DiskCache | None = None,
    ahead: int = 2,
) -> tuple[Any, str]:
    """The filesystem and path for ``url``: local files as fsspec's, anything remote as a :class:`RemoteFS`
    (retried reads, ``cache`` on disk). The secrets in ``storage_options`` are registered for redaction.
    On S3, s3fs' and botocore's own retries are switched off (unless ``storage_options`` sets them), so
    ``retry`` alone decides: attempts and deadline mean what they say, and backoff starts at 50 ms, not
    at botocore's seconds."""
    register(storage_options)
    options = dict(storage_options or {})
    ours = url.split("://", 1)[0] in ("s3", "s3a") and "retries" not in (options.get("config_kwargs") or {})
    if ours:  # one retry policy, ours, unless the user configured botocore's
        options["config_kwargs"] = {**(options.get("config_kwargs") or {}),
                                    "retries": {"mode": "standard", "total_max_attempts": 1}}  # fmt: skip
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    policy = retry or Retry()
    if scheme in ("http", "https") and "timeout" not in (options.get("client_kwargs") or {}):
        try:
            import aiohttp  # fsspec's HTTP client; its default waits 5 minutes on a server that went quiet
        except ImportError as e:
            raise SourceError(f"cannot open {url!r}: {e}; pip install 'headrace[remote]'") from e

        timeout = aiohttp.ClientTimeout(total=policy.deadline, sock_connect=policy.timeout, sock_read=policy.timeout)
        options["client_kwargs"] = {**(options.get("client_kwargs") or {}), "timeout": timeout}
    if scheme in ("s3", "s3a"):
        config = options.get("config_kwargs") or {}
        options["config_kwargs"] = {"connect_timeout": policy.timeout, "read_timeout": policy.timeout, **config}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as e:
        raise SourceError(f"cannot open {url!r}: {e}") from e
    if isinstance(fs, LocalFileSystem):
        return fs, path
    if ours:
        fs.retries = 1  # s3fs' own loop (a class attribute): this instance is ours, by its config_kwargs
    return RemoteFS(fs, retry, cache, ahead), path


def open_file(fs: Any, shard: Shard, sequential: bool = False) -> BinaryIO:
    """The shard's raw bytes: a remote object by retried ranged reads (``sequential``: read ahead in
    large blocks), or from the disk cache; a local file as it is."""
    try:
        if isinstance(fs, RemoteFS):
            return fs.open_remote(shard.url, shard.size, sequential)
        return fs.open(shard.url, "rb")  # type: ignore[no-any-return]
    except SourceError:
        raise
    except OSError as e:
        raise SourceError(f"{shard.url}: cannot open ({e})") from None


def local_path(fs: Any, shard: Shard) -> str | None:
    """A local path holding the shard's bytes (to memory-map): the file itself, or its copy in the disk
    cache (downloaded now if need be); None when it must be read remotely."""
    if isinstance(fs, LocalFileSystem):
        return shard.url
    if isinstance(fs, RemoteFS):
        return fs.cached(shard.url)
    return None


def open_stream(fs: Any, shard: Shard) -> BinaryIO:
    """A binary stream of the shard's decompressed bytes.

    A file that cannot be opened, and compressed data that is truncated or corrupt, raise a
    :class:`SourceError` naming the file (and the decompressed byte where reading broke).
    """
    raw = open_file(fs, shard, sequential=True)
    if shard.compression is None:
        return raw  # type: ignore[no-any-return]
    if shard.compression == "xz":
        stream: Any = lzma.LZMAFile(raw, "rb")  # noqa: SIM115 - closed with the stream returned
    else:
        stream = pa.CompressedInputStream(raw, shard.compression)
    return io.BufferedReader(_Decompressed(stream, raw, shard), 1 << 20)  # type: ignore[return-value]


class _Decompressed(io.RawIOBase):
    """A decompressing stream as a Python raw stream (so BufferedReader and readline work) whose
    decoding errors name the file and the position."""

    def __init__(self, stream: Any, raw: Any, shard: Shard) -> None:
        self._stream = stream
        self._raw = raw  # the compressed file, closed with the stream
        self._shard = shard
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._stream.read(len(buffer))
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise SourceError(
                f"{self._shard.url}: cannot decompress ({self._shard.compression}) after byte {self._pos} of the "
                f"decompressed data ({e}); the file is truncated or corrupt: re-write or remove it"
            ) from None
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def close(self) -> None:
        self._stream.close()
        self._raw.close()
        super().close()
