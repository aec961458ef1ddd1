"""The public conformance harness: restore at every step and compare with the uninterrupted run.

Use it on your own pipelines the way headrace's tests use it on every stage::

    from headrace.testing import check_resume
    report = check_resume(my_dataset)          # raises AssertionError with the first difference
    assert report.restores == report.steps

It checks, for one world: restoring from the JSON state after every step continues exactly like
the uninterrupted run; a state taken after the last batch ends the epoch and then gives the next
epoch; the state never changes shape; and the state is plain JSON.

:func:`check_node_resume` checks the same of one iterator node (or a small pipeline's node tree)
without a loader, so that a broken guarantee names the node that broke it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.block import Block
from headrace.core.node import Node, State
from headrace.core.state import shape
from headrace.core.world import World
from headrace.loader import Loader
from headrace.pipeline import Dataset


@dataclass(frozen=True)
class Report:
    steps: int
    restores: int
    max_state_bytes: int


def same(a: Any, b: Any) -> bool:
    """Batches or rows equal value for value (numpy arrays compared element-wise, dtypes included)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype == object or b.dtype == object:
            return a.shape == b.shape and all(same(x, y) for x, y in zip(a.ravel(), b.ravel(), strict=True))
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    return bool(a == b)


def assert_same_sequence(got: Sequence[Any], want: Sequence[Any], what: str) -> None:
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if not same(g, w):
            raise AssertionError(f"{what}: element {i} differs:\n got {g!r}\nwant {w!r}")
    if len(got) != len(want):
        raise AssertionError(f"{what}: got {len(got)} elements, want {len(want)}")


def check_resume(
    dataset: Dataset,
    *,
    world: World | None = None,
    num_workers: int = 0,
    prefetch: int = 2,
    every: int = 1,
    remainder: str = "drop",
    worker_type: str = "thread",
) -> Report:
    """Restore after every ``every``-th step (and the last) and compare with the uninterrupted run."""
    world = world or World()

    def loader(workers: int = num_workers) -> Loader:
        return Loader(dataset, num_workers=workers, prefetch=prefetch, world=world, remainder=remainder,
                      worker_type=worker_type)  # fmt: skip

    full = loader()
    items: list[Any] = []
    states: list[dict[str, Any]] = [json.loads(json.dumps(full.state_dict()))]
    for item in full:
        items.append(item)
        states.append(json.loads(json.dumps(full.state_dict())))
    next_epoch = list(full)

    _check_shape([s["node"] for s in states[1:]], "the state")
    max_bytes = max(len(json.dumps(s)) for s in states)

    picks = _picks(len(states), every)
    for k in picks:
        resumed = loader()
        resumed.load_state_dict(json.loads(json.dumps(states[k])))
        assert_same_sequence(list(resumed), items[k:], f"resumed after step {k}")
        assert_same_sequence(list(resumed), next_epoch, f"epoch after resuming at step {k}")
    return Report(steps=len(items), restores=len(picks), max_state_bytes=max_bytes)


def _picks(count: int, every: int) -> list[int]:
    """Every ``every``-th of ``count`` states, and the last."""
    return sorted(set(range(0, count, max(1, every))) | {count - 1})


def _check_shape(states: Sequence[Any], what: str) -> None:
    shapes = {json.dumps(shape(s), sort_keys=True) for s in states}
    if len(shapes) > 1:
        raise AssertionError(f"{what} changed shape during the epoch: {sorted(shapes)}")


def check_node_resume(
    factory: Callable[[], Node[Any] | Dataset], *, every: int = 1, limit: int | None = None
) -> Report:
    """Restore one node after every ``every``-th item (and the last) and compare with the uninterrupted run.

    ``factory`` builds a fresh node over the same input each time it is called (or a :class:`Dataset`,
    whose ``build()`` is used). The node runs to its end once (at most ``limit`` items, for an endless
    node), with its state taken before the first item and after each one. Then, for each picked state,
    a fresh node from ``factory`` loads it and must: report that same state before its first ``next()``;
    give exactly the items that followed — value for value, blocks with the same boundaries and lineage;
    and, from the state taken after the end, nothing. Every state must be plain JSON (a JSON round trip
    gives it back unchanged) and keep one shape after the first item. A failure is an ``AssertionError``
    that starts with the node's class name.

    >>> from headrace.stages.limit import LimitNode
    >>> report = check_node_resume(lambda: LimitNode(ListNode([[0, 1, 2], [3, 4]]), skip=1, take=3, block_rows=2))
    >>> report.steps, report.restores
    (2, 3)
    """
    name = type(_built(factory())).__name__

    def run(state: State | None, count: int | None) -> tuple[list[Any], list[State], State | None]:
        node = _built(factory())
        try:
            if state is not None:
                node.load_state_dict(_json_copy(state, f"{name}: a state"))
                if node.state_dict() != state:
                    raise AssertionError(f"{name}: loaded {state!r}, but state_dict() then gave {node.state_dict()!r}")
            items: list[Any] = []
            states = [_plain_json(node.state_dict(), f"{name}: the state before the first item")]
            while count is None or len(items) < count:
                try:
                    items.append(_comparable(node.next()))
                except StopIteration:
                    return items, states, _plain_json(node.state_dict(), f"{name}: the state at the end")
                states.append(_plain_json(node.state_dict(), f"{name}: the state after item {len(items)}"))
            return items, states, None
        finally:
            node.close()

    items, states, end = run(None, limit)
    _check_shape(states[1:], f"{name}: the state")
    picks = _picks(len(states), every)
    for k in picks:
        rest, _, _ = run(states[k], None if limit is None else limit - k)
        assert_same_sequence(rest, items[k:], f"{name}: resumed after item {k}")
    if end is not None:
        rest, _, _ = run(end, 1)
        assert_same_sequence(rest, [], f"{name}: resumed from the state taken at the end")
    return Report(steps=len(items), restores=len(picks), max_state_bytes=max(len(json.dumps(s)) for s in states))


def _built(made: Node[Any] | Dataset) -> Node[Any]:
    return made.build() if isinstance(made, Dataset) else made


def _json_copy(state: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(state, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{what} is not plain JSON ({e}): {state!r}") from e


def _plain_json(state: State, what: str) -> State:
    """``state`` after a JSON round trip, which must give it back unchanged (no tuples, numpy numbers, int keys)."""
    copied = _json_copy(state, what)
    if copied != state:
        raise AssertionError(f"{what} changes in a JSON round trip: {state!r} became {copied!r}")
    return copied


def _comparable(item: Any) -> Any:
    """A block as what :func:`same` compares: its columns (Arrow ones as type and values) and its lineage."""
    if not isinstance(item, Block):
        return item
    columns = {k: v if isinstance(v, np.ndarray) else (str(v.type), v.to_pylist()) for k, v in item.columns.items()}
    return {"columns": columns, "shard": item.shard, "row": item.row}


class ListNode(Node[Block]):
    """A node over fixed blocks of integers in column ``x`` — for testing stages in isolation."""

    def __init__(self, blocks: Sequence[Sequence[int]]) -> None:
        self.blocks = [list(b) for b in blocks]
        self.reset(None)

    def reset(self, state: State | None) -> None:
        self._i = 0 if state is None else int(state["index"])

    def state_dict(self) -> State:
        return {"index": self._i}

    def next(self) -> Block:
        if self._i >= len(self.blocks):
            raise StopIteration
        values = self.blocks[self._i]
        first = sum(len(b) for b in self.blocks[: self._i])
        self._i += 1
        return Block(
            columns={"x": pa.array(values, type=pa.int64())},
            shard=np.zeros(len(values), dtype=np.int32),
            row=np.arange(first, first + len(values), dtype=np.int64),
        )
