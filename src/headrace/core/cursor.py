"""Row-level reading over a node that yields blocks, with a position instead of a buffer.

Stages that consume rows across block boundaries (batch, shuffle windows, take/skip) read through a
``Cursor``. Its state is the upstream state *before* the block it is in the middle of plus how many
rows of that block were consumed; restoring re-reads that one block and drops the consumed rows.
"""

from __future__ import annotations

from collections.abc import Callable

from headrace.core import state as states
from headrace.core.block import Block, Parts, concat
from headrace.core.node import Node, State


class Cursor:
    """Takes rows from ``upstream`` ``n`` at a time.

    >>> from headrace.testing import ListNode
    >>> c = Cursor(ListNode([[1, 2, 3], [4, 5]]))
    >>> c.reset(None); c.take(4).columns["x"].to_pylist()
    [1, 2, 3, 4]
    >>> c.state_dict()["offset"]
    1
    """

    def __init__(self, upstream: Node[Block]) -> None:
        self.upstream = upstream
        self._block: Block | None = None
        self._offset = 0
        self._before: State = {}

    def reset(self, state: State | None) -> None:
        self._block = None
        self._offset = 0
        if state is None:
            self.upstream.reset(None)
            self._before = self.upstream.state_dict()
            return
        upstream = states.field(state, "upstream", dict)
        offset = saved = states.field(state, "offset")
        with states.within("upstream"):
            self.upstream.reset(dict(upstream))
        self._before = dict(upstream)
        while offset:  # rows past the upstream position; more than a block when blocks were cut differently
            try:
                block = self.upstream.next()
            except StopIteration:
                raise states.refuse("offset", f"{saved} rows past its upstream position, but the stream ends "
                                    f"{saved - offset} rows after it") from None  # fmt: skip
            if offset < block.num_rows:
                self._block, self._offset = block, offset
                break
            offset -= block.num_rows
            self._before = self.upstream.state_dict()

    def state_dict(self) -> State:
        return {"upstream": self._before, "offset": self._offset}

    def take(self, n: int) -> Block | None:
        """Up to ``n`` rows (fewer only at the end of the stream); ``None`` when nothing is left."""
        parts = self.take_parts(n)
        return concat(parts) if parts else None

    def take_parts(self, n: int) -> list[Block]:
        """``take(n)`` as the slices of the upstream blocks it spans, not concatenated (empty at the end)."""
        parts: list[Block] = []
        need = n
        while need > 0:
            if self._block is None:
                self._before = self.upstream.state_dict()
                try:
                    block = self.upstream.next()
                except StopIteration:
                    break
                self._block, self._offset = block, 0
            avail = self._block.num_rows - self._offset
            k = min(avail, need)
            if k:
                parts.append(self._block.slice(self._offset, self._offset + k))
            self._offset += k
            need -= k
            if self._offset >= self._block.num_rows:
                self._block, self._offset = None, 0
        if self._block is None:
            self._before = self.upstream.state_dict()
        return parts


class RowWindow:
    """A window of ``size`` rows read through a cursor, remembered as where it started, never as rows.

    Used by stages that reorder or regroup a window (shuffle, best-fit packing): the state is the
    cursor position at the window's start, the window's index, and how many of its output units were
    emitted; restoring re-reads the one window. ``total`` is set by the owner after ``fill`` (how
    many output units the window makes).
    """

    def __init__(self, upstream: Node[Block], size: int) -> None:
        self.cursor = Cursor(upstream)
        self.size = size
        self.rows: Block | Parts | None = None
        self.total = 0

    def reset(self, state: State | None) -> bool:
        """Position at the start or at ``state``; True if the window must be re-filled to continue."""
        self.rows, self.total = None, 0
        if state is None:
            self.cursor.reset(None)
            self.start, self.index, self.emitted = self.cursor.state_dict(), 0, 0
            return False
        start = states.field(state, "start", dict)
        self.index, self.emitted = states.field(state, "window"), states.field(state, "emitted")
        with states.within("start"):
            self.cursor.reset(dict(start))
        self.start = dict(start)
        return self.emitted > 0

    def check_filled(self) -> None:
        """After re-filling a restored window: refuse an ``emitted`` count it does not have."""
        if self.emitted >= self.total:
            problem = "the window there is past the end of the stream" if self.rows is None else (
                f"the window there makes only {self.total}, and a saved window is never wholly emitted")  # fmt: skip
            raise states.refuse("emitted", f"{self.emitted} of the window's units were emitted, but {problem}")

    def fill(self) -> Block | None:
        """Read the window as one block (``None`` at the end)."""
        rows = self.cursor.take(self.size)
        self.rows = rows
        return rows

    def fill_parts(self, copy_below: int = 0) -> Block | Parts | None:
        """Read the window as the upstream blocks it spans, without copying them into one (``None`` at the end).

        A window of fewer than ``copy_below`` bytes is concatenated after all: a copy that small costs less
        memory than taking from many parts costs time.
        """
        parts = self.cursor.take_parts(self.size)
        if not parts:
            self.rows = None
        elif len(parts) == 1 or sum(p.nbytes() for p in parts) < copy_below:
            self.rows = concat(parts)
        else:
            self.rows = Parts(parts)
        return self.rows

    @property
    def done(self) -> bool:
        return self.rows is not None and self.emitted >= self.total

    def ready(self, fill: Callable[[], None]) -> bool:
        """Move past a window that was emitted and ``fill()`` the next when needed; False at the end."""
        if self.done:
            self.advance()
        if self.rows is None:
            fill()
        return self.rows is not None and self.total > 0

    def advance(self) -> None:
        """Move to the next window (after the current one was emitted)."""
        self.start, self.index = self.cursor.state_dict(), self.index + 1
        self.emitted, self.rows, self.total = 0, None, 0

    def state_dict(self) -> State:
        if self.done:
            return {"start": self.cursor.state_dict(), "window": self.index + 1, "emitted": 0}
        return {"start": self.start, "window": self.index, "emitted": self.emitted}
