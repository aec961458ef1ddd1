"""A token stream over blocks of documents: the shared reader of ``pack`` and ``window``.

The documents' ids (an ``input_ids`` list column) are laid end to end. The position of the first
token not yet emitted is the state: the upstream state before the block that holds it and how many
of that block's tokens come before it. Restoring re-reads that one block — the partial remainder of
a sequence is carried as a position, never as tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from headrace.core import state as states
from headrace.core.block import Block
from headrace.core.errors import SchemaError
from headrace.core.node import Node, State


@dataclass(frozen=True)
class Span:
    """Tokens ``[start, start + n)`` of the buffer and the documents that start inside or before them."""

    tokens: np.ndarray  # the buffer
    doc_starts: np.ndarray  # buffer positions where documents start, increasing
    shard: np.ndarray  # lineage of each document
    row: np.ndarray


def flat_tokens(block: Block, column: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, lengths)`` of a block's token column (an Arrow list column or a 2-D numpy array)."""
    col = block.columns.get(column)
    if col is None:
        raise SchemaError(f"no {column!r} column to pack; tokenize() first (the columns are {list(block.columns)})")
    if isinstance(col, np.ndarray) and col.ndim == 2:
        return col.reshape(-1), np.full(len(col), col.shape[1], dtype=np.int64)
    if isinstance(col, pa.Array) and (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        offsets = col.offsets.to_numpy()
        values = col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(zero_copy_only=False)
        return values, np.diff(offsets).astype(np.int64)
    raise SchemaError(f"column {column!r} holds {getattr(col, 'type', getattr(col, 'dtype', '?'))}, not token ids")


class TokenStream:
    """The concatenated tokens of ``upstream``'s documents, read forward from a position."""

    def __init__(self, upstream: Node[Block], column: str) -> None:
        self.upstream = upstream
        self.column = column

    def reset(self, state: State | None) -> None:
        self.buf = np.empty(0, dtype=np.int32)  # int32 unless some ids need 64 bits: fewer bytes to move
        self.doc_starts = np.empty(0, dtype=np.int64)
        self.shard = np.empty(0, dtype=np.int32)
        self.row = np.empty(0, dtype=np.int64)
        self.entries: list[tuple[State, int]] = []  # (upstream state before a block, its first buffer position)
        self.pos = 0
        self.ended = False
        if state is None:
            self.upstream.reset(None)
            return
        skip = states.field(state, "skip")
        states.load_child(self.upstream.reset, state, "upstream")
        if skip:  # tokens past the upstream position: within its first block, or further where blocks were cut
            while len(self.buf) < skip:  # differently (a tampered source position can make smaller blocks)
                if not self._pull():
                    raise states.refuse("skip", f"{skip} tokens past its upstream position, but the stream "
                                        f"ends {len(self.buf)} tokens after it")  # fmt: skip
            self.pos = skip

    def state_dict(self) -> State:
        for before, start in reversed(self.entries):
            if start <= self.pos and (start < len(self.buf) or start == self.pos == len(self.buf)):
                return {"upstream": before, "skip": self.pos - start}
        return {"upstream": self.upstream.state_dict(), "skip": 0}

    def available(self) -> int:
        return len(self.buf) - self.pos

    def fill(self, need: int) -> bool:
        """Read until ``need`` tokens are available; False if the stream ends first."""
        while self.available() < need:
            if not self._pull():
                return False
        return True

    def _pull(self) -> bool:
        if self.ended:
            return False
        before = self.upstream.state_dict()
        try:
            block = self.upstream.next()
        except StopIteration:
            self.ended = True
            return False
        ids, lengths = flat_tokens(block, self.column)
        self._compact()
        base = len(self.buf)
        starts = base + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        keep = lengths > 0
        self.entries.append((before, base))
        wide = ids.dtype.itemsize > 4 or ids.dtype == np.uint32
        dtype = np.int64 if wide or self.buf.dtype == np.int64 else np.int32
        self.buf = np.concatenate([self.buf, ids]).astype(dtype, copy=False) if base else ids.astype(dtype)
        self.doc_starts = np.concatenate([self.doc_starts, starts[keep]])
        self.shard = np.concatenate([self.shard, block.shard[keep]])
        self.row = np.concatenate([self.row, block.row[keep]])
        return True

    def _compact(self) -> None:
        """Forget tokens (and blocks) wholly before the position."""
        keep_from = 0
        for i, (_, start) in enumerate(self.entries):
            if start <= self.pos:
                keep_from = i
        cut = self.entries[keep_from][1] if self.entries else self.pos
        if cut == 0:
            return
        self.entries = [(s, start - cut) for s, start in self.entries[keep_from:]]
        self.buf = self.buf[cut:]
        d = max(int(np.searchsorted(self.doc_starts, cut, side="right")) - 1, 0)  # keep the document cut into
        self.doc_starts, self.shard, self.row = self.doc_starts[d:] - cut, self.shard[d:], self.row[d:]
        self.pos -= cut

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``[len(starts), length]`` tokens from buffer positions ``pos + starts`` (a view when evenly spaced).

        The buffer is never written in place, so the view stays valid; callers copy what they keep.
        """
        if len(starts) > 1 and bool((np.diff(starts) == starts[1] - starts[0]).all()) and starts[1] > starts[0]:
            base = self.buf[self.pos + int(starts[0]) :]
            step = int(starts[1] - starts[0]) * base.itemsize
            return np.lib.stride_tricks.as_strided(base, (len(starts), length), (step, base.itemsize), writeable=False)
        idx = self.pos + starts[:, None] + np.arange(length)[None, :]
        return self.buf[idx]

    def doc_index(self, positions: np.ndarray) -> np.ndarray:
        """Index of the document holding each buffer position ``pos + positions``."""
        return np.searchsorted(self.doc_starts, self.pos + positions, side="right") - 1
