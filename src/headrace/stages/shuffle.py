"""Window shuffle: read ``buffer_size`` rows, emit them in a permutation keyed by the window's index.

The state is where the window started (a cursor position) and how many of its rows were emitted —
never the rows themselves. Restoring re-reads one window. Together with the shard-order shuffle of
the source, this is the shuffle for sequential data (what HF calls a buffer shuffle); indexed data
gets a quasi-global shuffle in a later stage.
"""

from __future__ import annotations

import numpy as np

from headrace.core.block import Block, capped_rows
from headrace.core.cursor import RowWindow
from headrace.core.node import Node, State
from headrace.core.rng import permutation

WINDOW_COPY_BYTES = 32 << 20  # shuffle windows smaller than this are concatenated (faster to take from)


class ShuffleNode(Node[Block]):
    def __init__(
        self, upstream: Node[Block], *, seed: int, epoch: int, stage: int, buffer_size: int, block_rows: int
    ) -> None:
        self.upstream = upstream
        self.window = RowWindow(upstream, buffer_size)
        self.seed, self.epoch, self.stage, self.block_rows = seed, epoch, stage, block_rows

    def reset(self, state: State | None) -> None:
        self._perm = np.empty(0, dtype=np.int64)
        self._block = self.block_rows
        if self.window.reset(state):
            self._fill()
            self.window.check_filled()

    def _fill(self) -> None:
        # A large window stays in its parts (no concatenated copy next to them), a small one is copied into one.
        rows = self.window.fill_parts(copy_below=WINDOW_COPY_BYTES)
        self.window.total = 0 if rows is None else rows.num_rows
        self._perm = permutation(self.window.total, self.seed, self.epoch, self.stage, self.window.index)
        # Blocks capped by bytes: taking from parts copies a block's rows about three times over. The cap
        # depends on the window's rows alone, so a restored window cuts its blocks where the first run did.
        size = 0 if rows is None else rows.nbytes()
        self._block = capped_rows(self.block_rows, size, self.window.total)

    def state_dict(self) -> State:
        return self.window.state_dict()

    def next(self) -> Block:
        w = self.window
        if not w.ready(self._fill):
            raise StopIteration
        assert w.rows is not None
        idx = self._perm[w.emitted : w.emitted + self._block]
        w.emitted += len(idx)
        return w.rows.take(idx)
