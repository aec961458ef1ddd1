"""split(): hashed parts by record place or id, HF slices by position, split_rate; each part an ordinary pipeline."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from headrace.plan import Context
from headrace.testing import check_resume

ROWS = 9999  # divisible by 3: three consumers drop no row
MASK = (1 << 64) - 1


def unit(seed: int, key: str, row: int) -> float:
    """The documented hash, in plain Python: SplitMix64 of blake2b(key, seed) + (row + 1) * golden gamma."""
    k = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, key=str(seed).encode()).digest(), "little")
    z = (k + (row + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return ((z ^ (z >> 31)) >> 11) * 2.0**-53


def write(folder: Path, name: str, ids: range) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    table = pa.table({"id": pa.array(list(ids), pa.int64()), "text": [f"record {i}" for i in ids]})
    pq.write_table(table, path, row_group_size=1000)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """9,999 ids over four Parquet files: 0..2999, 3000..4999, 5000..8999, 9000..9998 (as FILES says)."""
    root = tmp_path / "data"
    for i, (lo, hi) in enumerate([(0, 3000), (3000, 5000), (5000, 9000), (9000, ROWS)]):
        write(root, f"part-{i}.parquet", range(lo, hi))
    return root


def ids(ds: hr.Dataset) -> list[int]:
    return [row["id"] for row in ds]


def test_parts_are_disjoint_cover_everything_and_follow_the_documented_hash(folder: Path) -> None:
    parts = hr.open(str(folder)).split({"train": 0.98, "validation": 0.02}, seed=7)
    train, val = ids(parts["train"]), ids(parts["validation"])
    assert sorted(train + val) == list(range(ROWS))  # every record once: disjoint, and nothing lost
    files = {"part-0.parquet": (0, 3000), "part-1.parquet": (3000, 5000), "part-2.parquet": (5000, 9000),
             "part-3.parquet": (9000, ROWS)}  # fmt: skip
    want = [lo + r for name, (lo, hi) in files.items() for r in range(hi - lo) if unit(7, name, r) >= 0.98]
    assert val == want  # exact membership, in reading order
    assert abs(len(val) - 0.02 * ROWS) < 60  # 4 standard deviations (14 rows)
    assert (len(val), val[:5]) == (223, [7, 52, 173, 201, 303])  # golden: the same split in every release


def test_proportions_summing_below_one_leave_the_rest_out_and_bad_ones_are_refused(folder: Path) -> None:
    parts = hr.open(str(folder)).split({"a": 0.1, "b": 0.2}, seed=1)
    a, b = set(ids(parts["a"])), set(ids(parts["b"]))
    assert not a & b and abs(len(a) - 1000) < 120 and abs(len(b) - 2000) < 160
    ds = hr.open(str(folder))
    with pytest.raises(ValueError, match=r"sum to 1\.1, more than 1"):
        ds.split({"train": 0.9, "validation": 0.2})
    with pytest.raises(ValueError, match="proportion of 'x' must be a number in"):
        ds.split({"x": 0})
    with pytest.raises(ValueError, match="no such column; the columns are"):
        ds.split({"x": 0.5}, by="uid")
    with pytest.raises(ValueError, match="batch\\(\\) must be the last stage"):
        ds.batch(4).split({"x": 0.5})


def test_a_file_added_beside_the_others_leaves_every_record_in_its_part(folder: Path) -> None:
    before = hr.open(str(folder)).split({"train": 0.9, "validation": 0.1}, seed=3)
    val_before = set(ids(before["validation"]))
    write(folder, "a-new.parquet", range(20_000, 23_000))  # sorts first: every old file's index moves
    after = hr.open(str(folder)).split({"train": 0.9, "validation": 0.1}, seed=3)
    val_after = set(ids(after["validation"]))
    assert {i for i in val_after if i < ROWS} == val_before
    assert 200 < len(val_after - val_before) < 400  # the new file's records are split too


def test_the_same_parts_on_three_ranks_and_by_an_id_column_whatever_the_files(folder: Path, tmp_path: Path) -> None:
    ds = hr.open(str(folder), block_rows=500).split({"train": 0.5, "validation": 0.5}, seed=2)["validation"]
    alone = ids(ds)
    on_ranks = []
    for rank in range(3):
        node = ds.build(Context(world=hr.World(rank=rank, world_size=3)))
        on_ranks += [r["id"] for block in node for r in block.to_pylist()]
    assert sorted(on_ranks) == sorted(alone)

    by_id = hr.open(str(folder)).split({"train": 0.5, "validation": 0.5}, seed=2, by="id")["validation"]
    other = tmp_path / "other"
    for i, lo in enumerate(range(0, ROWS, 1111)):
        write(other, f"x{i}.parquet", range(lo, min(lo + 1111, ROWS))[::-1])
    relaid = hr.open(str(other)).split({"train": 0.5, "validation": 0.5}, seed=2, by="id")["validation"]
    assert sorted(ids(by_id)) == sorted(ids(relaid)) and abs(len(ids(by_id)) - ROWS / 2) < 200


def test_each_part_is_an_ordinary_pipeline_that_resumes_exactly(folder: Path) -> None:
    parts = hr.open(str(folder), block_rows=256).split({"train": 0.9, "validation": 0.1}, seed=5)
    train = parts["train"].shuffle(seed=1, buffer_size=500).batch(64)
    report = check_resume(train, every=17)
    assert report.steps == -(-len(ids(parts["train"])) // 64)
    val = parts["validation"].shuffle(seed=4, buffer_size=None).batch(32)  # global order after a split
    assert sorted(r for b in val for r in b["id"].tolist()) == ids(parts["validation"])
    check_resume(val, every=3)
    check_resume(val, world=hr.World(rank=1, world_size=2), every=2)


def _validation_on_rank(folder: str, agree: str, rank: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from headrace.agree import FileAgreement

    val = hr.open(folder, block_rows=500).split({"train": 0.9, "validation": 0.1}, seed=5)["validation"]
    world = hr.World(rank=rank, world_size=3)
    loader = hr.Loader(val.batch(2), world=world, agreement=FileAgreement(agree, consumers=3, consumer=rank))
    alone = hr.Loader(val.batch(2), world=world, uneven="off")
    queue.put((rank, [b["id"].tolist() for b in loader], [b["id"].tolist() for b in alone]))


def test_a_part_gives_every_rank_the_same_number_of_batches(folder: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_validation_on_rank, args=(str(folder), str(tmp_path / "agree"), r, queue))
             for r in range(3)]  # fmt: skip
    for p in procs:
        p.start()
    got = dict((rank, (agreed, alone)) for rank, agreed, alone in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    counts = [len(got[r][1]) for r in range(3)]
    assert len(set(counts)) > 1  # the hash leaves the ranks different counts on their own
    assert [got[r][0] for r in range(3)] == [got[r][1][: min(counts)] for r in range(3)]  # uneven="stop"


def test_hf_slices_keep_exactly_the_rows_hf_keeps(folder: Path) -> None:
    ds = hr.open(str(folder))
    assert ids(ds.split("train[:25%]")) == list(range(2500))
    assert ids(ds.split("train[10%:20%]")) == list(range(1000, 2000))
    assert ids(ds.split("train[2990:3010]")) == list(range(2990, 3010))
    assert ids(ds.split("train[-5:]")) == list(range(ROWS - 5, ROWS))
    assert ids(ds.split("train[:1%]+train[-1%:]")) == [*range(100), *range(ROWS - 100, ROWS)]
    assert ids(ds.split("train[:33%](pct1_dropremainder)")) == list(range(33 * 99))
    assert ids(ds.split("train")) == list(range(ROWS))
    assert ds.split("train[:10%]").source.shards[0].name == "part-0.parquet"
    assert len(ds.split("train[:10%]").source.shards) == 1  # the files outside the slice are not read
    assert sorted(ids(ds.split("train[20%:40%]").shuffle(seed=1, buffer_size=None))) == list(range(2000, 4000))
    with pytest.raises(ValueError, match="the slices overlap"):
        ds.split("train[:20%]+train[10%:30%]")
    with pytest.raises(ValueError, match="not a split name or slice"):
        ds.split("train[a:b]")
    with pytest.raises(ValueError, match="right after open"):
        ds.map(lambda r: r).split("train[:10%]")


def test_hf_slices_agree_with_load_dataset(folder: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    for spec in ("train[:25%]", "train[33%:67%]", "train[-7%:]", "train[1234:5678]", "train[:10%]+train[-3%:]"):
        hf = datasets.load_dataset("parquet", data_files=files, split=spec, cache_dir=str(tmp_path / "hf"))
        assert ids(hr.open(files).split(spec)) == hf["id"], spec


def test_a_split_of_a_slice_keeps_each_record_in_its_part(folder: Path) -> None:
    whole = hr.open(str(folder)).split({"train": 0.8, "validation": 0.2}, seed=9)["validation"]
    sliced = hr.open(str(folder)).split("train[40%:60%]").split({"train": 0.8, "validation": 0.2}, seed=9)
    assert ids(sliced["validation"]) == [i for i in ids(whole) if 4000 <= i < 6000]


def test_split_rate_is_streaming_dataloaders_split(folder: Path) -> None:
    ds = hr.open(str(folder))
    parts = ds.split({"train": 0.9, "validation": 0.1}, seed=4)
    assert ids(ds.split("train", split_rate=0.9, seed=4)) == ids(parts["train"])
    assert ids(ds.split("validation", split_rate=0.9, seed=4)) == ids(parts["validation"])
    with pytest.raises(ValueError, match="the part is 'train' or 'validation'"):
        ds.split("dev", split_rate=0.9)


def test_split_describes_itself_and_refuses_a_state_of_another_part(folder: Path) -> None:
    parts = hr.open(str(folder)).split({"train": 0.9, "validation": 0.1}, seed=4)
    assert parts["validation"].describe()[-1] == {
        "stage": "split", "part": "validation", "seed": 4, "by": None, "parts": {"train": 0.9, "validation": 0.1},
    }  # fmt: skip
    loader = hr.Loader(parts["train"].batch(8))
    next(iter(loader))
    state = json.loads(json.dumps(loader.state_dict()))
    with pytest.raises(hr.StateError, match="part: saved 'train', now 'validation'"):
        hr.Loader(parts["validation"].batch(8)).load_state_dict(state)


def test_a_mixture_splits_by_place_and_a_hf_dataset_by_id(folder: Path) -> None:
    mixture = hr.mix({"a": hr.open(str(folder / "part-0.parquet")), "b": hr.open(str(folder / "part-1.parquet"))})
    mixed = mixture.split({"x": 0.5, "y": 0.5}, seed=1)
    x, y = ids(mixed["x"]), ids(mixed["y"])
    assert sorted(x + y) == sorted(ids(mixture)) and not set(x) & set(y) and len(x) > 1500
    datasets = pytest.importorskip("datasets")
    hf = hr.from_hf(datasets.Dataset.from_dict({"id": list(range(100))}).to_iterable_dataset())
    with pytest.raises(ValueError, match="split by an id column instead"):
        hf.split({"x": 0.5})
    by_id = hf.split({"x": 0.5, "y": 0.5}, seed=1, by="id")
    assert sorted(ids(by_id["x"]) + ids(by_id["y"])) == list(range(100))


def test_a_batched_map_that_changes_the_row_count_cannot_split_by_place(folder: Path) -> None:
    doubled = hr.open(str(folder)).map(lambda b: {"id": [*b["id"], *b["id"]]}, batched=True, batch_format="python")
    with pytest.raises(ValueError, match="split before that map, or split by an id column"):
        ids(doubled.split({"x": 0.5})["x"])
    assert len(ids(doubled.split({"x": 0.5}, by="id")["x"])) % 2 == 0  # both copies of an id go together


def test_token_windows_split_by_file_and_window_as_streaming_dataloaders_split_rate(tmp_path: Path) -> None:
    np.save(tmp_path / "tokens.npy", np.arange(20_000, dtype=np.uint16))
    windows = hr.open(str(tmp_path / "tokens.npy")).shuffle(seed=3, buffer_size=None).window(100)

    def starts(ds: hr.Dataset) -> list[int]:
        return sorted(int(row["input_ids"][0]) for row in ds)

    train = starts(windows.split("train", split_rate=0.9, seed=1))
    val = starts(windows.split("validation", split_rate=0.9, seed=1))
    assert sorted(train + val) == starts(windows) == [100 * w for w in range(199)]
    assert val == [100 * w for w in range(199) if unit(1, "tokens.npy", w) >= 0.9]


def test_a_bare_part_name_other_than_train_says_to_pass_split_rate(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(10)))
    ds = hr.open(str(path))
    assert [r["id"] for r in ds.split("train")] == list(range(10))  # the whole split, as HF's "train"
    for name in ("validation", "test"):
        with pytest.raises(ValueError, match=f"split\\('{name}'\\): the files you opened are one split, all of it "
                                             f"'train'; for a '{name}' part pass split_rate="):  # fmt: skip
            ds.split(name)
    assert len(list(ds.split("validation", split_rate=0.5))) + len(list(ds.split("train", split_rate=0.5))) == 10
