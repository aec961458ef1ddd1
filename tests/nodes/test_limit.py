"""``LimitNode`` (``take``/``skip``): exactly the first ``n`` rows, or all but them, with exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest

import headrace as hr
from headrace.core.block import Block, to_pylist
from headrace.core.node import Node
from headrace.stages.limit import LimitNode
from headrace.testing import ListNode, check_node_resume

BLOCKS = [[0, 1, 2], [3, 4], [5, 6, 7, 8]]


def limit(skip: int, take: int, block_rows: int = 2) -> LimitNode:
    return LimitNode(ListNode(BLOCKS), skip=skip, take=take, block_rows=block_rows)


def blocks(node: Node[Block]) -> list[list[int]]:
    return [to_pylist(b.columns["x"]) for b in node]


@pytest.mark.parametrize(
    ("skip", "take", "want"),
    [
        (0, 4, [[0, 1], [2, 3]]),
        (0, 5, [[0, 1], [2, 3], [4]]),
        (2, 5, [[2, 3], [4, 5], [6]]),
        (3, -1, [[3, 4], [5, 6], [7, 8]]),
        (0, 0, []),
        (9, -1, []),
        (20, 3, []),
        (7, 100, [[7, 8]]),
    ],
)
def test_take_and_skip_give_exactly_those_rows_in_blocks_of_block_rows(
    skip: int, take: int, want: list[list[int]]
) -> None:
    assert blocks(limit(skip, take)) == want


def test_the_rows_keep_their_lineage() -> None:
    assert [b.row.tolist() for b in limit(3, 4)] == [[3, 4], [5, 6]]


@pytest.mark.parametrize(("skip", "take"), [(0, 4), (2, 5), (3, -1), (0, 0), (20, 3), (1, 8)])
def test_limit_resumes_exactly_after_every_block(skip: int, take: int) -> None:
    report = check_node_resume(lambda: limit(skip, take))
    assert report.steps == len(blocks(limit(skip, take)))


def test_the_state_counts_rows_read_skipped_ones_included() -> None:
    node = limit(2, 5)
    node.next()  # rows 2, 3: the cursor is 1 row into the block [3, 4], which the upstream gives at index 1
    assert node.state_dict() == {"cursor": {"upstream": {"index": 1}, "offset": 1}, "count": 4}


def test_skip_then_take_in_a_pipeline_over_jsonl(jsonl: Path) -> None:
    ds = hr.open(str(jsonl / "*.jsonl"), block_rows=4).skip(8).take(5)
    assert [r["id"] for r in ds] == [8, 9, 10, 11, 12]
    check_node_resume(ds.build)
