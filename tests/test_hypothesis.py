"""Hypothesis generates data and pipelines; the conformance harness checks exact resume for each."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headrace as hr
from headrace.testing import check_resume


def write(folder: Path, fmt: str, sizes: list[int]) -> None:
    start = 0
    for i, n in enumerate(sizes):
        ids = list(range(start, start + n))
        start += n
        if fmt == "parquet":
            pq.write_table(pa.table({"id": pa.array(ids, pa.int64())}), folder / f"{i}.parquet", row_group_size=7)
        else:
            (folder / f"{i}.jsonl").write_text("".join(json.dumps({"id": x}) + "\n" for x in ids))


stage = st.one_of(
    st.tuples(st.just("shuffle"), st.integers(0, 3), st.integers(1, 40)),
    st.tuples(st.just("map"), st.integers(1, 3)),
    st.tuples(st.just("filter"), st.integers(2, 4)),
    st.tuples(st.just("take"), st.integers(0, 80)),
    st.tuples(st.just("skip"), st.integers(0, 30)),
)


def apply(ds: hr.Dataset, spec: tuple[Any, ...]) -> hr.Dataset:
    kind = spec[0]
    if kind == "shuffle":
        return ds.shuffle(seed=spec[1], buffer_size=spec[2])
    if kind == "map":
        k = spec[1]
        return ds.map(lambda b: {"id": b["id"] * 1, "m": b["id"] % k}, batched=True)
    if kind == "filter":
        k = spec[1]
        return ds.filter(lambda r: r["id"] % k != 0)
    if kind == "take":
        return ds.take(spec[1])
    return ds.skip(spec[1])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["parquet", "jsonl"]),
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
    stages=st.lists(stage, max_size=4),
    batch=st.integers(1, 17),
    drop_last=st.booleans(),
    block_rows=st.integers(1, 23),
    world_size=st.integers(1, 3),
    workers=st.integers(0, 2),
    data=st.data(),
)
def test_generated_pipelines_resume_exactly(
    fmt: str, sizes: list[int], stages: list[tuple[Any, ...]], batch: int, drop_last: bool, block_rows: int,
    world_size: int, workers: int, data: st.DataObject,
) -> None:  # fmt: skip
    rank = data.draw(st.integers(0, world_size - 1))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write(folder, fmt, sizes)
        ds = hr.open(str(folder), block_rows=block_rows, chunk_bytes=64)
        for spec in stages:
            ds = apply(ds, spec)
        ds = ds.batch(batch, drop_last=drop_last)
        check_resume(ds, world=hr.World(rank, world_size), num_workers=workers)
