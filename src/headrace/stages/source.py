"""The source stage: shards in (optionally shuffled) order, split between consumers, read as blocks.

With one consumer the shards are streamed one after another and row counts are never needed. With
several (ranks, or DataLoader worker processes), every shard's row count is taken — from metadata for
indexed formats, by one counting pass for sequential ones, cached per process — and each consumer
reads only its own contiguous range of the global order.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core import state as states
from headrace.core.block import Block
from headrace.core.errors import SourceError, empty_file
from headrace.core.node import Node, State
from headrace.core.policy import ErrorLog, Policy
from headrace.core.rng import permutation
from headrace.core.state import fingerprint
from headrace.core.world import World
from headrace.formats import format_named
from headrace.formats.base import Piece, ReadOptions, Start, conform
from headrace.formats.chunks import Chunk, chunks, split_lines
from headrace.io.remote import RemoteFS
from headrace.io.resolve import Shard
from headrace.stages.partition import Remainder, world_range

_COUNTS: dict[tuple[Any, ...], int] = {}
_CHUNKS: dict[tuple[Any, ...], list[int] | None] = {}  # row groups per shard, where a format has them
_COUNTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Source:
    """An immutable description of the files to read and how."""

    shards: tuple[Shard, ...]
    opts: ReadOptions
    schema: pa.Schema  # the dataset schema after column projection
    errors: Policy = "raise"
    block_rows: int = 1024
    shuffle_seed: int | None = None
    fs: Any = field(default=None, compare=False, repr=False)
    ordering: str = "files"  # "files": shards in (shuffled) order, contiguous ranges; "global": stages/order.py
    chunk_rows: int | None = None  # None: the files' own read units (row groups), else chunks of this many rows
    window: int = 16
    origin: str = "the first shard"  # where the schema came from, for the errors of shards that differ

    def describe(self) -> dict[str, Any]:
        return {
            "stage": "source",
            "shards": len(self.shards),
            "files": fingerprint([(s.name, s.size) for s in self.shards]),
            "formats": sorted({s.format for s in self.shards}),
            "columns": self.schema.names,
            "block_rows": self.block_rows,
            "shuffle_seed": self.shuffle_seed,
            "errors": self.errors,
            "ordering": self.ordering,
            **({"chunk_rows": self.chunk_rows, "window": self.window} if self.ordering == "global" else {}),
        }

    def order(self, epoch: int) -> np.ndarray:
        """Shard indices in reading order for ``epoch``."""
        n = len(self.shards)
        if self.shuffle_seed is None:
            return np.arange(n)
        return permutation(n, self.shuffle_seed, epoch, stage=0, index=0)

    def counts(self) -> list[int]:
        """Slots (records) per shard, each counted once per process (from the chunks where a format has them).

        A shard that cannot be read raises a :class:`SourceError`, whatever the error policy (see :meth:`counted`).
        """
        counts = []
        for n in self.counted():
            if not isinstance(n, int):
                raise n
            counts.append(n)
        return counts

    def counted(self) -> list[int | SourceError]:
        """Slots per shard, or under ``errors="skip"``/``"warn"`` the error of a shard that cannot be read."""

        def one(shard: Shard) -> int | SourceError:
            try:
                if shard.size == 0:
                    raise empty_file(shard.url, skipping=self.errors != "raise")
                return count(shard)
            except SourceError as e:
                if self.errors == "raise":
                    raise
                return e

        def count(shard: Shard) -> int:
            chunks = self._chunks(shard)
            if chunks is not None:
                return sum(chunks)
            key = self._key(shard)
            with _COUNTS_LOCK:
                if key in _COUNTS:
                    return _COUNTS[key]
            n = format_named(shard.format).count(self.fs, shard, self.opts)
            with _COUNTS_LOCK:
                _COUNTS[key] = n
            return n

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, self.shards))

    def chunks(self) -> list[list[int] | None]:
        """Each shard's natural read units (row counts), where its format has them; read once per process."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(self._chunks, self.shards))

    def _key(self, shard: Shard) -> tuple[Any, ...]:
        return (shard.url, shard.size, shard.format, self.opts.text_mode, self.opts.delimiter, self.opts.extra)

    def _chunks(self, shard: Shard) -> list[int] | None:
        key = self._key(shard)
        with _COUNTS_LOCK:
            if key in _CHUNKS:
                return _CHUNKS[key]
        chunks = format_named(shard.format).chunks(self.fs, shard, self.opts)
        with _COUNTS_LOCK:
            _CHUNKS[key] = chunks
        return chunks


LINE_FORMATS = ("jsonl", "text", "tar")  # readers that resume at a byte: past a shard's first record it is >= 0
FIRST_BLOCK_ROWS = 64  # a consumer's first block; blocks double from there to block_rows


def first_blocks(pos: int, block_rows: int) -> int:
    """Rows of the block that starts at a consumer's position ``pos``: 64, 64, 128, 256, ... up to ``block_rows``.

    Small first blocks bring the first batch sooner (the stages after the source — tokenize, decode —
    work on whole blocks); a function of the position alone, so a restored state cuts the same blocks.

    >>> [first_blocks(p, 1024) for p in (0, 64, 128, 256, 512, 1024, 5000)]
    [64, 64, 128, 256, 512, 1024, 1024]
    """
    return min(block_rows, max(FIRST_BLOCK_ROWS, pos))


class SourceNode(Node[Block]):
    """Reads one consumer's part of the source, in blocks of at most ``block_rows`` slots."""

    def __init__(self, source: Source, world: World, epoch: int, remainder: Remainder) -> None:
        self.source = source
        self.errors = ErrorLog(source.errors)
        self._order = source.order(epoch)
        self._cum: np.ndarray | None = None
        self._unreadable: dict[int, SourceError] = {}  # counted by consumer 0 (they have no rows to split)
        self._first = world.consumer == 0
        if world.consumers > 1:
            counted = source.counted()
            counts = [n if isinstance(n, int) else 0 for n in counted]
            self._unreadable = {i: n for i, n in enumerate(counted) if not isinstance(n, int)}
            self._cum = np.concatenate([[0], np.cumsum([counts[i] for i in self._order])]).astype(np.int64)
            total = int(self._cum[-1])
            lo, hi = world_range(total, world, remainder)
            self._lo, self._length = lo, hi - lo
        else:
            self._lo, self._length = 0, -1  # until the shards run out

    def reset(self, state: State | None) -> None:
        self._pieces: Iterator[Piece] | None = None
        self._piece: Piece | None = None
        if state is None:
            self._pos = 0
            self._o, self._at = self._locate(self._lo)
            self._start = Start()
        self._verify: tuple[str, int] | None = None  # a restored position to check against the shard's end
        self._where = states.here()  # the state's place, for the checks made while reading
        if state is None:
            self.errors.skipped = 0
            self._quarantined: set[int] = set()
        else:
            self._restore(state)

    def _restore(self, state: State) -> None:
        """Take the position of ``state``, checking every field against the shards and this epoch's order."""
        field, n, shards = states.field, len(self._order), self.source.shards
        self._o = field(state, "order", hi=n)
        self._pos = field(state, "pos", hi=self._length if self._length >= 0 else states.MAX_COUNT)
        shard = field(state, "shard", lo=-1, hi=len(shards) - 1)
        index = int(self._order[self._o]) if self._o < n else -1
        if shard != index:
            there = f"shard {index}" if index >= 0 else "the end"
            raise states.refuse("shard", f"the state reads shard {shard} at position {self._o} of the shard "
                                f"order, but this epoch's order has {there} there; the state belongs to another "
                                "epoch")  # fmt: skip
        if self._cum is not None and self._o < n:
            records = int(self._cum[self._o + 1] - self._cum[self._o])
        else:
            records = 0 if self._o == n else states.MAX_COUNT
        self._at = field(state, "at", hi=records)
        slot = field(state, "slot", hi=self._at)  # a piece starts at or before the position in it
        url = shards[index].url if index >= 0 else ""
        compressed = index < 0 or shards[index].compression is not None or shards[index].size < 0
        byte = field(state, "byte", lo=-1)
        if not compressed and byte > shards[index].size:
            raise states.refuse("byte", f"{byte} is past the end of shard {url} ({shards[index].size} bytes)")
        fmt = shards[index].format if index >= 0 else ""
        if byte < 0 and slot > 0 and fmt in LINE_FORMATS:
            raise states.refuse("byte", f"{byte} with slot {slot}: a {fmt} piece of shard {url} past its first "
                                "record starts at a byte >= 0")  # fmt: skip
        if fmt == "tar" and byte % 512:
            raise states.refuse("byte", f"{byte} is not at a tar header of shard {url} (a multiple of 512)")
        self._start = Start(slot, byte, field(state, "line", lo=-1))
        cum = self._cum if self._cum is not None else np.zeros(n + 1, dtype=np.int64)
        total, reads = int(cum[-1]), int(cum[self._o]) + self._at  # a consumer's position is where it reads
        if total and self._pos < self._length and reads % total != (self._lo + self._pos) % total:
            raise states.refuse("pos", f"{self._pos} rows into this consumer's range is not where the state "
                                f"reads (record {self._at} at position {self._o} of the shard order)")  # fmt: skip
        self.errors.skipped = field(state, "skipped")
        self._quarantined = set(self._check_quarantined(state.get("quarantined", []), self.errors.skipped))
        if self._o < n and self._at > slot and self._cum is None:  # past the shard's end? known when it ends
            self._verify = (url, self._o)

    def _check_quarantined(self, saved: Any, skipped: int) -> list[int]:
        """Quarantined shards: each a shard the reading already passed (older states: none saved)."""
        quarantined = states.field({"quarantined": saved}, "quarantined", list)
        where = {int(s): o for o, s in enumerate(self._order)}
        for k, i in enumerate(quarantined):
            if not isinstance(i, int) or isinstance(i, bool) or i not in where:
                raise states.refuse(f"quarantined[{k}]", f"must be a shard index in [0, {len(self._order)}), "
                                    f"got {states.shown(i)}")  # fmt: skip
            if self._cum is None and where[i] >= self._o:  # one consumer reads the order once, in order
                raise states.refuse(f"quarantined[{k}]", f"shard {i} is not before the state's position in the "
                                    "shard order, so it cannot have been quarantined yet")  # fmt: skip
        if len(set(quarantined)) != len(quarantined) or len(quarantined) > skipped:
            raise states.refuse("quarantined", f"{quarantined}: each shard once, and each counted in skipped "
                                f"({skipped})")  # fmt: skip
        return quarantined

    def state_dict(self) -> State:
        return {
            "pos": self._pos, "order": self._o, "at": self._at,
            "shard": int(self._order[self._o]) if self._o < len(self._order) else -1,
            "slot": self._start.slot, "byte": self._start.byte, "line": self._start.line,
            "skipped": self.errors.skipped, "quarantined": sorted(self._quarantined),
        }  # fmt: skip

    def _check_end(self, shard: Shard) -> None:
        """The shard ended without a piece past a restored position: refuse it if the shard has fewer records."""
        self._verify = None
        start, fmt = self._start, format_named(shard.format)
        if shard.format in ("jsonl", "text") and start.byte >= 0 and self.source.opts.text_mode != "file":
            blank = shard.format == "jsonl"  # blank JSON lines are no records; blank text lines are

            def records_in(c: Chunk) -> int:  # an over-long line is a chunk without data, and one record
                lines = split_lines(c.data)
                return 1 if c.long >= 0 else sum(1 for line in lines if not blank or line.strip())

            pieces = chunks(self.source.fs, shard, 1 << 22, start.byte, self.source.opts.max_line_bytes)
            records = start.slot + sum(records_in(c) for c in pieces)
        else:
            records = fmt.count(self.source.fs, shard, self.source.opts)
        if self._at > records:
            raise states.FieldError(f"{self._where}.at", f"{self._at} is past the end of shard {shard.url} "
                                    f"({records} records)")  # fmt: skip

    def _leave_shard(self, left: int) -> None:
        """Skip the rest of a quarantined shard. A consumer with a range counts the rows it skips, so that
        its range ends where it would have."""
        if self._cum is not None:
            rest = int(self._cum[self._o + 1] - self._cum[self._o]) - self._at
            self._pos += max(0, min(rest, left))
        self._o, self._at, self._start = self._o + 1, 0, Start()
        self._pieces = self._piece = None

    def _quarantine(self, index: int, error: SourceError, left: int) -> None:
        """Count the shard ``index`` as one skipped record (raise under errors="raise") and leave it."""
        self.errors.record(error, quarantine=True)
        self._quarantined.add(index)
        self._leave_shard(left)

    def _locate(self, position: int) -> tuple[int, int]:
        if self._cum is None or self._cum[-1] == 0:
            return 0, 0
        g = position % int(self._cum[-1])
        o = bisect.bisect_right(self._cum.tolist(), g) - 1
        return o, g - int(self._cum[o])

    def next(self) -> Block:
        src = self.source
        if self._unreadable and self._first:  # each shard that could not be counted is skipped, counted once
            for index, error in self._unreadable.items():
                if index not in self._quarantined:
                    self.errors.record(error, quarantine=True)
                    self._quarantined.add(index)
        while True:
            left = self._length - self._pos if self._length >= 0 else 1 << 62
            if left <= 0 or len(self._order) == 0:
                raise StopIteration
            if self._o >= len(self._order):
                if self._cum is None:
                    raise StopIteration
                self._o = 0  # "pad": the overhang repeats the order from its start
            index = int(self._order[self._o])
            shard = src.shards[index]
            if index in self._quarantined or index in self._unreadable:
                self._leave_shard(left)
                continue
            if self._pieces is None and shard.size == 0:  # listed as empty: nothing to read, say so once
                self._quarantine(index, empty_file(shard.url, skipping=True), left)
                continue
            if self._pieces is None:
                if isinstance(src.fs, RemoteFS):  # the next shards download into the disk cache meanwhile
                    ahead = self._order[self._o + 1 : self._o + 1 + src.fs.ahead]
                    src.fs.prefetch([src.shards[int(i)].url for i in ahead])
                fmt = format_named(shard.format)
                self._pieces = fmt.pieces(src.fs, shard, src.opts, self._start, self._at, self.errors)
            if self._piece is None or self._at >= self._piece.end:
                try:
                    piece = next(self._pieces, None)
                except states.FieldError as e:  # a restored position the shard does not have (formats/chunks.py)
                    raise states.FieldError(f"{self._where}.{e.path}", e.problem) from None
                except SourceError as e:  # the shard cannot be read (corrupt, gone, forbidden, network down)
                    self._quarantine(index, e, left)
                    continue
                if piece is None:
                    if self._verify is not None and self._verify[1] == self._o:
                        self._check_end(shard)
                    self._o, self._at, self._start = self._o + 1, 0, Start()
                    self._pieces = self._piece = None
                    continue
                self._piece = piece
                if piece.end <= self._at:
                    continue
                self._verify = None  # the restored position is inside the shard
                self._start = piece.start
            piece = self._piece
            stop = min(self._at + first_blocks(self._pos, src.block_rows), piece.end, self._at + left)
            lo, hi = np.searchsorted(piece.slots, [self._at, stop])
            first = self._at
            self._pos += stop - self._at
            self._at = stop
            if hi <= lo:
                continue
            where = f"{shard.url} (record {first})"
            batch = conform(piece.batch.slice(int(lo), int(hi - lo)), src.schema, where, src.origin)
            return Block(
                columns={name: batch.column(i) for i, name in enumerate(batch.schema.names)},
                shard=np.full(int(hi - lo), int(self._order[self._o]), dtype=np.int32),
                row=piece.slots[lo:hi].copy(),
            )
