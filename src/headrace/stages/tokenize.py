"""``tokenize``: a text column into token ids, as an Arrow list column built from flat arrays.

The tokenizer's native batch encoder does the work (and releases the GIL, so the loader's worker
threads tokenize blocks in parallel); the ids of a block come back as one flat array plus one
length per document, and become a ``list<int32>`` column without a Python list per row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from headrace.core.block import Block, arrow_numbers
from headrace.core.errors import SchemaError
from headrace.tokenizer import Tokenizer


def tokenize_fn(
    tokenizer: Tokenizer,
    *,
    column: str,
    output: str,
    bos: int | None,
    eos: int | None,
    remove_column: bool,
    lineage: Callable[[int, int], str],
) -> Callable[[Block], Block]:
    """A block function: ``output`` = ids of ``column`` with ``bos``/``eos`` around each document."""
    dtype = np.int32 if tokenizer.vocab_size < 2**31 else np.int64
    arrow_type = pa.int32() if dtype == np.int32 else pa.int64()

    def per_block(block: Block) -> Block:
        col = block.columns.get(column)
        if col is None:
            raise SchemaError(f"tokenize(column={column!r}): no such column; the columns are {list(block.columns)}")
        texts = col.to_pylist() if isinstance(col, pa.Array) else list(col)
        if isinstance(col, pa.Array) and not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            where = lineage(int(block.shard[0]), int(block.row[0])) if block.num_rows else "?"
            raise SchemaError(f"tokenize(column={column!r}): the column holds {col.type}, not text (at {where}); "
                              "choose a text column or convert it with map()")  # fmt: skip
        if any(t is None for t in texts):
            i = next(i for i, t in enumerate(texts) if t is None)
            raise SchemaError(f"tokenize: {lineage(int(block.shard[i]), int(block.row[i]))} has no text (null) "
                              f"in column {column!r}; filter such rows out first")  # fmt: skip
        flat, lengths = tokenizer.encode_batch(texts)
        flat = flat.astype(dtype, copy=False)
        extra = int(bos is not None) + int(eos is not None)
        if extra:
            lengths = lengths + extra
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            out = np.empty(int(lengths.sum()), dtype=dtype)
            body = np.ones(len(out), dtype=bool)
            if bos is not None:
                out[starts] = bos
                body[starts] = False
            if eos is not None:
                out[starts + lengths - 1] = eos
                body[starts + lengths - 1] = False
            out[body] = flat
            flat = out
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if len(flat) < 2**31 else np.int64)
        ids = pa.ListArray.from_arrays(arrow_numbers(offsets), arrow_numbers(flat, arrow_type))
        columns = {k: v for k, v in block.columns.items() if not (remove_column and k == column) and k != output}
        columns[output] = ids
        return Block(columns=columns, shard=block.shard, row=block.row)

    return per_block
