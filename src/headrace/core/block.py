"""Blocks: what flows between stages — rows in columnar form plus where each row came from.

A column is a ``pyarrow.Array`` (strings, lists, anything Arrow holds) or a ``numpy.ndarray`` whose
first axis is the row. ``shard`` and ``row`` give each row's lineage (index of the source shard and
row inside it; -1 where a batched function changed the row count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa

Column: TypeAlias = pa.Array | np.ndarray

BLOCK_BYTES = 4 << 20  # stages that copy rows into new blocks make them at most this large (rows of 7 KB: ~600)


def capped_rows(block_rows: int, nbytes: int, rows: int) -> int:
    """``block_rows``, or fewer so that a block of rows as large as these (``nbytes`` over ``rows``) fits BLOCK_BYTES.

    >>> capped_rows(4096, nbytes=7_000_000, rows=1000), capped_rows(4096, nbytes=100, rows=10)
    (599, 4096)
    """
    per_row = nbytes / max(rows, 1)
    return max(1, min(block_rows, int(BLOCK_BYTES / per_row))) if per_row > 0 else block_rows


@dataclass(frozen=True)
class Block:
    """An immutable batch of rows.

    >>> b = Block.from_pydict({"x": [1, 2, 3]})
    >>> b.num_rows, b.slice(1, 3).to_pylist()
    (3, [{'x': 2}, {'x': 3}])
    """

    columns: Mapping[str, Column]
    shard: np.ndarray
    row: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.shard)

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch | pa.Table, shard: int, first_row: int) -> Block:
        """A block of consecutive rows ``first_row..`` of one shard."""
        if isinstance(batch, pa.Table):
            batch = (
                batch.combine_chunks().to_batches()[0]
                if batch.num_rows
                else pa.RecordBatch.from_pylist([], schema=batch.schema)
            )
        n = batch.num_rows
        return cls(
            columns={name: batch.column(i) for i, name in enumerate(batch.schema.names)},
            shard=np.full(n, shard, dtype=np.int32),
            row=np.arange(first_row, first_row + n, dtype=np.int64),
        )

    @classmethod
    def from_pydict(cls, data: Mapping[str, Sequence[Any] | Column], shard: int = -1) -> Block:
        columns = {name: as_column(values) for name, values in data.items()}
        n = _common_length(columns)
        return cls(columns=columns, shard=np.full(n, shard, dtype=np.int32), row=np.full(n, -1, dtype=np.int64))

    def take(self, indices: np.ndarray) -> Block:
        idx = np.asarray(indices, dtype=np.int64)
        return Block(
            columns={k: _take(c, idx) for k, c in self.columns.items()},
            shard=self.shard[idx],
            row=self.row[idx],
        )

    def slice(self, start: int, stop: int) -> Block:
        return Block(
            columns={k: c[start:stop] for k, c in self.columns.items()},
            shard=self.shard[start:stop],
            row=self.row[start:stop],
        )

    def filter(self, mask: np.ndarray) -> Block:
        return self.take(np.flatnonzero(mask))

    def to_pylist(self) -> list[dict[str, Any]]:
        names = list(self.columns)
        cols = [to_pylist(self.columns[k]) for k in names]
        return [dict(zip(names, values, strict=True)) for values in zip(*cols, strict=True)]

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {k: to_numpy(c) for k, c in self.columns.items()}

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values())


class Parts:
    """Blocks read one after another, taken from by row number without concatenating them into one.

    A window of rows kept this way costs its blocks and nothing more; ``take`` copies only the rows
    it returns.

    >>> p = Parts([Block.from_pydict({"x": [0, 1, 2]}), Block.from_pydict({"x": [3, 4]})])
    >>> p.num_rows, p.take(np.array([4, 0, 3, 2])).columns["x"].to_pylist()
    (5, [4, 0, 3, 2])
    """

    def __init__(self, blocks: Sequence[Block]) -> None:
        self.blocks = list(blocks)
        self.starts = np.cumsum([0] + [b.num_rows for b in self.blocks])

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    def nbytes(self) -> int:
        return sum(b.nbytes() for b in self.blocks)

    def take(self, indices: np.ndarray) -> Block:
        """Rows ``indices`` (numbers over all the blocks), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(self.blocks) == 1 or not len(idx):
            return self.blocks[0].take(idx)
        which = np.searchsorted(self.starts, idx, side="right") - 1
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(self.blocks) + 1))
        pieces = [
            self.blocks[b].take(idx[order[lo:hi]] - self.starts[b])
            for b, (lo, hi) in enumerate(pairwise(bounds))
            if hi > lo
        ]
        if len(pieces) == 1:
            return pieces[0]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return concat(pieces).take(back)


def concat(blocks: Sequence[Block]) -> Block:
    """Rows of ``blocks`` one after another; columns must match by name."""
    if len(blocks) == 1:
        return blocks[0]
    names = list(blocks[0].columns)
    for b in blocks[1:]:
        if list(b.columns) != names:
            raise ValueError(f"cannot concatenate blocks with columns {names} and {list(b.columns)}")
    return Block(
        columns={k: _concat([b.columns[k] for b in blocks]) for k in names},
        shard=np.concatenate([b.shard for b in blocks]),
        row=np.concatenate([b.row for b in blocks]),
    )


def as_column(values: Sequence[Any] | Column) -> Column:
    """A column from a user's values: numpy stays numpy, lists become Arrow where Arrow can hold them."""
    if isinstance(values, np.ndarray | pa.Array):
        return values
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out


def arrow_numbers(values: np.ndarray, dtype: pa.DataType | None = None) -> pa.Array:
    """A 1-D numpy array of numbers as an Arrow array sharing its memory (cast to ``dtype`` first if given).

    ``pa.array`` would do, but its first call imports pandas (0.3 s and 40 MB) to check the argument.

    >>> arrow_numbers(np.arange(3), pa.int32()).to_pylist(), arrow_numbers(np.array([0.5])).type
    ([0, 1, 2], DataType(double))
    """
    arr = np.asarray(values)
    if dtype is not None and (pa.types.is_integer(dtype) or pa.types.is_floating(dtype)):
        arr = arr.astype(dtype.to_pandas_dtype(), copy=False)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        return pa.array(arr, type=dtype)
    arr = np.ascontiguousarray(arr)
    return pa.Array.from_buffers(pa.from_numpy_dtype(arr.dtype), len(arr), [None, pa.py_buffer(arr)])


def to_pylist(col: Column) -> list[Any]:
    if isinstance(col, np.ndarray):
        return list(col) if col.dtype == object else col.tolist()
    return col.to_pylist()


def to_numpy(col: Column) -> np.ndarray:
    if isinstance(col, np.ndarray):
        return col
    return col.to_numpy(zero_copy_only=False)


def _take(col: Column, idx: np.ndarray) -> Column:
    if isinstance(col, np.ndarray):
        return col[idx]
    return col.take(arrow_numbers(idx, pa.int64()))


def _concat(cols: list[Column]) -> Column:
    if all(isinstance(c, pa.Array) for c in cols):
        types = {c.type for c in cols}  # type: ignore[union-attr]
        if len(types) == 1:
            return pa.concat_arrays(cols)  # type: ignore[arg-type]
        try:
            unified = pa.unify_schemas([pa.schema([("c", t)]) for t in types], promote_options="permissive")
            target = unified.field("c").type
            return pa.concat_arrays([c.cast(target) for c in cols])  # type: ignore[union-attr]
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
    arrays = [to_numpy(c) for c in cols]
    if any(a.dtype == object for a in arrays):
        out = np.empty(sum(len(a) for a in arrays), dtype=object)
        i = 0
        for a in arrays:
            out[i : i + len(a)] = list(a)
            i += len(a)
        return out
    return np.concatenate(arrays)


def _common_length(columns: Mapping[str, Column]) -> int:
    lengths = {k: len(c) for k, c in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns have different lengths: {lengths}")
    return next(iter(lengths.values()), 0)
