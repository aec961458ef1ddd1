"""``take(n)`` and ``skip(n)``: the first ``n`` rows of the stream, or all but them."""

from __future__ import annotations

from headrace.core import state as states
from headrace.core.block import Block
from headrace.core.cursor import Cursor
from headrace.core.node import CURSOR, Node, State

# State keys (their strings are the saved format: never change them).
COUNT = "count"


class LimitNode(Node[Block]):
    """Skips ``skip`` rows, then yields at most ``take`` rows (``take=-1``: no limit)."""

    def __init__(self, upstream: Node[Block], *, skip: int, take: int, block_rows: int) -> None:
        self.upstream = upstream
        self.cursor = Cursor(upstream)
        self.skip, self.take, self.block_rows = skip, take, block_rows

    def reset(self, state: State | None) -> None:
        if state is None:
            self.cursor.reset(None)
            self._count = 0
            return
        end = self.skip + self.take if self.take >= 0 else states.MAX_COUNT
        self._count = states.field(state, COUNT, hi=end)
        states.load_child(self.cursor.reset, state, CURSOR)

    def state_dict(self) -> State:
        return {CURSOR: self.cursor.state_dict(), COUNT: self._count}

    def next(self) -> Block:
        while self._count < self.skip:
            got = self.cursor.take(min(self.block_rows, self.skip - self._count))
            if got is None:
                raise StopIteration
            self._count += got.num_rows
        limit = self.skip + self.take if self.take >= 0 else 1 << 62
        want = min(self.block_rows, limit - self._count)
        if want <= 0:
            raise StopIteration
        got = self.cursor.take(want)
        if got is None:
            raise StopIteration
        self._count += got.num_rows
        return got
