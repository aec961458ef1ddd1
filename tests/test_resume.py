"""Exact resume for every stage, on the real corpora: restore at every step, in-process and in a fresh process."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from headrace.core import state as states
from headrace.formats.parquet import ParquetFormat
from headrace.testing import check_resume, same

Pipeline = Callable[[hr.Dataset], hr.Dataset]


def words(row: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(row["text"].split())}


def explode(batch: dict[str, Any]) -> dict[str, Any]:
    """A batched map that changes the row count: one row per id, plus one more per even id."""
    ids = [int(i) for i in batch["id"] for _ in range(1 + (int(i) % 2 == 0))]
    return {"id": np.asarray(ids, dtype=np.int64)}


PIPELINES: dict[str, Pipeline] = {
    "source": lambda ds: ds.batch(97),
    "shuffle": lambda ds: ds.shuffle(seed=5, buffer_size=700).batch(64),
    "map": lambda ds: ds.map(words).batch(128, drop_last=True),
    "map-batched-rowcount": lambda ds: ds.map(explode, batched=True).batch(100),
    "filter": lambda ds: ds.filter(lambda r: r["id"] % 3 != 1).batch(50),
    "take-skip": lambda ds: ds.skip(321).take(2000).batch(64),
    "repeat": lambda ds: ds.shuffle(seed=1, buffer_size=300).take(900).repeat(3).batch(128),
    "everything": lambda ds: (
        ds.shuffle(seed=9, buffer_size=1000).map(words).filter(lambda r: r["words"] > 3).skip(10).batch(77)
    ),
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_stage_resumes_exactly_on_parquet(name: str, parquet_dir: Path) -> None:
    ds = PIPELINES[name](hr.open(str(parquet_dir / "*.parquet"), block_rows=128))
    report = check_resume(ds, every=3)
    assert report.steps > 10 and report.max_state_bytes < 2048


@pytest.mark.parametrize("name", ["shuffle", "everything", "repeat"])
def test_every_stage_resumes_exactly_on_compressed_jsonl_with_workers(name: str, jsonl_dir: Path) -> None:
    ds = PIPELINES[name](hr.open(str(jsonl_dir), chunk_bytes=64 << 10, block_rows=100))
    check_resume(ds, every=4, num_workers=2, prefetch=3)


def test_unbatched_loader_resumes_at_every_row(csv_dir: Path, corpus: pa.Table) -> None:
    ds = hr.open(str(csv_dir / "*.csv"), block_rows=16).take(200)
    report = check_resume(ds, every=7)
    assert report.steps == 200
    assert [r["id"] for r in ds] == corpus.column("id").to_pylist()[:200]


def test_state_stays_kilobytes_with_a_10000_row_buffer(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).shuffle(seed=0, buffer_size=10_000).batch(256)
    loader = hr.Loader(ds, num_workers=2, prefetch=8)
    sizes = []
    for _ in loader:
        sizes.append(len(json.dumps(loader.state_dict())))
    assert sizes and max(sizes) < 2048


def test_resume_in_a_fresh_process_from_json(tmp_path: Path, parquet_dir: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        "import json, sys, headrace as hr\n"
        f"ds = hr.open({str(parquet_dir)!r}).shuffle(seed=3, buffer_size=2000)"
        ".filter(lambda r: r['id'] % 7 != 0).batch(100)\n"
        "loader = hr.Loader(ds, num_workers=2, prefetch=4)\n"
        "if len(sys.argv) > 1:\n"
        "    loader.load_state_dict(json.load(open(sys.argv[1])))\n"
        "out = []\n"
        "for step, b in enumerate(loader):\n"
        "    out.append(b['id'].tolist())\n"
        "    if len(sys.argv) == 1 and step == 20:\n"
        f"        json.dump(loader.state_dict(), open({str(tmp_path / 'state.json')!r}, 'w'))\n"
        "print(json.dumps(out))\n"
    )
    full = json.loads(subprocess.run([sys.executable, str(script)], check=True, capture_output=True).stdout)
    rest = subprocess.run([sys.executable, str(script), str(tmp_path / "state.json")], check=True, capture_output=True)
    assert json.loads(rest.stdout) == full[21:]
    assert len(full) > 30


@pytest.fixture(scope="module")
def ten_million(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ten_million")
    for part in range(4):
        ids = np.arange(part * 2_500_000, (part + 1) * 2_500_000, dtype=np.int64)
        pq.write_table(pa.table({"id": ids}), folder / f"part-{part}.parquet", row_group_size=10_000)
    return folder


def test_restore_at_half_of_ten_million_rows_reads_about_one_batch(
    ten_million: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = hr.open(str(ten_million), block_rows=4096).batch(4096)
    loader = hr.Loader(ds)
    for step, _ in enumerate(loader):
        if step + 1 == 1221:  # 1221 * 4096 = 5,001,216 rows: half-way, in the middle of a row group
            break
    state = json.loads(json.dumps(loader.state_dict()))

    read = []
    original = ParquetFormat.pieces

    def counting(self: ParquetFormat, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for piece in original(self, *args, **kwargs):
            read.append(piece.batch.num_rows)
            yield piece

    monkeypatch.setattr(ParquetFormat, "pieces", counting)
    resumed = hr.Loader(ds)
    resumed.load_state_dict(state)
    first = next(iter(resumed))
    assert first["id"].tolist() == list(range(1221 * 4096, 1222 * 4096))
    assert sum(read) <= 20_000  # one or two 10,000-row groups, not the 5,000,000-row prefix


def test_same_seed_same_order_and_other_seed_or_epoch_other_order(parquet_dir: Path) -> None:
    def ids(seed: int, epoch: int) -> list[int]:
        loader = hr.Loader(hr.open(str(parquet_dir)).shuffle(seed=seed, buffer_size=500).batch(1000), num_workers=1)
        loader.set_epoch(epoch)
        return [i for b in loader for i in b["id"].tolist()]

    base = ids(1, 0)
    assert base == ids(1, 0)
    assert sorted(base) == list(range(5000))
    assert base != ids(2, 0) and sorted(ids(2, 0)) == sorted(base)
    assert base != ids(1, 1) and sorted(ids(1, 1)) == sorted(base)


def test_loader_epochs_advance_and_break_continues(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).shuffle(seed=4, buffer_size=800).batch(500)
    loader = hr.Loader(ds, num_workers=2, prefetch=8)
    epoch0 = list(loader)
    epoch1 = list(loader)
    assert loader.epoch == 2 and len(epoch0) == len(epoch1) == 10
    assert not same(epoch0[0], epoch1[0])
    again = hr.Loader(ds, num_workers=0, prefetch=0)
    head = []
    for b in again:
        head.append(b)
        if len(head) == 3:
            break
    tail = list(again)  # the loader is a cursor: iterating again continues after the last delivered batch
    assert all(same(a, b) for a, b in zip(head + tail, epoch0, strict=True))


@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_prefetch_eight_resumes_at_random_steps(workers: int, jsonl_dir: Path) -> None:
    ds = hr.open(str(jsonl_dir), block_rows=64).shuffle(seed=11, buffer_size=333).batch(32)
    full = list(hr.Loader(ds))
    for step in np.random.default_rng(workers).choice(len(full), size=3, replace=False):
        loader = hr.Loader(ds, num_workers=workers, prefetch=8)
        for i, _ in enumerate(loader):
            if i == step:
                break
        state = json.loads(json.dumps(loader.state_dict()))
        resumed = hr.Loader(ds, num_workers=workers, prefetch=8)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(full) - step - 1
        assert all(same(a, b) for a, b in zip(rest, full[step + 1 :], strict=True))


# -- tampered and malformed states (issue 14, items 8 and 9) ---------------------------------------


def _rows_file(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": "x" * (i % 7)}) + "\n" for i in range(300)))
    return path


def _tampered_dataset(path: Path) -> hr.Dataset:
    return hr.open(str(path), chunk_bytes=1024, block_rows=64).map(words).batch(10)


def _saved_and_rest(ds: hr.Dataset, steps: int, num_workers: int = 0) -> tuple[dict[str, Any], list[Any]]:
    loader = hr.Loader(ds, num_workers=num_workers)
    it = iter(loader)
    for _ in range(steps):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    return state, list(it)


def _edit(state: dict[str, Any], dotted: str, value: Any, *, sign: bool = True) -> dict[str, Any]:
    """A copy of ``state`` with the field at ``dotted`` set to ``value`` (``...`` deletes it), signed again."""
    from headrace.core.state import digest

    out = json.loads(json.dumps(state))
    *parents, key = dotted.split(".")
    at = out
    for p in parents:
        at = at[p]
    if value is ...:
        del at[key]
    else:
        at[key] = value
    if sign:
        out["digest"] = digest(out)
    return out


SOURCE = "node.cursor.upstream.upstream"  # the source's state in open(...).map(...).batch(...)


def test_an_edited_state_is_refused_by_its_checksum(tmp_path: Path) -> None:
    ds = _tampered_dataset(_rows_file(tmp_path))
    state, _ = _saved_and_rest(ds, 13)
    assert state[SOURCE.split(".")[0]]["cursor"]["upstream"]["upstream"]["at"] == 119
    for dotted, value in [("node.cursor.offset", 2), (f"{SOURCE}.at", 118), ("batches", 12)]:
        with pytest.raises(hr.StateError, match="checksum does not match: it was edited or truncated"):
            hr.Loader(ds).load_state_dict(_edit(state, dotted, value, sign=False))


def test_a_truncated_state_is_refused_by_its_checksum(tmp_path: Path) -> None:
    ds = _tampered_dataset(_rows_file(tmp_path))
    state, _ = _saved_and_rest(ds, 13)
    text = json.dumps(state)
    cut = json.loads(text[: text.index('"offset"')].rstrip(", ") + "}}}")  # written only up to the offset
    assert "offset" not in cut["node"]["cursor"]
    with pytest.raises(hr.StateError, match="checksum does not match"):
        hr.Loader(ds).load_state_dict(cut)


def test_a_state_saved_before_checksums_is_still_resumed_exactly(tmp_path: Path) -> None:
    ds = _tampered_dataset(_rows_file(tmp_path))
    state, rest = _saved_and_rest(ds, 13)
    del state["digest"]
    loader = hr.Loader(ds)
    loader.load_state_dict(state)
    got = list(loader)
    assert [b["id"].tolist() for b in got] == [b["id"].tolist() for b in rest] and got[0]["id"][0] == 130


TAMPERED = [  # the edits of issue 14 (each silently repeated or lost rows), signed again: the fields catch them
    ("node.cursor", None, r"state field node\.cursor: must be an object \(a JSON dict\), got null"),
    (f"{SOURCE}.byte", 10**12, r"upstream\.byte: 1000000000000 is past the end of shard \S*rows\.jsonl \(\d+ bytes\)"),
    (f"{SOURCE}.byte", 2065, r"upstream\.byte: 2065 is not at the start of a line of shard \S*rows\.jsonl"),
    (f"{SOURCE}.at", -100, r"upstream\.at: must be an int >= 0, got int -100"),
    (f"{SOURCE}.at", 100_000, r"upstream\.at: 100000 is past the end of shard \S*rows\.jsonl \(300 records\)"),
    (f"{SOURCE}.slot", 5000, r"upstream\.slot: must be an int in \[0, 119\], got int 5000"),
    (f"{SOURCE}.shard", 3, r"upstream\.shard: must be an int in \[-1, 0\], got int 3"),
    ("node.cursor.offset", -3, r"node\.cursor\.offset: must be an int >= 0, got int -3"),
    ("node.cursor.offset", 10**6, r"node\.cursor\.offset: 1000000 rows past its upstream position, but the stream"),
    ("batches", -1, r"state field batches: must be an int >= 0, got int -1"),
]


MALFORMED = [  # were KeyError 'cursor', ValueError int('x'), RuntimeError: generator raised StopIteration
    ("node.cursor.offset", ..., r"state field node\.cursor\.offset: is missing \(the fields are \['upstream'\]\)"),
    ("node.cursor", ..., r"state field started: True does not go with a node state of 0 field\(s\)"),
    ("node.cursor.offset", "x", r"node\.cursor\.offset: must be an int >= 0, got str 'x'"),
    ("node.cursor.offset", 1.5, r"node\.cursor\.offset: must be an int >= 0, got float 1\.5"),
    ("node.cursor.offset", True, r"node\.cursor\.offset: must be an int >= 0, got bool True"),
    (f"{SOURCE}.quarantined", [[1]], r"upstream\.quarantined\[0\]: must be a shard index in \[0, 1\), got \[1\]"),
    ("node.cursor.upstream", [], r"node\.cursor\.upstream: must be an object \(a JSON dict\), got list \[\]"),
    ("epoch", "1", r"state field epoch: must be an int >= 0, got str '1'"),
    ("started", "yes", r"state field started: must be true or false, got str 'yes'"),
    ("started", False, r"state field started: False does not go with a node state of 1 field"),
    ("weights", {"a": 1.0}, r"state field weights: must be null \(this pipeline has no mix\(\) at its root\)"),
    ("elastic", ..., r"state field elastic: is missing"),
]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize(
    ("dotted", "value", "match"), TAMPERED + MALFORMED, ids=[f"{d}={v}" for d, v, _ in TAMPERED + MALFORMED]
)
def test_tampered_or_malformed_states_are_refused_naming_the_field(
    tmp_path: Path, dotted: str, value: Any, match: str, num_workers: int
) -> None:
    ds = _tampered_dataset(_rows_file(tmp_path))
    state, _ = _saved_and_rest(ds, 13)
    loader = hr.Loader(ds, num_workers=num_workers)
    with pytest.raises(hr.StateError, match=match):
        loader.load_state_dict(_edit(state, dotted, value))
        list(loader)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"pipeline": "x"}, r"state field pipeline: must be a list, got str|pipeline had 0 stages/items, now 3"),
        ({"world": [1]}, r"state field world: must be an object, got list"),
        ({"node": {1: 2, "a": 3}}, r"not a loader state as Loader.state_dict\(\) writes it"),
    ],
)
@pytest.mark.parametrize("elastic", [False, True])
def test_a_malformed_top_level_state_is_a_state_error(
    tmp_path: Path, edit: dict[str, Any], match: str, elastic: bool
) -> None:
    ds = _tampered_dataset(_rows_file(tmp_path))
    state, _ = _saved_and_rest(ds, 13)
    state = {**state, **edit}
    if elastic:  # another world: the elastic path reads the same fields
        state["world"] = {**state["world"], "world_size": 2} if isinstance(state["world"], dict) else state["world"]
    with contextlib.suppress(TypeError):  # signed again: the checks behind the checksum are what is tested
        state["digest"] = states.digest(state)
    with pytest.raises(hr.StateError, match=match):
        hr.Loader(ds).load_state_dict(state)


def test_an_elastic_state_whose_pipeline_holds_no_stages_is_a_state_error(tmp_path: Path) -> None:
    ds = _tampered_dataset(_rows_file(tmp_path))
    state, _ = _saved_and_rest(ds, 13)
    state = {**state, "pipeline": [1] * len(state["pipeline"]), "world": {**state["world"], "world_size": 2}}
    state["digest"] = states.digest(state)
    with pytest.raises(hr.StateError, match=r"state was saved from a different pipeline or world: pipeline\[0\]"):
        hr.Loader(ds).load_state_dict(state)  # was AttributeError: 'int' object has no attribute 'get'
