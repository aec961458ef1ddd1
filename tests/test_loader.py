"""Loader behaviour: errors cross threads with their traceback, shutdown leaves no threads, options validated."""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path

import pytest

import headrace as hr


def headrace_threads() -> list[threading.Thread]:
    """The loader's threads still alive (the process-wide remote I/O pools, idle between reads, aside)."""
    return [t for t in threading.enumerate() if t.name.startswith("headrace") and not t.name.startswith("headrace-io")]


def wait_no_threads() -> None:
    deadline = time.monotonic() + 10
    while headrace_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert headrace_threads() == []


def boom(row: dict[str, object]) -> dict[str, object]:
    if row["id"] == 1234:
        raise ValueError("bad row 1234")
    return {}


@pytest.mark.parametrize("workers", [0, 2])
def test_user_function_error_is_reraised_with_traceback_and_place(workers: int, parquet_dir: Path) -> None:
    loader = hr.Loader(hr.open(str(parquet_dir)).map(boom).batch(100), num_workers=workers, prefetch=4)
    with pytest.raises(ValueError, match="bad row 1234") as info:
        list(loader)
    frames = "".join(traceback.format_tb(info.value.__traceback__))
    assert "in boom" in frames  # the original frame, from the worker thread
    assert any("part-00001.parquet" in note for note in getattr(info.value, "__notes__", []))
    wait_no_threads()


def test_break_stops_every_thread(parquet_dir: Path) -> None:
    loader = hr.Loader(hr.open(str(parquet_dir)).map(lambda r: {"n": 1}).batch(10), num_workers=3, prefetch=8)
    for step, _ in enumerate(loader):
        if step == 5:
            break
    wait_no_threads()
    assert json.loads(json.dumps(loader.state_dict()))["batches"] == 6


def test_skip_policy_counts_and_reports_where(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"id": i}) for i in range(100)]
    lines[17] = '{"id": 17'
    lines[60] = "not json"
    path.write_text("\n".join(lines) + "\n")
    loader = hr.Loader(hr.open(str(path), errors="skip", block_rows=10).batch(25), num_workers=2)
    ids = [i for b in loader for i in b["id"].tolist()]
    assert ids == [i for i in range(100) if i not in (17, 60)]
    assert loader.skipped == 2
    assert [w.split(": ")[0] for w in loader.skipped_where] == [f"{path}:18", f"{path}:61"]


def test_loader_rejects_bad_options(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).batch(8)
    with pytest.raises(ValueError, match="remainder"):
        hr.Loader(ds, remainder="wrap")
    with pytest.raises(ValueError, match="num_workers"):
        hr.Loader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="rank"):
        hr.Loader(ds, rank=2, world_size=2)
    with pytest.raises(ValueError, match="last stage"):
        ds.map(lambda r: r)


def test_batch_pads_ragged_columns_and_names_a_row_too_long(tmp_path: Path) -> None:
    path = tmp_path / "ragged.jsonl"
    path.write_text("".join(json.dumps({"ids": list(range(n))}) + "\n" for n in (3, 1, 4, 2)))
    ds = hr.open(str(path))
    assert [b["ids"].tolist() for b in ds.batch(2, pad="longest", pad_value=-1)] == [
        [[0, 1, 2], [0, -1, -1]],
        [[0, 1, 2, 3], [0, 1, -1, -1]],
    ]
    with pytest.raises(hr.SchemaError, match="ragged"):
        list(ds.batch(2))
    with pytest.raises(hr.SchemaError, match=r"ragged\.jsonl \(record 2\) has 4 values, more than pad=3"):
        list(ds.batch(4, pad=3))
