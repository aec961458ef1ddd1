"""The source in global order: samples ``start + c + k*C`` of the epoch's :class:`GlobalOrder` for consumer ``c``.

Consumers (ranks x partitioning workers) take the global order strided, so after ``t`` equal steps
all of them together have consumed exactly ``start + t*b*C`` samples: a checkpoint taken on ``C``
consumers resumes on ``C'`` by starting the same order there (elastic). Rows are fetched by piece
(a Parquet row group, an Arrow record batch, a run of token sequences) through a bounded LRU cache,
so a consumer reads the pieces that hold its samples and memory stays bounded.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pyarrow as pa

from headrace.core.block import Block, concat
from headrace.core.errors import SourceError
from headrace.core.node import Node, State
from headrace.core.policy import ErrorLog
from headrace.core.world import World
from headrace.formats import format_named
from headrace.formats.base import Piece, Start, conform
from headrace.stages.order import GlobalOrder
from headrace.stages.partition import Remainder, strided_length, strided_positions
from headrace.stages.source import Source

DEFAULT_CHUNK_ROWS = 1024  # chunks of formats without natural read units


class PieceCache:
    """The last ``capacity`` pieces read, by shard; ``rows(shard, row)`` reads a piece on a miss."""

    def __init__(self, source: Source, log: ErrorLog, capacity: int) -> None:
        self.source, self.log, self.capacity = source, log, capacity
        self.pieces: OrderedDict[tuple[int, int], Piece] = OrderedDict()
        self.reads = 0  # pieces read (for tests and stats)

    def find(self, shard: int, row: int) -> tuple[tuple[int, int], Piece]:
        for key, piece in self.pieces.items():
            if key[0] == shard and piece.start.slot <= row < piece.end:
                self.pieces.move_to_end(key)
                return key, piece
        info = self.source.shards[shard]
        fmt = format_named(info.format)
        for piece in fmt.pieces(self.source.fs, info, self.source.opts, Start(), row, self.log):
            if piece.start.slot <= row < piece.end:
                self.reads += 1
                key = (shard, piece.start.slot)
                self.pieces[key] = piece
                while len(self.pieces) > self.capacity:
                    self.pieces.popitem(last=False)
                return key, piece
        raise SourceError(f"{info.url}: record {row} is past the end of the file; the file changed since it was "
                          "counted, or its metadata is wrong")  # fmt: skip


class GlobalSourceNode(Node[Block]):
    def __init__(self, source: Source, world: World, epoch: int, remainder: Remainder, start: int) -> None:
        if not all(format_named(s.format).indexed for s in source.shards):
            raise SourceError("shuffle(buffer_size=None) needs an indexed source (Parquet, Arrow, token shards), "
                              "whose row counts come from metadata; pass buffer_size= for other formats")  # fmt: skip
        self.source = source
        self.errors = ErrorLog(source.errors)
        natural = source.chunks() if source.chunk_rows is None else None
        self.order = GlobalOrder(source.counts(), seed=source.shuffle_seed, epoch=epoch, window=source.window,
                                 chunk_rows=source.chunk_rows or DEFAULT_CHUNK_ROWS, chunks=natural)  # fmt: skip
        self.consumer, self.consumers = world.consumer, world.consumers
        self.start = min(start, self.order.total)
        self.length = strided_length(self.order.total, self.start, self.consumers, remainder)
        self.cache = PieceCache(source, self.errors, capacity=max(8, 2 * source.window))
        self.reset(None)

    def reset(self, state: State | None) -> None:
        if state is not None and (int(state["start"]), int(state["stride"])) != (self.start, self.consumers):
            raise SourceError(f"this state reads the global order from {state['start']} in steps of {state['stride']}, "
                              f"this world from {self.start} in steps of {self.consumers}")  # fmt: skip
        self._pos = 0 if state is None else int(state["pos"])

    def state_dict(self) -> State:
        return {"start": self.start, "stride": self.consumers, "pos": self._pos}

    def next(self) -> Block:
        n = min(self.source.block_rows, self.length - self._pos)
        if n <= 0:
            raise StopIteration
        positions = strided_positions(self.start, self.consumer, self.consumers, self._pos, n, self.order.total)
        shards, rows = self.order.locate_array(positions)
        parts: list[Block] = []
        where: list[np.ndarray] = []
        pending = np.ones(n, dtype=bool)
        while pending.any():
            i = int(np.flatnonzero(pending)[0])
            _, piece = self.cache.find(int(shards[i]), int(rows[i]))
            sel = pending & (shards == shards[i]) & (rows >= piece.start.slot) & (rows < piece.end)
            idx = np.flatnonzero(sel)
            at = np.searchsorted(piece.slots, rows[idx])
            if not np.array_equal(piece.slots[np.minimum(at, len(piece.slots) - 1)], rows[idx]):
                raise SourceError(f"{self.source.shards[int(shards[i])].url}: a record of this indexed file is "
                                  "unreadable (malformed); the global order needs every record")  # fmt: skip
            batch = conform(piece.batch, self.source.schema, self.source.shards[int(shards[i])].url)
            parts.append(_block(batch.take(pa.array(at)), int(shards[i]), rows[idx]))
            where.append(idx)
            pending[idx] = False
        block = concat(parts).take(np.argsort(np.concatenate(where), kind="stable"))
        self._pos += n
        return block


def _block(batch: pa.RecordBatch, shard: int, rows: np.ndarray) -> Block:
    return Block(
        columns={name: batch.column(i) for i, name in enumerate(batch.schema.names)},
        shard=np.full(len(rows), shard, dtype=np.int32),
        row=rows.astype(np.int64),
    )
