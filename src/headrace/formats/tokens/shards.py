"""``TokenShards``: many token files as one token sequence, for random access."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np

from headrace.core.errors import SourceError
from headrace.formats.tokens.files import (
    _LRU,
    CACHE_CAPACITY,
    DEFAULT_TOKENS_PER_ROW,
    TokenFile,
    bin_format,
    open_token_file,
)
from headrace.io.resolve import fs_for, resolve, split_suffix


class TokenShards:
    """The tokens of many shards as one flat sequence, for random access (windows, nanoGPT-style batches).

    Shard sizes come from metadata; a binary search over the cumulative counts finds the shard of a
    global token or row, and at most ``cache_capacity`` shards are open at once (least recently used
    ones are closed), so thousands of shards never mean thousands of open files. Picklable (the cache
    is not carried). Paths are files, globs or folders of ``.bin``/``.npy`` files, as for ``hr.open``.

    >>> import numpy as np, tempfile, os
    >>> from headrace.formats.tokens import MegatronWriter
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
