"""``RepeatNode``: the upstream again, built for the next epoch, ``times`` times or forever, with exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest

import headrace as hr
from headrace.core.block import Block, to_pylist
from headrace.core.node import Node
from headrace.stages.repeat import RepeatNode
from headrace.testing import ListNode, check_node_resume


def per_epoch(epoch: int) -> ListNode:
    """Blocks whose values say the epoch they were built for: ``[[10e, 10e + 1], [10e + 2]]``."""
    return ListNode([[10 * epoch, 10 * epoch + 1], [10 * epoch + 2]])


def blocks(node: Node[Block], limit: int | None = None) -> list[list[int]]:
    out = []
    for b in node:
        out.append(to_pylist(b.columns["x"]))
        if len(out) == limit:
            break
    return out


def test_each_repetition_is_a_fresh_upstream_for_the_next_epoch() -> None:
    assert blocks(RepeatNode(per_epoch, times=3)) == [[0, 1], [2], [10, 11], [12], [20, 21], [22]]


def test_once_is_the_upstream_alone() -> None:
    assert blocks(RepeatNode(per_epoch, times=1)) == [[0, 1], [2]]


def test_forever_keeps_going() -> None:
    assert blocks(RepeatNode(per_epoch, times=None), limit=9) == [
        [0, 1], [2], [10, 11], [12], [20, 21], [22], [30, 31], [32], [40, 41],
    ]  # fmt: skip


def test_forever_over_nothing_stops_instead_of_spinning() -> None:
    assert blocks(RepeatNode(lambda epoch: ListNode([]), times=None)) == []


@pytest.mark.parametrize("times", [1, 2, 3])
def test_repeat_resumes_exactly_across_repetitions(times: int) -> None:
    report = check_node_resume(lambda: RepeatNode(per_epoch, times=times))
    assert report.steps == 2 * times


def test_repeat_forever_resumes_exactly() -> None:
    assert check_node_resume(lambda: RepeatNode(per_epoch, times=None), limit=11).steps == 11


def test_the_state_is_the_repetition_and_its_upstream_position() -> None:
    node = RepeatNode(per_epoch, times=3)
    for _ in range(3):
        node.next()
    assert node.state_dict() == {"repetition": 1, "upstream": {"index": 1}}


def test_the_state_at_the_end_stays_that_of_the_last_repetition() -> None:
    node = RepeatNode(per_epoch, times=2)
    assert len(blocks(node)) == 4
    assert node.state_dict() == {"repetition": 1, "upstream": {"index": 2}}


def test_a_shuffled_take_repeated_in_a_pipeline_reshuffles_each_epoch(jsonl: Path) -> None:
    ds = hr.open(str(jsonl / "*.jsonl"), block_rows=4).shuffle(seed=1, buffer_size=4).take(6).repeat(2)
    # epoch 0 reads shard 0 first, epoch 1 shard 1 (ids 10..16), then windows of 4 rows, cut at 6 rows
    assert [r["id"] for r in ds] == [1, 2, 0, 3, 5, 6, 12, 11, 13, 10, 0, 14]
    check_node_resume(ds.build)
