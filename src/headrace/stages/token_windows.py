"""Windows over token shards, addressed by index: window ``k`` starts at token ``k * stride``.

No index has to be built: the shards' token counts (from their metadata) give the number of
windows, and :class:`~headrace.formats.tokens.TokenShards` reads any window straight from the
memory maps. The windows go through the same :class:`GlobalOrder` as rows do, and consumers take
them strided, so checkpoints of a windowed token pipeline resume on another world (elastic) and
restoring reads one batch of windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from headrace.core.block import Block
from headrace.core.node import Node, State
from headrace.core.world import World
from headrace.formats.tokens import TokenShards
from headrace.io.resolve import url_path
from headrace.stages.order import GlobalOrder
from headrace.stages.partition import Remainder, strided_length, strided_positions, strided_state

if TYPE_CHECKING:
    from headrace.stages.source import Source


@dataclass(frozen=True)
class TokenWindows:
    """An immutable description: which shards, which windows, in which order."""

    shards: TokenShards = field(compare=False)
    seq_len: int
    stride: int
    shift: int
    seed: int
    chunk_rows: int
    window: int
    block_rows: int

    @property
    def count(self) -> int:
        need = self.seq_len + self.shift
        total = self.shards.num_tokens
        return 0 if total < need else (total - need) // self.stride + 1

    def describe(self) -> dict[str, Any]:
        files = [url_path(u).rsplit("/", 1)[-1] for u in self.shards.urls]  # no query: no signature in states
        return {"stage": "token_windows", "files": files, "tokens": self.shards.num_tokens, "seq_len": self.seq_len,
                "stride": self.stride, "shift": self.shift, "seed": self.seed, "chunk_rows": self.chunk_rows,
                "window": self.window}  # fmt: skip


class TokenWindowNode(Node[Block]):
    def __init__(self, spec: TokenWindows, world: World, epoch: int, remainder: Remainder, start: int) -> None:
        self.spec = spec
        self.order = GlobalOrder([spec.count], seed=spec.seed, epoch=epoch, chunk_rows=spec.chunk_rows,
                                 window=spec.window)  # fmt: skip
        self.consumer, self.consumers = world.consumer, world.consumers
        self.start = min(start, self.order.total)
        self.length = strided_length(self.order.total, self.start, self.consumers, remainder)

    def reset(self, state: State | None) -> None:
        self._pos = 0 if state is None else strided_state(state, self.start, self.consumers, self.length)

    def state_dict(self) -> State:
        return {"start": self.start, "stride": self.consumers, "pos": self._pos}

    def next(self) -> Block:
        s = self.spec
        n = min(s.block_rows, self.length - self._pos)
        if n <= 0:
            raise StopIteration
        positions = strided_positions(self.start, self.consumer, self.consumers, self._pos, n, self.order.total)
        _, index = self.order.locate_array(positions)
        starts = index * s.stride
        tokens = s.shards.windows(starts, s.seq_len + s.shift)
        dtype = np.int32 if s.shards.dtype.itemsize <= 4 and s.shards.dtype != np.uint32 else np.int64
        columns: dict[str, Any] = {"input_ids": tokens[:, : s.seq_len].astype(dtype)}
        # shift 0 (window(shift=0), for models that shift the labels themselves): labels equal to the ids, a copy
        columns["labels"] = tokens[:, s.shift : s.shift + s.seq_len].astype(dtype)
        shard = np.searchsorted(s.shards.cum_tokens, starts, side="right") - 1
        self._pos += n
        return Block(columns=columns, shard=shard.astype(np.int32), row=index.astype(np.int64))


def indexed_windows(src: Source, seq_len: int, stride: int, shift: int | None, documents: bool) -> TokenWindows | None:
    """The indexed windows of ``src`` when it is token shards in global order (``shuffle(buffer_size=None)``)."""
    if src.ordering != "global" or not all(s.format in ("megatron", "nanogpt", "npy") for s in src.shards):
        return None
    if shift is None or documents:
        raise ValueError("windows over token shards in global order take a fixed shift and no documents=")
    extra = dict(src.opts.extra)
    shards = TokenShards([s.url for s in src.shards], tokens_per_row=int(extra.get("tokens_per_row", 2048)))
    return TokenWindows(shards, seq_len, stride, shift, src.shuffle_seed or 0, src.chunk_rows or 64, src.window,
                        max(1, src.block_rows // 8))  # fmt: skip
