"""The token formats as headrace formats: rows of ``input_ids`` read through the open-file cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, contiguous, with_schema
from headrace.formats.tokens.files import (
    _LRU,
    CACHE_CAPACITY,
    COLUMN,
    DEFAULT_TOKENS_PER_ROW,
    TokenFile,
    arrow_type,
    open_token_file,
)
from headrace.io.resolve import Shard

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
