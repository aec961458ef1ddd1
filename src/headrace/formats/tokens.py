"""Pre-tokenized data: Megatron-LM indexed datasets, nanoGPT ``.bin`` files and ``.npy`` arrays.

All three are *indexed* (row counts come from metadata, never from reading the tokens) and read
through ``numpy.memmap`` (ranged reads on object stores). Each row is one column, ``input_ids``: a
``list<int32>`` (``list<int64>`` for int64/uint32 files), built from one flat array and offsets —
never a Python list per row.

How to name them:

- **Megatron** (``MMapIndexedDataset``): name the ``.bin`` files (``hr.open("data/*.bin")`` or a
  folder); a ``.bin`` with a sibling ``.idx`` (same prefix) is Megatron, one row per sequence (a
  document, for data written by Megatron's ``preprocess_data.py`` or ``headrace prepare``). The
  ``.idx`` layout, little-endian: magic ``b"MMIDIDX\\x00\\x00"``, version ``uint64`` (1), dtype code
  ``uint8`` (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16; code 9 =
  uint32, which some forks write, is read too), sequence count ``uint64``, document count ``uint64``,
  then ``sizes`` int32[sequences], ``pointers`` int64[sequences] (byte offsets into the ``.bin``)
  and ``document_indices`` int64[documents] (``0 ... sequences``).
- **nanoGPT**: a ``.bin`` without a sibling ``.idx`` is a flat array of uint16 tokens with no header
  and no document boundaries; rows are ``tokens_per_row`` tokens (default 2048, the last row
  shorter). ``format="nanogpt"`` forces it.
- **.npy**: a 1-D integer array (rows as for nanoGPT) or a 2-D ``[n, seq_len]`` array (a row per
  line). Never unpickled.

``tokens_per_row`` is read from ``ReadOptions.extra``. For random access to the tokens of many
shards as one sequence (windows), use :class:`TokenShards`; to write Megatron files,
:class:`MegatronWriter`.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from headrace.core.errors import SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, contiguous, with_schema
from headrace.io.resolve import Shard, fs_for, resolve, split_suffix

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


def bin_format(url: str) -> str:
    """``"megatron"`` if a ``.bin`` file has a sibling ``.idx``, else ``"nanogpt"``.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> bin_format(os.path.join(folder, "train.bin"))
    'nanogpt'

    On an object store the check needs the store; if it cannot be asked, the file is taken to be
    Megatron (whose reader then says that the ``.idx`` is missing and how to read it as nanoGPT).
    """
    idx = megatron_index_path(url)
    if "://" not in idx or idx.startswith("file://"):
        return "megatron" if os.path.exists(idx.removeprefix("file://")) else "nanogpt"
    try:
        fs, path = fs_for(idx)
        return "megatron" if fs.exists(path) else "nanogpt"
    except Exception:  # no credentials here, or no such protocol: let the reader explain
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
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=atype))

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


_OPEN = _LRU(CACHE_CAPACITY)


def tokens_per_row(opts: ReadOptions) -> int:
    """The ``tokens_per_row`` of ``opts.extra`` (default 2048), checked."""
    value = dict(opts.extra).get("tokens_per_row", DEFAULT_TOKENS_PER_ROW)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"tokens_per_row must be an integer >= 1, got {value!r}")
    return value


# -- the format readers ----------------------------------------------------------------------------------


class _TokenFormat(Format):
    indexed = True

    def open(self, fs: Any, shard: Shard, opts: ReadOptions) -> TokenFile:
        width = tokens_per_row(opts)
        key = (self.name, shard.url, shard.size, width if self.name != "megatron" else 0)
        return _OPEN.get(key, lambda: open_token_file(fs, shard.url, self.name, width))

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        return pa.schema([pa.field(COLUMN, pa.list_(arrow_type(self.open(fs, shard, opts).dtype)))])

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        return self.open(fs, shard, opts).num_rows

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        file = self.open(fs, shard, opts)
        bounds = file.piece_bounds()
        k = max(0, int(np.searchsorted(bounds, max(start.slot, seek), side="right")) - 1)
        for a, b in zip(bounds[k:-1].tolist(), bounds[k + 1 :].tolist(), strict=True):
            batch = pa.RecordBatch.from_arrays([file.rows(a, b)], names=[COLUMN])
            yield contiguous(with_schema(batch, opts.schema, shard.url), a)


class MegatronFormat(_TokenFormat):
    """Megatron-LM ``.bin`` + ``.idx``: a row per sequence."""

    name = "megatron"


class NanoGPTFormat(_TokenFormat):
    """nanoGPT raw uint16 ``.bin``: rows of ``tokens_per_row`` tokens."""

    name = "nanogpt"


class NpyFormat(_TokenFormat):
    """``.npy`` integer arrays: 1-D (rows of ``tokens_per_row``) or 2-D (a row per line)."""

    name = "npy"


# -- random access ---------------------------------------------------------------------------------------


class TokenShards:
    """The tokens of many shards as one flat sequence, for random access (windows, nanoGPT-style batches).

    Shard sizes come from metadata; a binary search over the cumulative counts finds the shard of a
    global token or row, and at most ``cache_capacity`` shards are open at once (least recently used
    ones are closed), so thousands of shards never mean thousands of open files. Picklable (the cache
    is not carried). Paths are files, globs or folders of ``.bin``/``.npy`` files, as for ``hr.open``.

    >>> import numpy as np, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> for i, docs in enumerate([[[1, 2, 3], [4]], [[5, 6]]]):
    ...     with MegatronWriter(os.path.join(folder, f"part-{i}"), np.uint16) as w:
    ...         for d in docs:
    ...             w.add_document(np.array(d))
    >>> shards = TokenShards(os.path.join(folder, "*.bin"))
    >>> shards.num_tokens, shards.tokens(2, 3).tolist(), shards.locate(4), shards.row(2).tolist()
    (6, [3, 4, 5], (1, 0), [5, 6])
    """

    def __init__(
        self,
        paths: str | Sequence[str],
        *,
        format: str | None = None,  # noqa: A002 - as in hr.open
        tokens_per_row: int = DEFAULT_TOKENS_PER_ROW,
        cache_capacity: int = CACHE_CAPACITY,
        dtype: Any = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if format is not None and format not in ("megatron", "nanogpt", "npy"):
            raise ValueError(f"format must be megatron, nanogpt or npy, got {format!r}")
        fs_list: list[Any] = []

        def fs_of(url: str) -> tuple[Any, str]:
            fs, path = fs_for(url, storage_options)
            fs_list.append(fs)
            return fs, path

        def token_suffix(path: str) -> bool:
            return format is not None or split_suffix(path)[0].lower().endswith((".bin", ".npy"))

        found = resolve(paths, fs_of, token_suffix)
        self.fs = fs_list[0]
        self.urls = [url for url, _ in found]
        self.kinds = [format or _kind_of(url) for url in self.urls]
        self.tokens_per_row = tokens_per_row
        self.cache_capacity = cache_capacity
        self._cache = _LRU(cache_capacity)
        self._last: tuple[int, TokenFile] | None = None
        counts, rows, dtypes = [], [], []
        for i in range(len(self.urls)):
            f = self._file(i)
            counts.append(f.num_tokens)
            rows.append(f.num_rows)
            dtypes.append(f.dtype)
        self.cum_tokens = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self.cum_rows = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).astype(np.int64)
        self._starts: list[int] = self.cum_tokens.tolist()  # bisect on a list: the fastest scalar lookup
        self.dtype = np.dtype(dtype) if dtype is not None else np.result_type(*dtypes).newbyteorder("=")

    @property
    def num_tokens(self) -> int:
        return int(self.cum_tokens[-1])

    @property
    def num_rows(self) -> int:
        return int(self.cum_rows[-1])

    @property
    def open_files(self) -> int:
        """How many shards are open now (at most ``cache_capacity``)."""
        return len(self._cache)

    def _file(self, i: int) -> TokenFile:
        last = self._last  # the shard used last: no lock on the hot path (one read of a tuple is atomic)
        if last is not None and last[0] == i:
            return last[1]
        url, kind = self.urls[i], self.kinds[i]
        file = self._cache.get(i, lambda: open_token_file(self.fs, url, kind, self.tokens_per_row))
        self._last = (i, file)
        return file

    def locate(self, token: int) -> tuple[int, int]:
        """``(shard, offset)`` of global token ``token``."""
        if not 0 <= token < self.num_tokens:
            raise IndexError(f"token {token} is out of range (the shards hold {self.num_tokens} tokens)")
        s = bisect.bisect_right(self._starts, token) - 1
        return s, token - self._starts[s]

    def tokens(self, start: int, n: int) -> np.ndarray:
        """Global tokens ``start .. start + n`` as one contiguous array, across shard boundaries."""
        if n < 0 or start < 0 or start + n > self.num_tokens:
            raise IndexError(f"tokens {start}..{start + n} are out of range (the shards hold {self.num_tokens})")
        out = np.empty(n, dtype=self.dtype)
        pos = 0
        s = bisect.bisect_right(self._starts, start) - 1
        while pos < n:
            f = self._file(s)
            off = start + pos - self._starts[s]
            take = min(n - pos, f.num_tokens - off)
            if take > 0:
                out[pos : pos + take] = f.tokens[off : off + take]
                pos += take
            s += 1
        return out

    def windows(self, starts: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
        """``[len(starts), n]``: the ``n`` tokens from each global start (nanoGPT's ``get_batch``, any shards).

        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "train.bin")
        >>> np.arange(100, dtype=np.uint16).tofile(path)
        >>> TokenShards(path).windows([0, 90], 3).tolist()
        [[0, 1, 2], [90, 91, 92]]
        """
        at = np.asarray(starts, dtype=np.int64).reshape(-1)
        if n < 0 or (len(at) and (int(at.min()) < 0 or int(at.max()) + n > self.num_tokens)):
            raise IndexError(f"windows of {n} tokens must lie within the {self.num_tokens} tokens of the shards")
        out = np.empty((len(at), n), dtype=self.dtype)
        shard = np.searchsorted(self.cum_tokens, at, side="right") - 1
        inside = at + n <= self.cum_tokens[np.minimum(shard + 1, len(self.cum_tokens) - 1)]
        order = np.argsort(shard, kind="stable")  # one shard after another: each opened once
        for r in order.tolist():
            start = int(at[r])
            if inside[r]:
                s = int(shard[r])
                off = start - self._starts[s]
                out[r] = self._file(s).tokens[off : off + n]
            else:
                out[r] = self.tokens(start, n)
        return out

    def row(self, index: int) -> np.ndarray:
        """The tokens of global row ``index`` (a Megatron sequence, or a fixed-size row)."""
        if not 0 <= index < self.num_rows:
            raise IndexError(f"row {index} is out of range (the shards hold {self.num_rows} rows)")
        s = int(np.searchsorted(self.cum_rows, index, side="right")) - 1
        f = self._file(s)
        r = index - int(self.cum_rows[s])
        a, b = (int(x) for x in f.row_starts(r, r + 1))
        return np.array(f.tokens[a:b], dtype=self.dtype)

    def close(self) -> None:
        """Close every open shard (they reopen on the next access)."""
        self._cache.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = state["_last"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = _LRU(self.cache_capacity)


def _kind_of(url: str) -> str:
    base = split_suffix(url)[0].lower()
    if base.endswith(".npy"):
        return "npy"
    if base.endswith(".bin"):
        return bin_format(url)
    raise SourceError(f"{url}: not a token file (.bin or .npy); pass format= (megatron, nanogpt or npy)")


# -- writing ------------------------------------------------------------------------------------------------


class MegatronWriter:
    """Writes a Megatron-LM indexed dataset: ``PREFIX.bin`` then ``PREFIX.idx``, each atomically.

    Each document is one sequence (as Megatron's ``preprocess_data.py`` writes without sentence
    splitting). Both files are written under temporary names and renamed into place on :meth:`close`,
    the ``.bin`` first, so a ``.idx`` only ever sits beside a complete ``.bin``. ``dtype``: uint16 for
    vocabularies up to 65,536 ids, else int32 (:func:`token_dtype`); Megatron has no uint32 code.

    >>> import numpy as np, tempfile, os, headrace as hr
    >>> prefix = os.path.join(tempfile.mkdtemp(), "part-00000")
    >>> with MegatronWriter(prefix, np.uint16) as w:
    ...     w.add_document(np.array([5, 6, 7]))
    ...     w.add_documents(np.array([1, 2, 3]), np.array([1, 2]))
    >>> [r["input_ids"] for r in hr.open(prefix + ".bin")]
    [[5, 6, 7], [1], [2, 3]]
    """

    def __init__(self, prefix: str, dtype: Any = np.uint16) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in WRITE_CODES:
            raise ValueError(f"Megatron token files hold one of {', '.join(d.name for d in WRITE_CODES)}, not "
                             f"{self.dtype.name} (for vocabularies over 65,536 ids use int32)")  # fmt: skip
        self.prefix = os.fspath(prefix)
        self.bin_path, self.idx_path = self.prefix + ".bin", self.prefix + ".idx"
        self._tmp = self.bin_path + ".tmp"
        self._file: Any = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._hash = hashlib.sha256()
        self._sizes: list[np.ndarray] = []
        self.num_tokens = 0
        self.num_documents = 0
        self.digests: dict[str, tuple[int, str]] = {}  # after close: {"bin"|"idx": (bytes, sha256 hex)}
        info = np.iinfo(self.dtype)
        self._range = (int(info.min), int(info.max))

    def add_document(self, ids: np.ndarray) -> None:
        """Append one document (a 1-D array of token ids)."""
        ids = np.asarray(ids)
        self.add_documents(ids, np.array([ids.size], dtype=np.int64))

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given back to back in ``flat``, ``lengths[i]`` ids each (what tokenizers return)."""
        flat, lengths = np.asarray(flat).reshape(-1), np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != flat.size or (lengths < 0).any():
            raise ValueError(f"lengths (sum {int(lengths.sum())}) do not split the {flat.size} ids")
        if (lengths > np.iinfo(np.int32).max).any():
            raise ValueError("a document longer than 2**31 - 1 tokens does not fit Megatron's int32 sizes")
        if flat.size:
            if flat.dtype.kind not in "iu":
                raise ValueError(f"token ids must be integers, got {flat.dtype}")
            lo, hi = int(flat.min()), int(flat.max())
            if lo < self._range[0] or hi > self._range[1]:
                bad = lo if lo < self._range[0] else hi
                raise ValueError(f"token id {bad} does not fit {self.dtype.name} (range {self._range[0]}.."
                                 f"{self._range[1]}); write int32 files for this vocabulary")  # fmt: skip
        data = flat.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._sizes.append(lengths.astype(np.int32))
        self.num_tokens += flat.size
        self.num_documents += len(lengths)

    def close(self) -> None:
        """Write the ``.idx`` and move both files into place."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self.digests["bin"] = (self.num_tokens * self.dtype.itemsize, self._hash.hexdigest())
        os.replace(self._tmp, self.bin_path)
        index = megatron_index_bytes(self.dtype, np.concatenate([np.zeros(0, np.int32), *self._sizes]))
        _write_atomic(self.idx_path, index)
        self.digests["idx"] = (len(index), hashlib.sha256(index).hexdigest())

    def abort(self) -> None:
        """Drop what was written (nothing is left under the final names)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> MegatronWriter:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def megatron_index_bytes(dtype: np.dtype, sizes: np.ndarray) -> bytes:
    """The ``.idx`` of back-to-back sequences of ``sizes`` tokens, one document each.

    >>> raw = megatron_index_bytes(np.dtype(np.uint16), np.array([3, 1], dtype=np.int32))
    >>> raw[:7], len(raw) == 34 + 2 * 4 + 2 * 8 + 3 * 8
    (b'MMIDIDX', True)
    """
    n = len(sizes)
    sizes64 = sizes.astype(np.int64)
    pointers = np.zeros(n, dtype="<i8")
    if n > 1:
        np.cumsum(sizes64[:-1] * dtype.itemsize, out=pointers[1:])
    header = MEGATRON_HEADER.pack(MEGATRON_MAGIC, MEGATRON_VERSION, WRITE_CODES[np.dtype(dtype)], n, n + 1)
    documents = np.arange(n + 1, dtype="<i8")
    return header + sizes.astype("<i4").tobytes() + pointers.tobytes() + documents.tobytes()


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = [
    "DTYPE_CODES",
    "MegatronFormat",
    "MegatronWriter",
    "NanoGPTFormat",
    "NpyFormat",
    "TokenFile",
    "TokenShards",
    "bin_format",
    "megatron_index_bytes",
    "open_token_file",
    "token_dtype",
]
