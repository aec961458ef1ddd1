"""Ranks and workers: every row exactly once per epoch, equal batch counts, output independent of threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import headrace as hr
from headrace.testing import same

N = 5000


def rank_batches(ds: hr.Dataset, rank: int, world_size: int, workers: int, **kw: object) -> list[dict[str, np.ndarray]]:
    return list(hr.Loader(ds, num_workers=workers, prefetch=3, rank=rank, world_size=world_size, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl.zst"])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_row_exactly_once_across_ranks_and_workers(
    fmt: str, world_size: int, parquet_dir: Path, jsonl_dir: Path
) -> None:
    folder = parquet_dir if fmt == "parquet" else jsonl_dir
    ds = hr.open(str(folder), block_rows=100).shuffle(seed=7, buffer_size=400).batch(32)
    per_rank = N // world_size
    seen: list[int] = []
    counts = set()
    for rank in range(world_size):
        reference = rank_batches(ds, rank, world_size, workers=0)
        for workers in (1, 2, 3):
            other = rank_batches(ds, rank, world_size, workers)
            assert len(other) == len(reference)
            assert all(same(a, b) for a, b in zip(other, reference, strict=True)), (rank, workers)
        ids = [i for b in reference for i in b["id"].tolist()]
        assert len(ids) == per_rank
        counts.add(len(reference))
        seen += ids
    assert len(counts) == 1  # equal batch counts on every rank
    assert len(seen) == len(set(seen)) == world_size * per_rank  # no row twice; only the remainder dropped
    assert N - len(seen) < world_size


def test_ranks_read_contiguous_ranges_of_the_order_without_shuffle(parquet_dir: Path, corpus: pa.Table) -> None:
    ds = hr.open(str(parquet_dir)).batch(1000)
    for rank in range(3):
        ids = [i for b in rank_batches(ds, rank, 3, workers=0) for i in b["id"].tolist()]
        assert ids == list(range(rank * 1666, (rank + 1) * 1666))


def test_pad_remainder_repeats_rows_from_the_start(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).batch(100)
    ranks = [
        [i for b in rank_batches(ds, r, 3, workers=0, remainder="pad") for i in b["id"].tolist()] for r in range(3)
    ]
    assert [len(r) for r in ranks] == [1667, 1667, 1667]
    flat = [i for r in ranks for i in r]
    assert sorted(set(flat)) == list(range(N))
    assert flat[-1] == 0 and flat.count(0) == 2  # the one padded row repeats the start of the order


def test_worker_partitioning_splits_each_rank_further(jsonl_dir: Path) -> None:
    ds = hr.open(str(jsonl_dir)).batch(50)
    seen = []
    for rank in range(2):
        for worker in range(3):
            world = hr.World(rank=rank, world_size=2, worker=worker, num_workers=3)
            seen.append([i for b in hr.Loader(ds, world=world) for i in b["id"].tolist()])
    # each rank its equal half of the order; its 3 workers split that half with no record left out
    half = N // 2
    cuts = [rank * half + half * w // 3 for rank in range(2) for w in range(3)] + [N]
    assert seen == [list(range(cuts[c], cuts[c + 1])) for c in range(6)]


def test_explicit_shard_stage_equals_world_split(parquet_dir: Path) -> None:
    base = hr.open(str(parquet_dir))
    for index in range(4):
        manual = [r["id"] for r in base.shard(4, index)]
        assert manual == [i for b in rank_batches(base.batch(10_000), index, 4, 0) for i in b["id"].tolist()]


def test_shard_order_changes_with_epoch_and_ranks_stay_disjoint(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).shuffle(seed=1, buffer_size=100).batch(500)
    epochs = []
    for epoch in range(2):
        ids = []
        for rank in range(2):
            loader = hr.Loader(ds, rank=rank, world_size=2)
            loader.set_epoch(epoch)
            ids.append([i for b in loader for i in b["id"].tolist()])
        assert not set(ids[0]) & set(ids[1])
        epochs.append(ids)
    assert set(epochs[0][0]) != set(epochs[1][0])  # rank 0 reads other shards in epoch 1
