"""The source in global order: samples ``start + c + k*C`` of the epoch's :class:`GlobalOrder` for consumer ``c``.

Consumers (ranks x partitioning workers) take the global order strided, so after ``t`` equal steps
all of them together have consumed exactly ``start + t*b*C`` samples: a checkpoint taken on ``C``
consumers resumes on ``C'`` by starting the same order there (elastic). Rows are fetched by piece
(a Parquet row group, an Arrow record batch, a run of token sequences) through a bounded LRU cache,
so a consumer reads the pieces that hold its samples and memory stays bounded.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from headrace.core.block import Block, arrow_numbers, capped_rows, concat
from headrace.core.errors import SourceError
from headrace.core.node import Node, State
from headrace.core.policy import ErrorLog
from headrace.core.world import World
from headrace.formats import format_named
from headrace.formats.base import Piece, Start, conform
from headrace.stages.order import GlobalOrder
from headrace.stages.partition import Remainder, strided_length, strided_positions, strided_state
from headrace.stages.source import Source

DEFAULT_CHUNK_ROWS = 1024  # chunks of formats without natural read units


class PieceCache:
    """The pieces read last, by shard; ``find(shard, row)`` reads a piece on a miss.

    It holds the pieces of ``chunks`` chunks of the order and no more: the order mixes a window of
    chunks at a time, so a window and one chunk more are enough for every piece to be read once per
    epoch. A chunk larger than the format's pieces (a row group above 65,536 rows) is several pieces:
    the capacity counts them from the largest piece read so far. While ``hold`` is set nothing is
    evicted (a block that straddles two windows needs the pieces of both); ``trim()`` evicts after.
    """

    def __init__(self, source: Source, log: ErrorLog, *, chunks: int, chunk_rows: int) -> None:
        self.source, self.log, self.chunks, self.chunk_rows = source, log, chunks, chunk_rows
        self.pieces: OrderedDict[tuple[int, int], Piece] = OrderedDict()
        self.piece_rows = 0  # rows (slots) of the largest piece read
        self.reads = 0  # pieces read (for tests and stats)
        self.hold = False
        self._pool: ThreadPoolExecutor | None = None

    @property
    def capacity(self) -> int:
        return self.chunks * max(1, -(-self.chunk_rows // max(self.piece_rows, 1)))

    def lookup(self, shard: int, row: int) -> tuple[tuple[int, int], Piece] | None:
        for key, piece in self.pieces.items():
            if key[0] == shard and piece.start.slot <= row < piece.end:
                return key, piece
        return None

    def find(self, shard: int, row: int) -> tuple[tuple[int, int], Piece]:
        found = self.lookup(shard, row)
        if found is not None:
            self.pieces.move_to_end(found[0])
            return found
        return self._add(shard, self._read(shard, row))

    def load(self, wanted: list[tuple[int, int]]) -> None:
        """Read the pieces holding these ``(shard, row)``s that are not cached, in parallel (Parquet decoding
        releases the GIL): the first block of a window needs a piece of every chunk in it."""
        missing = [w for w in wanted if self.lookup(*w) is None]
        if len(missing) < 2:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="headrace-pieces")
        futures = [self._pool.submit(self._read, shard, row) for shard, row in missing]
        for (shard, _), future in zip(missing, futures, strict=True):
            self._add(shard, future.result())

    def trim(self) -> None:
        while len(self.pieces) > self.capacity:
            self.pieces.popitem(last=False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _read(self, shard: int, row: int) -> Piece:
        info = self.source.shards[shard]
        fmt = format_named(info.format)
        for piece in fmt.pieces(self.source.fs, info, self.source.opts, Start(), row, self.log):
            if piece.start.slot <= row < piece.end:
                return piece
        raise SourceError(f"{info.url}: record {row} is past the end of the file; the file changed since it was "
                          "counted, or its metadata is wrong")  # fmt: skip

    def _add(self, shard: int, piece: Piece) -> tuple[tuple[int, int], Piece]:
        self.reads += 1
        self.piece_rows = max(self.piece_rows, piece.end - piece.start.slot)
        key = (shard, piece.start.slot)
        self.pieces[key] = piece
        if not self.hold:
            self.trim()
        return key, piece


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
        largest = int(self.order.size_of.max()) if len(self.order.size_of) else 1
        self.cache = PieceCache(source, self.errors, chunks=source.window + 1, chunk_rows=largest)

    def reset(self, state: State | None) -> None:
        self._pos = 0 if state is None else strided_state(state, self.start, self.consumers, self.length)

    def state_dict(self) -> State:
        return {"start": self.start, "stride": self.consumers, "pos": self._pos}

    def next(self) -> Block:
        n = min(self.source.block_rows, self.length - self._pos)
        if n <= 0:
            raise StopIteration
        positions = strided_positions(self.start, self.consumer, self.consumers, self._pos, n, self.order.total)
        shards, rows, chunks = self.order.locate_chunks(positions)
        # Blocks capped by bytes, at the size of the rows of the piece that holds the block's first sample: a
        # restored state starts its block there too, so blocks are cut where they were in the first run.
        _, first = self.cache.find(int(shards[0]), int(rows[0]))
        n = capped_rows(n, first.batch.nbytes, first.batch.num_rows)
        shards, rows, chunks = shards[:n], rows[:n], chunks[:n]
        self.cache.hold = True
        try:
            return self._block(n, shards, rows, chunks)
        finally:
            self.cache.hold = False
            self.cache.trim()

    def _block(self, n: int, shards: np.ndarray, rows: np.ndarray, chunks: np.ndarray) -> Block:
        _, firsts = np.unique(chunks, return_index=True)  # a row of every chunk in the block, in block order
        self.cache.load([(int(shards[i]), int(rows[i])) for i in sorted(firsts)])
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
            parts.append(_rows_block(batch.take(arrow_numbers(at)), int(shards[i]), rows[idx]))
            where.append(idx)
            pending[idx] = False
        block = concat(parts).take(np.argsort(np.concatenate(where), kind="stable"))
        self._pos += n
        return block

    def close(self) -> None:
        self.cache.close()


def _rows_block(batch: pa.RecordBatch, shard: int, rows: np.ndarray) -> Block:
    return Block(
        columns={name: batch.column(i) for i, name in enumerate(batch.schema.names)},
        shard=np.full(len(rows), shard, dtype=np.int32),
        row=rows.astype(np.int64),
    )
