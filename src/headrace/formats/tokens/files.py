"""Token files: Megatron .bin/.idx, nanoGPT raw .bin, .npy — opened, checked and memory-mapped."""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from headrace.core.block import arrow_numbers
from headrace.core.errors import SourceError
from headrace.io.resolve import fs_for, split_suffix

MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
MEGATRON_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8), 2: np.dtype(np.int8), 3: np.dtype(np.int16), 4: np.dtype(np.int32),
    5: np.dtype(np.int64), 6: np.dtype(np.float64), 7: np.dtype(np.float32), 8: np.dtype(np.uint16),
    9: np.dtype(np.uint32),  # not in Megatron-LM's table; some forks write it, so it is read, never written
}  # fmt: skip
WRITE_CODES: dict[np.dtype, int] = {dt: code for code, dt in DTYPE_CODES.items() if dt.kind in "iu" and code != 9}
NANOGPT_DTYPE = np.dtype("<u2")
COLUMN = "input_ids"
DEFAULT_TOKENS_PER_ROW = 2048
CACHE_CAPACITY = 64  # open shards (two memmaps each) kept by the format readers
PIECE_TOKENS = 1 << 20  # a piece holds at most about this many tokens ...
PIECE_ROWS = 8192  # ... and at most this many rows
CHECK_CHUNK = 1 << 20  # index entries validated at a time (bounded memory for huge .idx files)
MAX_CHECKED = 100_000  # indexes remembered as checked, so reopening a shard the cache closed is cheap
_CHECKED: set[tuple[Any, ...]] = set()


def token_dtype(vocab_size: int) -> np.dtype:
    """The Megatron dtype for a vocabulary: uint16 when every id fits, else int32 (Megatron has no uint32).

    >>> token_dtype(50257), token_dtype(100277)
    (dtype('uint16'), dtype('int32'))
    """
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def arrow_type(dtype: np.dtype) -> pa.DataType:
    """The Arrow type of token ids read from a file of ``dtype``: int32, or int64 for int64/uint32 files."""
    return pa.int64() if dtype.itemsize > 4 or dtype == np.uint32 else pa.int32()


def megatron_index_path(url: str) -> str:
    """The ``.idx`` beside a Megatron ``.bin``.

    >>> megatron_index_path("s3://bucket/data/part-00000.bin")
    's3://bucket/data/part-00000.idx'
    """
    base = split_suffix(url)[0]
    return base[: -len(".bin")] + ".idx" if base.lower().endswith(".bin") else base + ".idx"


def bin_format(url: str, exists: Callable[[str], bool] | None = None) -> str:
    """``"megatron"`` if a ``.bin`` file has a sibling ``.idx``, else ``"nanogpt"``. ``exists(url)`` asks the
    dataset's own filesystem (its credentials and retries); without it, a remote store is asked anonymously.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> bin_format(os.path.join(folder, "train.bin"))
    'nanogpt'

    On an object store the check needs the store; if it cannot be asked, the file is taken to be
    Megatron (whose reader then says that the ``.idx`` is missing and how to read it as nanoGPT).
    """
    idx = megatron_index_path(url)
    if exists is None and ("://" not in idx or idx.startswith("file://")):
        return "megatron" if os.path.exists(idx.removeprefix("file://")) else "nanogpt"
    try:
        if exists is not None:
            return "megatron" if exists(idx) else "nanogpt"
        fs, path = fs_for(idx)
        return "megatron" if fs.exists(path) else "nanogpt"
    except Exception:  # no credentials for it (a presigned .bin), or no such protocol: let the reader explain
        return "megatron"


class _Ranged:
    """A flat array on a remote filesystem: ``[a:b]`` is one ranged read."""

    def __init__(self, fs: Any, url: str, dtype: np.dtype, offset: int, count: int) -> None:
        self.fs, self.url, self.dtype, self.offset, self.count = fs, url, dtype, offset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: slice) -> np.ndarray:
        a, b, _ = key.indices(self.count)
        if b <= a:
            return np.empty(0, self.dtype)
        size = self.dtype.itemsize
        try:
            data = self.fs.cat_file(self.url, start=self.offset + a * size, end=self.offset + b * size)
        except OSError as e:
            raise SourceError(f"{self.url}: cannot read tokens {a}..{b} ({e})") from None
        if len(data) != (b - a) * size:
            raise SourceError(f"{self.url}: the file ends before token {b}; it is truncated: re-write it")
        return np.frombuffer(data, dtype=self.dtype)


def _flat(fs: Any, url: str, dtype: np.dtype, offset: int, count: int) -> Any:
    """``count`` items of ``dtype`` from byte ``offset``: a read-only memmap locally, ranged reads elsewhere."""
    if count == 0:
        return np.empty(0, dtype)
    if isinstance(fs, LocalFileSystem):
        return np.memmap(url, dtype=dtype, mode="r", offset=offset, shape=(count,))
    return _Ranged(fs, url, dtype, offset, count)


class TokenFile:
    """One opened token shard: all its tokens as one flat array, and where each row starts.

    Rows are Megatron sequences (``sizes``/``pointers`` of the ``.idx``) or fixed ``width`` slices of
    the flat array. ``tokens[a:b]`` gives tokens (memmap views locally; copy before keeping them).
    """

    def __init__(
        self, url: str, kind: str, tokens: Any, dtype: np.dtype, num_tokens: int, *,
        width: int = 0, pointers: np.ndarray | None = None, sizes: np.ndarray | None = None,
        documents: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        self.url, self.kind, self.tokens, self.dtype, self.num_tokens = url, kind, tokens, dtype, num_tokens
        self.width = width
        self.pointers, self.sizes, self.documents = pointers, sizes, documents
        if pointers is not None:
            self.num_rows = len(pointers)
        elif width > 0:
            self.num_rows = -(-num_tokens // width)
        else:
            self.num_rows = 0
        self._bounds: np.ndarray | None = None

    def row_starts(self, a: int, b: int) -> np.ndarray:
        """Token offsets where rows ``a..b`` start (``b - a + 1`` values; row ``num_rows`` starts at the end)."""
        if self.pointers is None:
            return np.minimum(np.arange(a, b + 1, dtype=np.int64) * self.width, self.num_tokens)
        item = self.dtype.itemsize
        if b < self.num_rows:
            return np.asarray(self.pointers[a : b + 1]) // item
        return np.concatenate([np.asarray(self.pointers[a:b]) // item, [self.num_tokens]]).astype(np.int64)

    def rows(self, a: int, b: int) -> pa.ListArray:
        """Rows ``a..b`` as a ``list<int32>`` (or ``list<int64>``) array: one copy of the tokens, no per-row lists."""
        starts = self.row_starts(a, b)
        first, last = int(starts[0]), int(starts[-1])
        ids = np.asarray(self.tokens[first:last])
        atype = arrow_type(self.dtype)
        values = np.array(ids, dtype=atype.to_pandas_dtype())  # a copy: nothing keeps the memmap alive
        offsets = (starts - first).astype(np.int32)
        return pa.ListArray.from_arrays(arrow_numbers(offsets), arrow_numbers(values, atype))

    def piece_bounds(self) -> np.ndarray:
        """Row boundaries of the pieces: a pure function of the file, at most ``PIECE_ROWS`` rows and about
        ``PIECE_TOKENS`` tokens each (a longer row is a piece of its own)."""
        if self._bounds is None:
            n = self.num_rows
            by_rows = np.arange(0, n, PIECE_ROWS, dtype=np.int64)
            if self.pointers is None:
                step = max(1, min(PIECE_ROWS, PIECE_TOKENS // max(self.width, 1)))
                bounds = np.arange(0, n, step, dtype=np.int64)
            else:
                marks = np.arange(0, self.num_tokens, PIECE_TOKENS, dtype=np.int64) * self.dtype.itemsize
                by_tokens = np.searchsorted(self.pointers, marks, side="left").astype(np.int64)
                bounds = np.union1d(by_rows, by_tokens[by_tokens < n])
            self._bounds = np.union1d(bounds, [0, n]) if n else np.array([0], dtype=np.int64)
        return self._bounds


# -- opening and checking ------------------------------------------------------------------------------


def _read_all(fs: Any, url: str, what: str) -> Any:
    if isinstance(fs, LocalFileSystem):
        if not os.path.exists(url):
            raise SourceError(what)
        size = os.path.getsize(url)
        return np.memmap(url, dtype=np.uint8, mode="r") if size else np.empty(0, np.uint8)
    try:
        return np.frombuffer(fs.cat_file(url), dtype=np.uint8)
    except FileNotFoundError:
        raise SourceError(what) from None
    except OSError as e:
        raise SourceError(f"{url}: cannot read ({e})") from None


def _size(fs: Any, url: str) -> int:
    try:
        return int(os.path.getsize(url) if isinstance(fs, LocalFileSystem) else fs.size(url))
    except OSError as e:
        raise SourceError(f"{url}: cannot open ({e})") from None


def _check_megatron_arrays(
    url: str, dtype: np.dtype, sizes: np.ndarray, pointers: np.ndarray, documents: np.ndarray
) -> int:
    """Checks that sizes and pointers describe back-to-back sequences; returns the number of tokens.

    Reads the index in chunks of ``CHECK_CHUNK`` entries, so memory stays bounded for huge files.
    """
    n, item = len(sizes), dtype.itemsize
    if len(documents) == 0 or int(documents[0]) != 0 or int(documents[-1]) != n:
        first = int(documents[0]) if len(documents) else None
        last = int(documents[-1]) if len(documents) else None
        raise SourceError(f"{url}: corrupt index: document_indices must run from 0 to the sequence count {n}, "
                          f"found {first}..{last}; re-write the file")  # fmt: skip
    expected = 0
    for lo in range(0, n, CHECK_CHUNK):
        s = np.asarray(sizes[lo : lo + CHECK_CHUNK], dtype=np.int64)
        p = np.asarray(pointers[lo : lo + CHECK_CHUNK])
        if (s < 0).any():
            i = lo + int(np.argmax(s < 0))
            raise SourceError(f"{url}: corrupt index: sequence {i} has a negative size {int(sizes[i])}")
        want = expected + np.concatenate([[0], np.cumsum(s[:-1] * item)])
        if not np.array_equal(p, want):
            i = lo + int(np.argmax(p != want))
            at, want_at = int(pointers[i]), int(want[i - lo])
            raise SourceError(f"{url}: corrupt index: sequence {i} starts at byte {at} of the .bin, but the sizes "
                              f"before it put it at byte {want_at}; re-write the file")  # fmt: skip
        expected = int(want[-1]) + int(s[-1]) * item
    for lo in range(0, len(documents), CHECK_CHUNK):
        d = np.asarray(documents[lo : lo + CHECK_CHUNK + 1])
        if (np.diff(d) < 0).any():
            raise SourceError(f"{url}: corrupt index: document_indices decrease near entry {lo}; re-write the file")
    return expected // item


def open_megatron(fs: Any, url: str, *, check: bool = True) -> TokenFile:
    """Open a Megatron ``.bin`` and its ``.idx``; a corrupt or mismatched pair raises :class:`SourceError`."""
    idx_url = megatron_index_path(url)
    missing = (f"{url}: no index {idx_url} beside it; a Megatron dataset is a .bin plus a .idx with the same "
               "prefix (a raw nanoGPT token file: pass format='nanogpt')")  # fmt: skip
    buf = _read_all(fs, idx_url, missing)
    where = idx_url
    if len(buf) < MEGATRON_HEADER.size:
        raise SourceError(f"{where}: truncated Megatron index ({len(buf)} bytes, the header alone is "
                          f"{MEGATRON_HEADER.size}); re-write it")  # fmt: skip
    magic, version, code, seqs, docs = MEGATRON_HEADER.unpack(bytes(buf[: MEGATRON_HEADER.size]))
    if magic != MEGATRON_MAGIC:
        raise SourceError(f"{where}: not a Megatron index (starts with {magic!r}, expected {MEGATRON_MAGIC!r})")
    if version != MEGATRON_VERSION:
        raise SourceError(f"{where}: Megatron index version {version} is not supported (only {MEGATRON_VERSION})")
    if code not in DTYPE_CODES:
        raise SourceError(f"{where}: unknown dtype code {code} in the Megatron index (known: "
                          f"{', '.join(f'{c} {d}' for c, d in DTYPE_CODES.items())})")  # fmt: skip
    dtype = DTYPE_CODES[code].newbyteorder("<")
    if dtype.kind not in "iu":
        raise SourceError(f"{where}: the dataset holds {dtype.name} values (dtype code {code}), not token ids")
    need = MEGATRON_HEADER.size + seqs * 12 + docs * 8
    if len(buf) not in (need, need + seqs):  # + seqs: the int8 modes of a multimodal dataset
        raise SourceError(f"{where}: corrupt Megatron index: {len(buf)} bytes, but its header "
                          f"({seqs} sequences, {docs} document indices) needs {need}; re-write it")  # fmt: skip
    off = MEGATRON_HEADER.size
    sizes = np.frombuffer(buf, dtype="<i4", count=seqs, offset=off)
    pointers = np.frombuffer(buf, dtype="<i8", count=seqs, offset=off + 4 * seqs)
    documents = np.frombuffer(buf, dtype="<i8", count=docs, offset=off + 12 * seqs)
    have = _size(fs, url)
    key = (url, len(buf), have, os.path.getmtime(idx_url) if isinstance(fs, LocalFileSystem) else None)
    if check and key not in _CHECKED:
        _check_megatron_arrays(where, dtype, sizes, pointers, documents)
        if len(_CHECKED) >= MAX_CHECKED:
            _CHECKED.clear()
        _CHECKED.add(key)
    num_tokens = (int(pointers[-1]) // dtype.itemsize + int(sizes[-1])) if seqs else 0
    if have < num_tokens * dtype.itemsize:
        raise SourceError(f"{url}: the .bin has {have:,} bytes but its index {idx_url} describes "
                          f"{num_tokens:,} {dtype.name} tokens ({num_tokens * dtype.itemsize:,} bytes): it is "
                          "truncated; re-write it")  # fmt: skip
    tokens = _flat(fs, url, dtype, 0, num_tokens)
    return TokenFile(url, "megatron", tokens, dtype, num_tokens, pointers=pointers, sizes=sizes, documents=documents)


def open_nanogpt(fs: Any, url: str, tokens_per_row: int) -> TokenFile:
    """Open a raw nanoGPT ``.bin``: uint16 tokens back to back, rows of ``tokens_per_row``."""
    size = _size(fs, url)
    if size % NANOGPT_DTYPE.itemsize:
        raise SourceError(f"{url}: {size:,} bytes is not a whole number of uint16 tokens; a nanoGPT .bin is "
                          "raw uint16 ids (a Megatron .bin needs its .idx beside it)")  # fmt: skip
    n = size // NANOGPT_DTYPE.itemsize
    return TokenFile(url, "nanogpt", _flat(fs, url, NANOGPT_DTYPE, 0, n), NANOGPT_DTYPE, n, width=tokens_per_row)


def open_npy(fs: Any, url: str, tokens_per_row: int) -> TokenFile:
    """Open a ``.npy`` of token ids: 1-D (rows of ``tokens_per_row``) or 2-D (a row per line)."""
    try:
        with fs.open(url, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else (
                np.lib.format.read_array_header_2_0
            )  # fmt: skip
            shape, fortran, dtype = read_header(f, max_header_size=1 << 20)
            offset = f.tell()
    except (ValueError, OSError, SyntaxError) as e:
        raise SourceError(f"{url}: not a readable .npy file ({e}); re-write it with numpy.save") from None
    if dtype.hasobject or dtype.kind not in "iu":
        raise SourceError(f"{url}: the array holds {dtype} values; token ids must be integers "
                          "(convert with array.astype(numpy.int32) and save again)")  # fmt: skip
    if len(shape) not in (1, 2):
        raise SourceError(
            f"{url}: a {len(shape)}-D array; token arrays are 1-D (a token stream) or 2-D [rows, seq_len]"
        )
    if fortran and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
        raise SourceError(f"{url}: a Fortran-ordered array; save numpy.ascontiguousarray(array) instead")
    n = int(np.prod(shape))
    have = _size(fs, url)
    if have < offset + n * dtype.itemsize:
        raise SourceError(f"{url}: {have:,} bytes, but its header describes {shape} {dtype} values "
                          f"({offset + n * dtype.itemsize:,} bytes): it is truncated; re-write it")  # fmt: skip
    width = int(shape[1]) if len(shape) == 2 else tokens_per_row
    file = TokenFile(url, "npy", _flat(fs, url, dtype, offset, n), dtype, n, width=width)
    if len(shape) == 2:
        file.num_rows = int(shape[0])  # also when seq_len is 0
    return file


def open_token_file(fs: Any, url: str, kind: str, tokens_per_row: int = DEFAULT_TOKENS_PER_ROW) -> TokenFile:
    """Open a token shard of ``kind`` (``"megatron"``, ``"nanogpt"`` or ``"npy"``).

    >>> import numpy as np, tempfile, os
    >>> from fsspec.implementations.local import LocalFileSystem
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.npy")
    >>> np.save(path, np.arange(12, dtype=np.int32).reshape(3, 4))
    >>> f = open_token_file(LocalFileSystem(), path, "npy")
    >>> f.num_rows, f.num_tokens, f.rows(1, 3).to_pylist()
    (3, 12, [[4, 5, 6, 7], [8, 9, 10, 11]])
    """
    if split_suffix(url)[1] is not None:
        raise SourceError(f"{url}: compressed token files cannot be memory-mapped; decompress it first")
    if tokens_per_row < 1:
        raise ValueError(f"tokens_per_row must be >= 1, got {tokens_per_row}")
    if kind == "megatron":
        return open_megatron(fs, url)
    if kind == "nanogpt":
        return open_nanogpt(fs, url, tokens_per_row)
    if kind == "npy":
        return open_npy(fs, url, tokens_per_row)
    raise ValueError(f"unknown token file kind {kind!r}; use megatron, nanogpt or npy")


class _LRU:
    """A bounded, thread-safe cache of open token files (each holds memory maps, i.e. file handles)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache_capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Any, TokenFile] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], TokenFile]) -> TokenFile:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        file = make()  # outside the lock: opening may read a large index
        with self._lock:
            self._items[key] = file
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)  # the memmaps close once no array views them
        return file

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
