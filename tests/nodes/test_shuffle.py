"""``ShuffleNode``: a window of ``buffer_size`` rows emitted in a permutation keyed by seed, epoch and window."""

from __future__ import annotations

from pathlib import Path

import pytest

import headrace as hr
from headrace.core.block import Block, to_pylist
from headrace.core.node import Node
from headrace.stages.shuffle import ShuffleNode
from headrace.testing import ListNode, check_node_resume

BLOCKS = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11]]


def shuffle(seed: int = 3, epoch: int = 0, buffer_size: int = 5, block_rows: int = 2) -> ShuffleNode:
    return ShuffleNode(ListNode(BLOCKS), seed=seed, epoch=epoch, stage=1, buffer_size=buffer_size,
                       block_rows=block_rows)  # fmt: skip


def blocks(node: Node[Block]) -> list[list[int]]:
    return [to_pylist(b.columns["x"]) for b in node]


def test_each_window_is_emitted_in_a_fixed_permutation() -> None:
    # windows of 5 rows: 0..4, 5..9, 10..11; each permuted, cut into blocks of 2
    assert blocks(shuffle()) == [[3, 0], [2, 4], [1], [9, 5], [7, 6], [8], [11, 10]]


def test_rows_keep_their_lineage() -> None:
    assert [b.row.tolist() for b in shuffle()] == [[3, 0], [2, 4], [1], [9, 5], [7, 6], [8], [11, 10]]


@pytest.mark.parametrize(("seed", "epoch"), [(3, 1), (4, 0)])
def test_another_seed_or_epoch_gives_another_order_of_the_same_rows(seed: int, epoch: int) -> None:
    got = blocks(shuffle(seed=seed, epoch=epoch))
    assert got != blocks(shuffle())
    flat = [x for b in got for x in b]
    assert (
        sorted(flat[:5]) == [0, 1, 2, 3, 4]
        and sorted(flat[5:10]) == [5, 6, 7, 8, 9]
        and sorted(flat) == list(range(12))
    )


def test_a_buffer_of_one_row_keeps_the_order() -> None:
    assert blocks(shuffle(buffer_size=1)) == [[x] for x in range(12)]


def test_a_buffer_larger_than_the_data_permutes_all_of_it() -> None:
    flat = [x for b in blocks(shuffle(buffer_size=100, block_rows=100)) for x in b]
    assert sorted(flat) == list(range(12)) and flat != list(range(12))


@pytest.mark.parametrize(("buffer_size", "block_rows"), [(5, 2), (1, 4), (4, 4), (7, 3), (100, 5)])
def test_shuffle_resumes_exactly_inside_and_between_windows(buffer_size: int, block_rows: int) -> None:
    check_node_resume(lambda: shuffle(buffer_size=buffer_size, block_rows=block_rows))


def test_the_state_is_where_the_window_started_and_how_much_of_it_was_emitted() -> None:
    node = shuffle()
    for _ in range(4):
        node.next()  # [3, 0], [2, 4], [1], then [9, 5] of the second window (rows 5..9)
    assert node.state_dict() == {"start": {"upstream": {"index": 1}, "offset": 1}, "window": 1, "emitted": 2}


def test_a_window_shuffle_in_a_pipeline_over_jsonl(jsonl: Path) -> None:
    ds = hr.open(str(jsonl / "*.jsonl"), block_rows=4).shuffle(seed=7, buffer_size=6)
    ids = [r["id"] for r in ds]
    # the shards in the order 1, 0, 2 (ids 10..16, 0..9, 17..23), each window of 6 rows permuted
    assert ids == [11, 15, 13, 14, 10, 12, 16, 1, 4, 2, 0, 3, 8, 5, 9, 17, 7, 6, 19, 23, 21, 18, 20, 22]
    assert sorted(ids) == list(range(24))
    check_node_resume(ds.build)
