"""The public conformance harness: restore at every step and compare with the uninterrupted run.

Use it on your own pipelines the way headrace's tests use it on every stage::

    from headrace.testing import check_resume
    report = check_resume(my_dataset)          # raises AssertionError with the first difference
    assert report.restores == report.steps

It checks, for one world: restoring from the JSON state after every step continues exactly like
the uninterrupted run; a state taken after the last batch ends the epoch and then gives the next
epoch; the state never changes shape; and the state is plain JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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

    shapes = {json.dumps(shape(s["node"]), sort_keys=True) for s in states[1:]}
    if len(shapes) > 1:
        raise AssertionError(f"the state changed shape during the epoch: {sorted(shapes)}")
    max_bytes = max(len(json.dumps(s)) for s in states)

    picks = sorted(set(range(0, len(states), max(1, every))) | {len(states) - 1})
    for k in picks:
        resumed = loader()
        resumed.load_state_dict(json.loads(json.dumps(states[k])))
        assert_same_sequence(list(resumed), items[k:], f"resumed after step {k}")
        assert_same_sequence(list(resumed), next_epoch, f"epoch after resuming at step {k}")
    return Report(steps=len(items), restores=len(picks), max_state_bytes=max_bytes)


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
