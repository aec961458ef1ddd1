"""``batch``: rows into dicts of numpy arrays, with padding for ragged columns, or into Arrow record batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa

from headrace.core import state as states
from headrace.core.block import Block, Column, arrow_numbers
from headrace.core.cursor import Cursor
from headrace.core.errors import SchemaError
from headrace.core.node import CURSOR, Node, State

Batch = dict[str, np.ndarray]
BatchOutput = Literal["numpy", "arrow"]
Pad = int | str | None  # None: ragged columns are an error; "longest"; or a fixed length
T = TypeVar("T")


class _GroupNode(Node[T]):
    """Groups of ``size`` rows taken across the upstream's block boundaries; the state is the cursor's."""

    upstream: Node[Block]

    def __init__(self, upstream: Node[Block], size: int) -> None:
        self.upstream, self.cursor, self.size = upstream, Cursor(upstream), size

    def reset(self, state: State | None) -> None:
        if state is None:
            self.cursor.reset(None)
        else:
            states.load_child(self.cursor.reset, state, CURSOR)

    def state_dict(self) -> State:
        return {CURSOR: self.cursor.state_dict()}


class RebatchNode(_GroupNode[Block]):
    """Blocks of exactly ``size`` rows across the upstream's block boundaries (the last may be shorter).

    What ``map(..., batched=True, batch_size=n)`` calls its function on, as HF ``datasets`` does.
    """

    def next(self) -> Block:
        rows = self.cursor.take(self.size)
        if rows is None:
            raise StopIteration
        return rows


class BatchNode(_GroupNode[Batch | pa.RecordBatch]):
    def __init__(
        self,
        upstream: Node[Block],
        *,
        size: int,
        drop_last: bool,
        pad: Pad,
        pad_value: Any,
        lineage: Callable[[int, int], str],
        batch_format: BatchOutput = "numpy",
    ) -> None:
        self.drop_last, self.pad, self.pad_value = drop_last, pad, pad_value
        self.lineage, self.batch_format = lineage, batch_format
        super().__init__(upstream, size)

    def next(self) -> Batch | pa.RecordBatch:
        rows = self.cursor.take(self.size)
        if rows is None or (self.drop_last and rows.num_rows < self.size):
            raise StopIteration
        if self.batch_format == "arrow":
            return record_batch(rows)
        return collate(rows, self.pad, self.pad_value, self.lineage)


class RowNode(_GroupNode[dict[str, Any]]):
    """Rows one at a time, as dicts, for pipelines without ``batch()``."""

    def __init__(self, upstream: Node[Block]) -> None:
        super().__init__(upstream, 1)

    def next(self) -> dict[str, Any]:
        row = self.cursor.take(1)
        if row is None:
            raise StopIteration
        return row.to_pylist()[0]


def collate(
    block: Block, pad: Pad = None, pad_value: Any = 0, lineage: Callable[[int, int], str] | None = None
) -> Batch:
    """A dict of numpy arrays, one per column, first axis the row.

    >>> collate(Block.from_pydict({"ids": [[1, 2], [3]]}), pad="longest")["ids"].tolist()
    [[1, 2], [3, 0]]
    """

    def value(name: str) -> Any:
        return pad_value.get(name, 0) if isinstance(pad_value, dict) else pad_value

    return {name: _column(name, col, block, pad, value(name), lineage) for name, col in block.columns.items()}


def record_batch(block: Block) -> pa.RecordBatch:
    """The block's columns as an Arrow record batch: Arrow columns as they are (no copy), numpy columns
    converted (numbers from their buffers, a 2-D array as fixed-size lists).

    >>> b = record_batch(Block.from_pydict({"text": ["a", "bc"], "ids": np.array([[1, 2], [3, 4]])}))
    >>> b.schema.types, b.column("ids").to_pylist()
    ([DataType(string), FixedSizeListType(fixed_size_list<item: int64>[2])], [[1, 2], [3, 4]])
    """
    return pa.RecordBatch.from_arrays([_arrow(c) for c in block.columns.values()], names=list(block.columns))


def _arrow(col: Column) -> pa.Array:
    if isinstance(col, pa.Array):
        return col
    if col.dtype.kind in "iuf" and col.ndim > 1:
        inner = _arrow(np.ascontiguousarray(col).reshape(col.shape[0] * col.shape[1], *col.shape[2:]))
        return pa.FixedSizeListArray.from_arrays(inner, col.shape[1])
    if col.dtype.kind in "iuf":
        return arrow_numbers(col)
    return pa.array(list(col) if col.dtype == object else col)


def _column(name: str, col: Column, block: Block, pad: Pad, pad_value: Any, lineage: Any) -> np.ndarray:
    if isinstance(col, pa.Array):
        t = col.type
        if pa.types.is_fixed_size_list(t):
            flat = col.flatten().to_numpy(zero_copy_only=False)
            return flat.reshape(len(col), t.list_size, *flat.shape[1:])
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            offsets = col.offsets.to_numpy()
            offsets = offsets - offsets[0]  # a sliced array keeps absolute offsets; flatten() is relative
            flat = col.flatten().to_numpy(zero_copy_only=False)
            rows = [flat[offsets[i] : offsets[i + 1]] for i in range(len(col))]
            return _stack(name, rows, block, pad, pad_value, lineage)
        return to_numpy(col)
    if col.dtype == object and len(col) and isinstance(col[0], np.ndarray | list):
        return _stack(name, [np.asarray(v) for v in col], block, pad, pad_value, lineage)
    return col


def to_numpy(col: pa.Array) -> np.ndarray:
    """``col`` as a numpy array, without ``pa.Array.to_numpy`` where it can: its first call imports pandas,
    0.3 s before a fresh process's first batch. Numbers without nulls are a zero-copy view; strings and
    bytes an object array.

    >>> to_numpy(pa.array([1, 2, 3])).tolist(), to_numpy(pa.array(["a", None])).tolist()
    ([1, 2, 3], ['a', None])
    """
    t = col.type
    if col.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        kind = "f" if pa.types.is_floating(t) else "i" if pa.types.is_signed_integer(t) else "u"
        dtype = np.dtype(f"{kind}{t.bit_width // 8}")
        return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col), offset=col.offset * dtype.itemsize)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return np.array(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def _stack(name: str, rows: list[np.ndarray], block: Block, pad: Pad, pad_value: Any, lineage: Any) -> np.ndarray:
    lengths = [len(r) for r in rows]
    if pad is None:
        if len(set(lengths)) <= 1:
            return np.stack(rows) if rows else np.empty((0, 0))
        raise SchemaError(
            f"column {name!r} is ragged (lengths {min(lengths)}..{max(lengths)} in one batch); "
            "pass pad='longest' or pad=<length> to batch()"
        )
    width = max(lengths, default=0) if pad == "longest" else int(pad)
    for i, n in enumerate(lengths):
        if n > width:
            where = lineage(int(block.shard[i]), int(block.row[i])) if lineage else f"row {i}"
            raise SchemaError(
                f"column {name!r} at {where} has {n} values, more than pad={width}; "
                "raise pad, use pad='longest', or truncate in a map"
            )
    dtype = np.result_type(*(r.dtype for r in rows)) if rows else np.int64
    out = np.full((len(rows), width, *rows[0].shape[1:]) if rows else (0, width), pad_value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out
