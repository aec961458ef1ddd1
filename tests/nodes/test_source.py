"""``SourceNode``: shards in (seeded) order, one consumer's range, blocks with their lineage, exact resume."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

import headrace as hr
import headrace.testing
from headrace.core.world import World
from headrace.pipeline import Context


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_the_shards_are_read_in_order_with_their_lineage(kind: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(kind)
    node = hr.open(str(folder), block_rows=4).build()
    got = list(node)
    assert [b.columns["id"].to_pylist() for b in got] == (
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12, 13], [14, 15, 16], [17, 18, 19, 20], [21, 22, 23]]
        if kind == "jsonl"
        else [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9], [10, 11, 12], [13, 14, 15], [16], [17, 18, 19], [20, 21, 22], [23]]
    )
    assert [(int(b.shard[0]), b.row.tolist()) for b in got][:3] == (
        [(0, [0, 1, 2, 3]), (0, [4, 5, 6, 7]), (0, [8, 9])]
        if kind == "jsonl"
        else [(0, [0, 1, 2]), (0, [3, 4, 5]), (0, [6, 7, 8])]
    )


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
@pytest.mark.parametrize("block_rows", [1, 4, 100])
def test_source_resumes_exactly_after_every_block(kind: str, block_rows: int, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(kind)
    ds = hr.open(str(folder), block_rows=block_rows, chunk_bytes=64)
    report = hr.testing.check_node_resume(ds.build)
    assert report.steps == len(list(ds.build()))


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_each_rank_reads_its_contiguous_range(kind: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(kind)
    ds = hr.open(str(folder), block_rows=4)
    parts = []
    for rank in range(3):
        ctx = Context(world=World(rank=rank, world_size=3))
        parts.append([x for b in ds.build(ctx) for x in b.columns["id"].to_pylist()])
        hr.testing.check_node_resume(partial(ds.build, ctx))
    assert parts == [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]


def test_a_seeded_shard_order_changes_per_epoch(jsonl: Path) -> None:
    ds = hr.open(str(jsonl), block_rows=100).shuffle(seed=7, buffer_size=1)  # a buffer of 1 keeps the rows' order
    assert [ds.source.order(epoch).tolist() for epoch in range(3)] == [[1, 0, 2], [1, 0, 2], [0, 1, 2]]
    shards = {0: list(range(0, 10)), 1: list(range(10, 17)), 2: list(range(17, 24))}
    for epoch, order in enumerate([[1, 0, 2], [1, 0, 2], [0, 1, 2]]):
        got = [x for b in ds.build(Context(epoch=epoch)) for x in b.columns["id"].to_pylist()]
        assert got == [x for k in order for x in shards[k]]
        hr.testing.check_node_resume(partial(ds.build, Context(epoch=epoch)))
