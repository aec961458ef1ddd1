"""Global order for indexed sources: a permutation per epoch, pinned by golden values, elastic across worlds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from headrace.core.state import digest
from headrace.stages.global_source import PieceCache
from headrace.stages.order import GlobalOrder

G = 24  # the global batch: divisible by every world size in the grid


def dataset(folder: Path, batch: int) -> hr.Dataset:
    return hr.open(str(folder)).shuffle(seed=5, buffer_size=None, chunk_rows=64, window=4).batch(batch, drop_last=True)


def run(folder: Path, world: int, workers: int, steps: int | None = None, state: Any = None, nw: int = 1) -> Any:
    """Global batches (the union of every consumer's t-th batch) and one consumer's state."""
    outs, saved = [], None
    for rank in range(world):
        for worker in range(nw):
            loader = hr.Loader(dataset(folder, G // (world * nw)), num_workers=workers, prefetch=3,
                               world=hr.World(rank, world, worker, nw))  # fmt: skip
            if state is not None:
                loader.load_state_dict(json.loads(json.dumps(state)))
            got = []
            for t, b in enumerate(loader):
                got.append(b["id"].tolist())
                if steps is not None and t + 1 == steps:
                    break
            outs.append(got)
            saved = saved or loader.state_dict()
    assert len({len(o) for o in outs}) == 1  # equal steps on every consumer
    return [sorted(i for o in outs for i in o[t]) for t in range(len(outs[0]))], saved


def test_every_epoch_is_a_permutation_and_epochs_differ(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).shuffle(seed=1, buffer_size=None).batch(1000)
    loader = hr.Loader(ds)
    e0 = [i for b in loader for i in b["id"].tolist()]
    e1 = [i for b in loader for i in b["id"].tolist()]
    assert sorted(e0) == sorted(e1) == list(range(5000))
    assert e0 != e1 and e0 != sorted(e0)
    assert e0 == [i for b in hr.Loader(ds, num_workers=2) for i in b["id"].tolist()]


def test_golden_order_for_a_fixed_seed(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).shuffle(seed=42, buffer_size=None, chunk_rows=100, window=3).batch(10)
    first = next(iter(hr.Loader(ds)))["id"].tolist()
    assert first == GOLDEN_FIRST_BATCH
    order = GlobalOrder([5, 3], seed=7, epoch=2, chunk_rows=2, window=2)
    assert order.locate(range(order.total)) == GOLDEN_SMALL


GOLDEN_FIRST_BATCH = [4283, 3636, 4274, 4112, 4120, 4150, 3632, 4121, 3638, 4167]
GOLDEN_SMALL = [(0, 2), (0, 3), (1, 2), (0, 1), (0, 0), (1, 0), (1, 1), (0, 4)]


def test_sample_i_needs_no_reading_of_the_others() -> None:
    order = GlobalOrder([1_000_000] * 10, seed=3, epoch=0, chunk_rows=1024, window=16)
    everything = order.locate_array(np.arange(order.total))
    picks = np.array([0, 123_456, 5_000_000, 9_999_999])
    shards, rows = order.locate_array(picks)
    assert shards.tolist() == everything[0][picks].tolist() and rows.tolist() == everything[1][picks].tolist()
    assert len(set(zip(everything[0].tolist(), everything[1].tolist(), strict=True))) == 10_000_000


@pytest.mark.parametrize("before", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("after", [1, 2, 3, 4, 8])
def test_elastic_resume_gives_identical_global_batches(before: int, after: int, parquet_dir: Path) -> None:
    workers = [0, 1, 2, 4]
    full, _ = run(parquet_dir, 1, 0)
    head, state = run(parquet_dir, before, workers[before % 4], steps=7)
    tail, _ = run(parquet_dir, after, workers[after % 4], state=state)
    assert head + tail == full
    flat = [i for b in full for i in b]
    assert len(flat) == len(set(flat)) == 5000 // G * G


def test_elastic_with_partitioning_workers(parquet_dir: Path) -> None:
    full, _ = run(parquet_dir, 1, 0)
    head, state = run(parquet_dir, 2, 0, steps=11, nw=2)
    tail, _ = run(parquet_dir, 3, 2, state=state, nw=2)
    assert head + tail == full


def test_restoring_at_half_of_ten_million_reads_about_one_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for part in range(4):
        ids = np.arange(part * 2_500_000, (part + 1) * 2_500_000, dtype=np.int64)
        pq.write_table(pa.table({"id": ids}), tmp_path / f"part-{part}.parquet", row_group_size=8192)
    ds = hr.open(str(tmp_path)).shuffle(seed=0, buffer_size=None, chunk_rows=1024, window=8).batch(4096)
    loader = hr.Loader(ds, rank=0, world_size=2)
    state = loader.state_dict()
    state["batches"], state["epoch"] = 610, 0  # 610 steps x 4096 x 2 ranks = 4,997,120 samples consumed
    state["digest"] = digest(state)  # an edited state is refused unless signed again
    reads: list[int] = []
    original = PieceCache._read

    def counting(self: PieceCache, shard: int, row: int) -> Any:  # every piece read, in parallel or not
        piece = original(self, shard, row)
        reads.append(piece.end - piece.start.slot)
        return piece

    resumed = hr.Loader(ds, rank=1, world_size=4, prefetch=0)  # another world: the elastic path
    resumed.load_state_dict(state)
    monkeypatch.setattr(PieceCache, "_read", counting)
    first = next(iter(resumed))
    order = GlobalOrder([2_500_000] * 4, seed=0, epoch=0, chunk_rows=1024, window=8)
    shards, rows = order.locate_array(4_997_120 + 1 + 4 * np.arange(4096))
    assert first["id"].tolist() == (shards * 2_500_000 + rows).tolist()
    # The batch spans 4096 x 4 = 16,384 positions of the order: at most 3 windows of 8 chunks, each
    # chunk inside one 8,192-row group. So at most 24 row groups — not the 5M-row prefix.
    assert sum(reads) <= 3 * 8 * 8192


@pytest.mark.parametrize("group_rows,window", [(100, 4), (150_000, 2)])
def test_every_piece_is_read_once_per_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group_rows: int, window: int
) -> None:
    """The piece cache holds a window of chunks and one more, not more: no piece is read twice in an epoch.

    Row groups of 150,000 rows are read as pieces of at most 65,536 rows (3 per group): the cache must then
    count 3 pieces per chunk, or it would re-read pieces for every block.
    """
    rows = 3 * group_rows if group_rows > 1000 else 2000
    pq.write_table(pa.table({"id": np.arange(rows, dtype=np.int64)}), tmp_path / "a.parquet", row_group_size=group_rows)
    pieces: list[tuple[int, int]] = []
    original = PieceCache._read

    def counting(self: PieceCache, shard: int, row: int) -> Any:  # every piece read, in parallel or not
        piece = original(self, shard, row)
        pieces.append((shard, piece.start.slot))
        return piece

    monkeypatch.setattr(PieceCache, "_read", counting)
    ds = hr.open(str(tmp_path)).shuffle(seed=3, buffer_size=None, window=window).batch(4096)
    got = np.concatenate([b["id"] for b in hr.Loader(ds)])
    assert sorted(got.tolist()) == list(range(rows))
    per_group = -(-group_rows // 65536)
    assert len(pieces) == len(set(pieces)) == (rows // group_rows) * per_group


def test_changed_world_on_a_non_elastic_pipeline_is_refused(parquet_dir: Path) -> None:
    for ds, why in [
        (hr.open(str(parquet_dir)).shuffle(seed=1, buffer_size=100).batch(8), "not in global order"),
        (hr.open(str(parquet_dir)).shuffle(seed=1, buffer_size=None).filter(lambda r: True).batch(8), "filter"),
    ]:
        loader = hr.Loader(ds, rank=0, world_size=2)
        it = iter(loader)
        next(it)
        it.close()
        with pytest.raises(hr.StateError, match=why):
            hr.Loader(ds, rank=0, world_size=3).load_state_dict(loader.state_dict())
    other = hr.open(str(parquet_dir)).shuffle(seed=2, buffer_size=None).batch(8)
    with pytest.raises(hr.StateError, match="shuffle_seed: saved 1, now 2"):
        saved = hr.Loader(hr.open(str(parquet_dir)).shuffle(seed=1, buffer_size=None).batch(8), world_size=2, rank=0)
        hr.Loader(other, rank=0, world_size=3).load_state_dict(saved.state_dict())


def test_global_order_needs_an_indexed_source(jsonl_dir: Path) -> None:
    with pytest.raises(hr.SourceError, match="indexed source"):
        list(hr.Loader(hr.open(str(jsonl_dir)).shuffle(seed=0, buffer_size=None).batch(8)))
    with pytest.raises(ValueError, match="right after open"):
        hr.open(str(jsonl_dir)).map(lambda r: r).shuffle(buffer_size=None)


def token_bins(folder: Path, corpus: pa.Table, bpe_path: str) -> Path:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(bpe_path)
    docs = tok.encode_batch(corpus["text"].to_pylist())
    ids = np.concatenate([np.asarray([*e.ids, 0], dtype=np.uint16) for e in docs])
    for i, part in enumerate(np.array_split(ids, 3)):
        part.tofile(folder / f"part-{i}.bin")  # nanoGPT layout: flat uint16
    return folder


def test_token_windows_by_index_cover_every_window_once(tmp_path: Path, corpus: pa.Table, bpe_path: str) -> None:
    folder = token_bins(tmp_path, corpus, bpe_path)
    stream = np.concatenate([np.fromfile(folder / f"part-{i}.bin", dtype=np.uint16) for i in range(3)])
    ds = hr.open(str(folder / "*.bin")).shuffle(seed=1, buffer_size=None).window(128, stride=96, shift=2)
    assert ds.elastic() == "it has no batch() stage"
    batches = list(hr.Loader(ds.batch(32), num_workers=2))
    ids = np.concatenate([b["input_ids"] for b in batches])
    labels = np.concatenate([b["labels"] for b in batches])
    count = (len(stream) - 130) // 96 + 1
    assert len(ids) == count
    windows = {tuple(stream[k * 96 : k * 96 + 128].tolist()): k for k in range(count)}
    found = [windows[tuple(row.tolist())] for row in ids]  # KeyError if a row is not a window as defined
    assert sorted(found) == list(range(count)) and found != sorted(found)
    for row, lab in zip(ids, labels, strict=True):
        assert np.array_equal(lab[:-2], row[2:])


def test_token_windows_resume_elastically(tmp_path: Path, corpus: pa.Table, bpe_path: str) -> None:
    folder = token_bins(tmp_path, corpus, bpe_path)

    def windows(world: int, steps: int | None = None, state: Any = None) -> Any:
        outs, saved = [], None
        for rank in range(world):
            ds = hr.open(str(folder / "*.bin")).shuffle(seed=4, buffer_size=None).window(64)
            loader = hr.Loader(ds.batch(16 // world, drop_last=True), rank=rank, world_size=world)
            if state is not None:
                loader.load_state_dict(state)
            got = []
            for t, b in enumerate(loader):
                got.append(sorted(map(tuple, b["input_ids"].tolist())))
                if steps is not None and t + 1 == steps:
                    break
            outs.append(got)
            saved = saved or loader.state_dict()
        return [sorted(w for o in outs for w in o[t]) for t in range(len(outs[0]))], saved

    full, _ = windows(1)
    head, state = windows(2, steps=9)
    tail, _ = windows(4, state=json.loads(json.dumps(state)))
    assert head + tail == full and len(full) > 50
