"""Window shuffle: read ``buffer_size`` rows, emit them in a permutation keyed by the window's index.

The state is where the window started (a cursor position) and how many of its rows were emitted —
never the rows themselves. Restoring re-reads one window. Together with the shard-order shuffle of
the source, this is the shuffle for sequential data (what HF calls a buffer shuffle); indexed data
gets a quasi-global shuffle in a later stage.
"""

from __future__ import annotations

import numpy as np

from headrace.core.block import Block
from headrace.core.cursor import RowWindow
from headrace.core.node import Node, State
from headrace.core.rng import permutation


class ShuffleNode(Node[Block]):
    def __init__(
        self, upstream: Node[Block], *, seed: int, epoch: int, stage: int, buffer_size: int, block_rows: int
    ) -> None:
        self.upstream = upstream
        self.window = RowWindow(upstream, buffer_size)
        self.seed, self.epoch, self.stage, self.block_rows = seed, epoch, stage, block_rows
        self.reset(None)

    def reset(self, state: State | None) -> None:
        self._perm = np.empty(0, dtype=np.int64)
        if self.window.reset(state):
            self._fill()

    def _fill(self) -> None:
        rows = self.window.fill()
        self.window.total = 0 if rows is None else rows.num_rows
        self._perm = permutation(self.window.total, self.seed, self.epoch, self.stage, self.window.index)

    def state_dict(self) -> State:
        return self.window.state_dict()

    def next(self) -> Block:
        w = self.window
        if not w.ready(self._fill):
            raise StopIteration
        assert w.rows is not None
        idx = self._perm[w.emitted : w.emitted + self.block_rows]
        w.emitted += len(idx)
        return w.rows.take(idx)
