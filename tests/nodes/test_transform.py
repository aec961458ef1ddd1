"""``TransformNode`` (``map``/``filter``): block functions in order, with or without a pool, with exact resume."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace.core.block import Block
from headrace.core.node import Node
from headrace.stages.transform import TransformNode
from headrace.testing import ListNode, check_node_resume

BLOCKS = [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9]]


def squares(block: Block) -> Block:
    x = np.asarray(block.columns["x"])
    return Block(columns={"x": x * x}, shard=block.shard, row=block.row)


def odd(block: Block) -> Block:
    return block.filter(np.asarray(block.columns["x"]) % 2 == 1)


def big(block: Block) -> Block:
    """Keeps rows >= 5: the first two blocks come out empty and are passed over."""
    return block.filter(np.asarray(block.columns["x"]) >= 5)


def blocks(node: Node[Block]) -> list[list[int]]:
    return [np.asarray(b.columns["x"]).tolist() for b in node]


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=3) as executor:
        yield executor


@pytest.mark.parametrize(
    ("fn", "want"),
    [
        (squares, [[0, 1, 4], [9, 16], [25, 36, 49, 64], [81]]),
        (odd, [[1], [3], [5, 7], [9]]),
        (big, [[5, 6, 7, 8], [9]]),
    ],
)  # fmt: skip
@pytest.mark.parametrize("pooled", [False, True])
def test_blocks_come_out_in_order_with_or_without_a_pool(
    fn: Any, want: list[list[int]], pooled: bool, pool: ThreadPoolExecutor
) -> None:
    node = TransformNode(ListNode(BLOCKS), fn, pool if pooled else None, depth=3)
    assert blocks(node) == want


@pytest.mark.parametrize("fn", [squares, odd, big])
@pytest.mark.parametrize("pooled", [False, True])
def test_transform_resumes_exactly_after_every_block(fn: Any, pooled: bool, pool: ThreadPoolExecutor) -> None:
    check_node_resume(lambda: TransformNode(ListNode(BLOCKS), fn, pool if pooled else None, depth=3))


def test_the_state_is_the_upstream_after_the_block_delivered_not_the_blocks_in_flight(
    pool: ThreadPoolExecutor,
) -> None:
    node = TransformNode(ListNode(BLOCKS), squares, pool, depth=3)
    node.next()  # three blocks submitted, one delivered
    assert node.state_dict() == {"upstream": {"index": 1}}
    node.close()


def words(row: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(row["text"].split()), "text": row["text"].upper()}


def test_map_and_filter_in_a_pipeline_over_jsonl(jsonl: Path) -> None:
    ds = (
        hr.open(str(jsonl / "*.jsonl"), block_rows=4)
        .filter(lambda r: r["id"] % 3 == 0)
        .map(words)
        .select_columns(["id", "text", "words"])
    )
    assert list(ds) == [
        {"id": i, "text": f"ROW {i} " + "X" * (i % 5), "words": 2 + (i % 5 > 0)} for i in range(0, 24, 3)
    ]
    check_node_resume(ds.build)


def test_a_batched_map_that_changes_the_row_count_in_a_pipeline(jsonl: Path) -> None:
    def twice_even(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": np.asarray([i for i in batch["id"] for _ in range(1 + (i % 2 == 0))], dtype=np.int64)}

    ds = hr.open(str(jsonl / "part-1.jsonl"), block_rows=4).map(
        twice_even, batched=True, remove_columns=["text", "ids"]
    )
    assert [r["id"] for r in ds] == [10, 10, 11, 12, 12, 13, 14, 14, 15, 16, 16]
    check_node_resume(ds.build)
