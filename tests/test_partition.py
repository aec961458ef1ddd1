"""Ranks and workers: every row exactly once per epoch, equal batch counts, output independent of threads."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import headrace as hr
from headrace.stages.partition import elastic_start
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


# -- elastic resume: where the global order continues on a new world (pure arithmetic) --------------
@pytest.mark.parametrize(
    ("start", "batches", "start_batches", "batch_size", "consumers", "expected"),
    [
        (0, 0, 0, 8, 4, 0),  # saved before any batch: the order starts at its beginning
        (0, 3, 0, 4, 2, 24),  # 2 consumers x 3 batches of 4
        (24, 5, 3, 4, 3, 48),  # resumed at 24 on 3 consumers, 2 more batches of 4 each
        (48, 5, 5, 16, 1, 48),  # saved right after an elastic resume: nothing consumed since
        (100, 7, 2, 3, 6, 190),  # 6 consumers (2 ranks x 3 workers) x 5 batches of 3
    ],
)
def test_elastic_start_counts_the_rows_every_consumer_took(
    start: int, batches: int, start_batches: int, batch_size: int, consumers: int, expected: int
) -> None:
    assert elastic_start(start, batches, start_batches, batch_size, consumers) == expected


def test_elastic_start_chains_across_worlds_to_the_global_batch_count() -> None:
    """W=2 -> W'=3 -> W''=4 with the same global batch of 24: the position is always 24 x global batches."""
    global_batch, start, done = 24, 0, 0  # done: the global batches consumed before this world's start
    for world, (start_batches, batches) in zip((2, 3, 4), ((0, 7), (7, 12), (12, 20)), strict=True):
        start = elastic_start(start, batches, start_batches, global_batch // world, world)
        done = batches
        assert start == global_batch * done
    assert start == 480


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 3, 0, 4, 2), "start >= 0"),
        ((0, 3, 4, 4, 2), r"start_batches <= batches, got start=0, start_batches=4, batches=3"),
        ((0, 3, 0, 0, 2), "batch_size >= 1 and consumers >= 1, got 0 and 2"),
        ((0, 3, 0, 4, 0), "batch_size >= 1 and consumers >= 1, got 4 and 0"),
    ],
)
def test_elastic_start_refuses_positions_that_cannot_be(args: tuple[int, int, int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        elastic_start(*args)


def test_a_state_resumed_on_another_world_continues_at_elastic_start(parquet_dir: Path) -> None:
    """The loader's elastic path uses the function: 2 ranks x batch 12 for 3 batches, then 3 ranks x batch 8."""
    ds = hr.open(str(parquet_dir)).shuffle(seed=5, buffer_size=None, chunk_rows=64, window=4)
    saving = hr.Loader(ds.batch(12, drop_last=True), rank=1, world_size=2, prefetch=0)
    head = [b["id"].tolist() for b in islice(saving, 3)]
    resumed = hr.Loader(ds.batch(8, drop_last=True), rank=0, world_size=3, prefetch=0)
    resumed.load_state_dict(saving.state_dict())
    nxt = next(iter(resumed))["id"].tolist()
    state = resumed.state_dict()
    assert (
        state["elastic"]
        == {"start": elastic_start(0, 3, 0, 12, 2), "start_batches": 3}
        == {"start": 72, "start_batches": 3}
    )
    order = [i for b in hr.Loader(ds.batch(72, drop_last=True), prefetch=0) for i in b["id"].tolist()]
    assert head == [order[24 * k + 1 : 24 * k + 24 : 2] for k in range(3)]  # rank 1 of 2: every second sample
    assert nxt == order[72:96:3]  # rank 0 of 3 continues the global order at 72, every third sample
