"""``map`` and ``filter``: block-to-block functions, run in order on a thread pool when there is one.

With a pool, up to ``depth`` blocks are in flight; blocks are still delivered in order, so the output
never depends on the number of workers. The state is the upstream state recorded right after the
block being delivered was read — the last element *delivered*, not the last one produced.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from headrace.core import state as states
from headrace.core.block import Block, as_column, to_numpy, to_pylist
from headrace.core.errors import WorkerError
from headrace.core.node import UPSTREAM, Node, State
from headrace.core.redact import redact, redact_notes

BatchFormat = Literal["numpy", "python", "arrow"]
BlockFn = Callable[[Block], Block]
Lineage = Callable[[int, int], str]


@dataclass(frozen=True)
class Step:
    """A block function with the stage name and lineage that its errors, timeouts and dead workers report."""

    fn: BlockFn
    what: str
    lineage: Lineage | None = None

    def __call__(self, block: Block) -> Block:
        try:
            return self.fn(block)
        except StopIteration as e:  # escaping, it would end the epoch without a word (as PEP 479 says of generators)
            raise RuntimeError(f"{self.what} raised StopIteration; return a value or raise another exception") from e

    def place(self, first: tuple[int, int] | None) -> str:
        """Where a block whose first row is ``first`` (shard, row) comes from."""
        if first is None:
            return "an empty block"
        if self.lineage is None:
            return f"shard {first[0]} (record {first[1]})"
        return self.lineage(*first)

    def describe(self, first: tuple[int, int] | None) -> str:
        """``"map(f) on a block starting at <where>"``, redacted: the call on a block whose first row is ``first``."""
        return _describe(self.what, self.place(first))

    def describe_call(self, block: Block) -> str:
        """What ``self(block)`` is, for a worker's errors (see :func:`headrace.workers.describe_call`)."""
        return self.describe(_first(block))


def _describe(what: str, where: str) -> str:
    return redact(f"{what} on a block starting at {where}")


def _first(block: Block) -> tuple[int, int] | None:
    return (int(block.shard[0]), int(block.row[0])) if block.num_rows else None


def _stage(fn: BlockFn) -> str:
    """``tokenize`` for ``tokenize_fn.<locals>.per_block``: the stage a block function was made for."""
    return str(getattr(fn, "__qualname__", "transform")).split(".", 1)[0].removesuffix("_fn")


class TransformNode(Node[Block]):
    upstream: Node[Block]

    def __init__(self, upstream: Node[Block], fn: BlockFn, pool: Executor | None, depth: int) -> None:
        self.upstream = upstream
        self.fn = fn if isinstance(fn, Step) else Step(fn, _stage(fn))
        self.pool = pool
        if pool is not None and hasattr(pool, "register"):  # worker processes inherit the function when forked
            pool.register(self.fn)
        self.depth = max(1, depth)
        self._pending: deque[tuple[Future[Block], State, tuple[int, int] | None]] = deque()
        self._waiting: tuple[tuple[int, int] | None] | None = None  # (first row of the block waited for,)

    def reset(self, state: State | None) -> None:
        self._drain()
        if state is None:
            self.upstream.reset(None)
        else:
            states.load_child(self.upstream.reset, state, UPSTREAM)
        self._delivered = self.upstream.state_dict()
        self._exhausted = False

    def state_dict(self) -> State:
        return {UPSTREAM: self._delivered}

    def next(self) -> Block:
        while True:
            if self.pool is None:
                block = self.upstream.next()
                first = _first(block)
                self._waiting = (first,)
                try:
                    out = self.fn(block)
                except BaseException as e:
                    self._explain(e, first)
                    raise
                finally:
                    self._waiting = None
                self._delivered = self.upstream.state_dict()
            else:
                while not self._exhausted and len(self._pending) < self.depth:
                    try:
                        block = self.upstream.next()
                    except StopIteration:
                        self._exhausted = True
                        break
                    submitted = self.pool.submit(self.fn, block)
                    self._pending.append((submitted, self.upstream.state_dict(), _first(block)))
                if not self._pending:
                    raise StopIteration
                future, after, first = self._pending.popleft()
                self._waiting = (first,)
                try:
                    out = future.result()
                except BaseException as e:  # its notes may come from a worker process: redacted here too
                    redact_notes(e)
                    self._explain(e, first)
                    raise
                finally:
                    self._waiting = None
                self._delivered = after
            if out.num_rows:
                return out

    def busy(self) -> str | None:
        """The call this node is waiting for right now (``"map(f) on a block starting at file (record r)"``)."""
        waiting = self._waiting
        if waiting is None:
            return super().busy()
        return self.fn.describe(waiting[0])

    def _explain(self, e: BaseException, first: tuple[int, int] | None) -> None:
        """Give ``e`` the stage and place of its block where the function's own note could not (a wrong return
        type, an exception replaced on its way back from a worker process, a BaseException)."""
        if isinstance(e, WorkerError | CancelledError) and not getattr(e, "__notes__", None):
            return  # a dead worker's error names its own call; a cancelled call is the loader stopping
        if not any(str(note).startswith("headrace: ") for note in getattr(e, "__notes__", [])):
            e.add_note(f"headrace: raised by {self.fn.describe(first)}")

    def close(self) -> None:
        self._drain()
        super().close()

    def _drain(self) -> None:
        while self._pending:
            future, _, _ = self._pending.popleft()
            future.cancel()


def columns_fn(kind: str, pairs: tuple[tuple[str, str], ...], lineage: Lineage) -> BlockFn:
    """``remove_columns``, ``select_columns`` (pairs ``(name, name)``) or ``rename_columns`` (``(old, new)``)."""
    names = [a for a, _ in pairs]
    what = f"{kind}({names if kind != 'rename_columns' else dict(pairs)})"

    def per_block(block: Block) -> Block:
        missing = [n for n in names if n not in block.columns]
        if missing:
            where = lineage(int(block.shard[0]), int(block.row[0])) if block.num_rows else "an empty block"
            raise ValueError(redact(f"{what}: the rows have no column(s) {missing} (they have {list(block.columns)}), "
                                  f"in the block starting at {where}"))  # fmt: skip
        if kind == "remove_columns":
            columns = {k: c for k, c in block.columns.items() if k not in names}
        elif kind == "select_columns":
            columns = {k: block.columns[k] for k in names}
        else:
            new = dict(pairs)
            columns = {new.get(k, k): c for k, c in block.columns.items()}
        return Block(columns=columns, shard=block.shard, row=block.row)

    return Step(per_block, what, lineage)


def _input(block: Block, batch_format: BatchFormat) -> Any:
    if batch_format == "python":
        return {k: to_pylist(c) for k, c in block.columns.items()}
    if batch_format == "arrow":
        return dict(block.columns)
    return {k: to_numpy(c) for k, c in block.columns.items()}


def _merge(block: Block, out: Mapping[str, Any], remove: tuple[str, ...], what: str) -> Block:
    if not isinstance(out, Mapping):
        raise TypeError(f"{what} must return a dict of columns, got {type(out).__name__}")
    columns = {k: as_column(v) for k, v in out.items()}
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"{what} returned columns of different lengths: { {k: len(c) for k, c in columns.items()} }")
    n = lengths.pop() if lengths else block.num_rows
    if n != block.num_rows:  # a batched function changed the row count: input columns and lineage do not carry over
        return Block(columns=columns, shard=np.full(n, -1, np.int32), row=np.full(n, -1, np.int64))
    merged = {k: c for k, c in block.columns.items() if k not in remove and k not in columns}
    merged.update(columns)
    return Block(columns=merged, shard=block.shard, row=block.row)


NUMPY_HINT = (
    "the function got numpy arrays (batch_format='numpy', the default for batched maps); a function that "
    "wants Python lists, such as a Hugging Face tokenizer, needs map(fn, batched=True, batch_format='python')"
)


def _numpy_hint(e: Exception, what: str, block: Block) -> Exception:
    """A TypeError or ValueError from a function given numpy arrays of text, said again with the fix;
    ``e`` itself when the block has no text column (the arrays are then not the likely cause)."""
    texts = [k for k, c in block.columns.items() if to_numpy(c).dtype.kind in "OUS"]
    if not texts or not isinstance(e, TypeError | ValueError):
        return e
    message = f"{what}: {e} ({NUMPY_HINT}; text columns: {texts})"
    if type(e) in (TypeError, ValueError):
        return type(e)(message)
    e.add_note(f"headrace: {NUMPY_HINT}")
    return e


def _annotate(e: BaseException, what: str, block: Block, lineage: Callable[[int, int], str]) -> None:
    where = lineage(int(block.shard[0]), int(block.row[0])) if block.num_rows else "an empty block"
    e.add_note(f"headrace: raised by {_describe(what, where)}")


def map_fn(
    fn: Callable[[Any], Any],
    *,
    batched: bool,
    batch_format: BatchFormat,
    remove_columns: tuple[str, ...],
    lineage: Callable[[int, int], str],
) -> BlockFn:
    """A block function applying the user's ``fn`` per row or per block; outputs update the row (as HF)."""
    what = f"map({getattr(fn, '__qualname__', fn)!s})"

    def per_block(block: Block) -> Block:
        try:
            if batched:
                return _merge(block, fn(_input(block, batch_format)), remove_columns, what)
            rows = [fn(row) for row in block.to_pylist()]
        except Exception as e:
            if batched and batch_format == "numpy":
                hinted = _numpy_hint(e, what, block)
                if hinted is not e:
                    _annotate(hinted, what, block, lineage)
                    raise hinted from e
            _annotate(e, what, block, lineage)
            raise
        if not rows:
            return block
        if set(map(type, rows)) != {dict}:  # C-speed check first; the slow search only to name the culprit
            other = next((r for r in rows if not isinstance(r, Mapping)), None)
            if other is not None:  # a list's items would silently become columns named 0, 1, ...
                raise TypeError(f"{what} must return a dict per row, got {type(other).__name__}")
        keys = list(rows[0])
        try:
            out = {k: [r[k] for r in rows] for k in keys}
            extra = None
            if set(map(len, rows)) != {len(keys)}:
                extra = next((set(r) - set(keys) for r in rows if len(r) != len(keys)), None)
            if extra:  # a key the first row lacks would be dropped without a word
                raise KeyError(sorted(extra, key=str)[0])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{what}: every row must return a dict with the same keys {keys} ({e!r})") from None
        return _merge(block, out, remove_columns, what)

    return Step(per_block, what, lineage)


def filter_fn(
    fn: Callable[[Any], Any], *, batched: bool, batch_format: BatchFormat, lineage: Callable[[int, int], str]
) -> BlockFn:
    """A block function keeping the rows for which ``fn`` is true (``batched``: ``fn`` returns a mask)."""
    what = f"filter({getattr(fn, '__qualname__', fn)!s})"

    def per_block(block: Block) -> Block:
        try:
            if batched:
                mask = np.asarray(fn(_input(block, batch_format)), dtype=bool)
            else:
                mask = np.fromiter((bool(fn(row)) for row in block.to_pylist()), dtype=bool, count=block.num_rows)
        except Exception as e:
            _annotate(e, what, block, lineage)
            raise
        if mask.shape != (block.num_rows,):
            raise ValueError(f"{what} must return one boolean per row ({block.num_rows}), got shape {mask.shape}")
        return block if mask.all() else block.filter(mask)

    return Step(per_block, what, lineage)


def describe_fn(fn: Any) -> str:
    """A stable name for a user function: its qualified name, never its repr (no addresses).

    The module is left out on purpose: the same script runs as ``__main__`` and as an imported module.
    """
    return str(getattr(fn, "__qualname__", type(fn).__qualname__))
