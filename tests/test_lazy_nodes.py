"""Lazy positioning: building a pipeline positions nothing; each node is positioned once, on its first
``next()`` or ``state_dict()`` (a fresh start) or by ``load_state_dict`` (a restore) — issue #16 §2.

The source's ``SourceNode`` is counted where it is built and where it is positioned (``reset``), by
wrappers that call the real methods through.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import headrace as hr
from headrace.core.node import Node, line, walk
from headrace.stages.limit import LimitNode
from headrace.stages.mix import MixNode
from headrace.stages.repeat import RepeatNode
from headrace.stages.source import SourceNode
from headrace.testing import ListNode


class Counts:
    """How many ``SourceNode``s were built, how many times one was positioned, and the most times any one was."""

    def __init__(self) -> None:
        self.built = 0
        self.positioned = 0
        self.each: Counter[int] = Counter()

    @property
    def most(self) -> int:
        return max(self.each.values(), default=0)


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    seen = Counts()
    init, reset = SourceNode.__init__, SourceNode.reset

    def counted_init(self: SourceNode, *args: Any, **kwargs: Any) -> None:
        seen.built += 1
        init(self, *args, **kwargs)

    def counted_reset(self: SourceNode, state: dict[str, Any] | None) -> None:
        seen.positioned += 1
        seen.each[id(self)] += 1
        reset(self, state)

    monkeypatch.setattr(SourceNode, "__init__", counted_init)
    monkeypatch.setattr(SourceNode, "reset", counted_reset)
    yield seen


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """One JSON Lines shard of 30 rows, ids 0..29."""
    path = tmp_path / "part-0.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(30)))
    return path


def ids(batch: Any) -> list[int]:
    return [int(i) for i in batch["id"]]


def pipeline(data: Path) -> hr.Dataset:
    return hr.open(str(data)).take(10).repeat(2).batch(4)


def test_building_positions_nothing(data: Path, counts: Counts) -> None:
    node = pipeline(data).build()
    assert (counts.built, counts.positioned) == (1, 0)  # repetition 0's source, built and left unread
    assert not any(n.positioned for n in walk(node))


def test_a_fresh_start_positions_the_source_once(data: Path, counts: Counts) -> None:
    node = pipeline(data).build()
    assert ids(node.next()) == [0, 1, 2, 3]
    assert (counts.built, counts.positioned) == (1, 1)
    rest = [ids(b) for b in node]
    assert rest == [[4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert (counts.built, counts.positioned, counts.most) == (2, 2, 1)  # a source per repetition, positioned once


def test_state_dict_first_positions_once_and_says_the_start(data: Path, counts: Counts) -> None:
    node = pipeline(data).build()
    start = node.state_dict()
    assert (counts.built, counts.positioned) == (1, 1)
    assert node.state_dict() == start
    assert ids(node.next()) == [0, 1, 2, 3]
    assert counts.positioned == 1


@pytest.mark.parametrize(
    ("taken", "positioned", "rest"),
    [
        (1, 1, [[4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]),  # in repetition 0: its source kept
        # the state is the cursor's: repetition 0 at its end, then 2 rows into repetition 1 — one source each
        (3, 2, [[2, 3, 4, 5], [6, 7, 8, 9]]),
    ],
)
def test_a_restore_positions_each_source_once(
    data: Path, counts: Counts, taken: int, positioned: int, rest: list[list[int]]
) -> None:
    first = pipeline(data).build()
    for _ in range(taken):
        first.next()
    state = first.state_dict()
    first.close()
    counts.built, counts.positioned, counts.each = 0, 0, Counter()
    node = pipeline(data).build()
    node.load_state_dict(state)
    assert (counts.built, counts.positioned, counts.most) == (positioned, positioned, 1)
    assert node.state_dict() == state  # right after load_state_dict, before any next()
    assert [ids(b) for b in node] == rest
    assert (counts.built, counts.positioned, counts.most) == (2, 2, 1)  # repetition 1's source when reached


def test_the_loader_positions_the_source_once_per_repetition(data: Path, counts: Counts) -> None:
    batches = [ids(b) for b in hr.Loader(pipeline(data))]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert (counts.positioned, counts.most) == (2, 1)


def test_children_are_a_nodes_inputs() -> None:
    source = ListNode([[1, 2], [3]])
    limit = LimitNode(source, skip=0, take=2, block_rows=8)
    assert source.children() == []
    assert limit.children() == [source]
    repeat = RepeatNode(lambda epoch: ListNode([[epoch]]), times=2)
    assert [type(n).__name__ for n in line(repeat)] == ["RepeatNode", "ListNode"]


def pick(node: ListNode, epoch: int) -> ListNode:
    return node


def test_a_mixture_ends_the_line_and_its_sources_are_its_children() -> None:
    parts = [ListNode([[1]]), ListNode([[2]])]
    builders = [partial(pick, p) for p in parts]
    mix = MixNode(builders, names=["a", "b"], weights=[0.5, 0.5], seed=0, epoch=0,
                  stage=0, stop="all_exhausted", shard_offsets=[0, 0], budgets=[None, None], block_rows=4)  # fmt: skip
    assert mix.children() == parts
    assert list(line(mix)) == [mix]
    assert {id(n) for n in walk(mix)} == {id(mix), *map(id, parts)}


def test_a_node_positioned_by_hand_is_not_positioned_again() -> None:
    class Counting(ListNode):
        resets = 0

        def reset(self, state: dict[str, Any] | None) -> None:
            Counting.resets += 1
            super().reset(state)

    node: Node[Any] = LimitNode(Counting([[1, 2], [3]]), skip=0, take=3, block_rows=8)
    node.reset(None)
    before = Counting.resets
    assert [b.num_rows for b in node] == [3]
    assert Counting.resets == before
