"""Window shuffle: read ``buffer_size`` rows, emit them in a permutation keyed by the window's index.

The state is where the window started (a cursor position) and how many of its rows were emitted —
never the rows themselves. Restoring re-reads one window. Together with the shard-order shuffle of
the source, this is the shuffle for sequential data (what HF calls a buffer shuffle); indexed data
gets a quasi-global shuffle in a later stage.
"""

from __future__ import annotations

import numpy as np

from headrace.core.block import Block
from headrace.core.cursor import Cursor
from headrace.core.node import Node, State
from headrace.core.rng import permutation


class ShuffleNode(Node[Block]):
    def __init__(
        self, upstream: Node[Block], *, seed: int, epoch: int, stage: int, buffer_size: int, block_rows: int
    ) -> None:
        self.upstream = upstream
        self.cursor = Cursor(upstream)
        self.seed, self.epoch, self.stage = seed, epoch, stage
        self.buffer_size, self.block_rows = buffer_size, block_rows
        self.reset(None)

    def reset(self, state: State | None) -> None:
        self._rows: Block | None = None
        self._perm = np.empty(0, dtype=np.int64)
        if state is None:
            self.cursor.reset(None)
            self._start, self._window, self._emitted = self.cursor.state_dict(), 0, 0
            return
        self.cursor.reset(state["start"])
        self._start, self._window, self._emitted = state["start"], int(state["window"]), int(state["emitted"])
        if self._emitted:
            self._fill()

    def _fill(self) -> None:
        self._rows = self.cursor.take(self.buffer_size)
        n = 0 if self._rows is None else self._rows.num_rows
        self._perm = permutation(n, self.seed, self.epoch, self.stage, self._window)

    def state_dict(self) -> State:
        if self._rows is not None and self._emitted >= self._rows.num_rows:
            return {"start": self.cursor.state_dict(), "window": self._window + 1, "emitted": 0}
        return {"start": self._start, "window": self._window, "emitted": self._emitted}

    def next(self) -> Block:
        if self._rows is not None and self._emitted >= self._rows.num_rows:
            self._start, self._window, self._emitted, self._rows = self.cursor.state_dict(), self._window + 1, 0, None
        if self._rows is None:
            self._fill()
            if self._rows is None:
                raise StopIteration
        idx = self._perm[self._emitted : self._emitted + self.block_rows]
        self._emitted += len(idx)
        return self._rows.take(idx)
