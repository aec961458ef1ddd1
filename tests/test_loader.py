"""Loader behaviour: errors cross threads with their traceback, shutdown leaves no threads, options validated."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import headrace as hr
import headrace.loader as loader_module
import headrace.prefetch as prefetch_module
from headrace.core.node import Node


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


@pytest.mark.parametrize("workers,worker_type", [(0, "thread"), (2, "thread"), (2, "process")])
def test_arrow_batches_hold_the_same_rows_as_numpy_batches_and_resume(
    parquet_dir: Path, workers: int, worker_type: str
) -> None:
    ds = hr.open(str(parquet_dir), columns=["id", "text"]).shuffle(seed=3, buffer_size=700)
    numpy_batches = [(b["id"].tolist(), b["text"].tolist()) for b in hr.Loader(ds.batch(64))]
    arrow = hr.Loader(ds.batch(64, batch_format="arrow"), num_workers=workers, worker_type=worker_type)  # type: ignore[arg-type]
    got = []
    for b in arrow:
        assert isinstance(b, pa.RecordBatch) and b.schema.names == ["id", "text"]
        assert b.schema.field("text").type == pa.string()  # Arrow strings, no conversion to Python objects
        got.append((b.column("id").to_pylist(), b.column("text").to_pylist()))
        if len(got) == 30:
            state = arrow.state_dict()
    assert got == numpy_batches and len(got) == 79  # 5,000 rows: 78 batches of 64 and one of 8
    assert arrow.stats().rows == 5000
    again = hr.Loader(ds.batch(64, batch_format="arrow"))
    again.load_state_dict(state)
    assert [b.column("id").to_pylist() for b in again] == [ids for ids, _ in numpy_batches[30:]]


def test_arrow_batches_keep_ragged_lists_and_make_fixed_size_lists_of_numpy_rows(tmp_path: Path, bpe_path: str) -> None:
    path = tmp_path / "ragged.jsonl"
    path.write_text("".join(json.dumps({"ids": list(range(n))}) + "\n" for n in (3, 1, 4, 2)))
    ragged = list(hr.open(str(path)).batch(3, batch_format="arrow"))
    assert [b.column("ids").to_pylist() for b in ragged] == [[[0, 1, 2], [0], [0, 1, 2, 3]], [[0, 1]]]
    with pytest.raises(ValueError, match="pad applies to numpy batches"):
        hr.open(str(path)).batch(2, pad="longest", batch_format="arrow")
    with pytest.raises(ValueError, match="batch_format must be 'numpy' or 'arrow', got 'torch'"):
        hr.open(str(path)).batch(2, batch_format="torch")  # type: ignore[arg-type]
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"line {i} of a small text file"}) + "\n" for i in range(40)))
    packed = hr.open(str(text)).tokenize(bpe_path).pack(16)
    as_numpy = [b["input_ids"] for b in packed.batch(4)]
    loader = hr.Loader(packed.batch(4, batch_format="arrow"))
    as_arrow = list(loader)
    assert as_arrow[0].schema.field("input_ids").type == pa.list_(pa.int32(), 16)
    assert [b.column("input_ids").to_pylist() for b in as_arrow] == [a.tolist() for a in as_numpy]
    assert loader.stats().tokens == sum(a.size for a in as_numpy)


@pytest.mark.parametrize("workers,worker_type,prefetch", [(0, "thread", 0), (0, "thread", 2), (2, "thread", 2),
                                                          (2, "process", 4)])  # fmt: skip
def test_records_skipped_after_the_last_batch_are_counted(
    tmp_path: Path, workers: int, worker_type: str, prefetch: int
) -> None:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(100)))
    (tmp_path / "b.jsonl").write_text("not json\n")  # a bad last line, read after the last batch
    (tmp_path / "c.jsonl.zst").write_bytes(b"\x00garbage" * 500)  # a garbage last shard: quarantined, one skip
    loader = hr.Loader(hr.open(str(tmp_path), errors="skip").map(lambda r: {"n": 1}).batch(10),
                       num_workers=workers, worker_type=worker_type, prefetch=prefetch)  # fmt: skip
    ids = [i for b in loader for i in b["id"].tolist()]
    assert ids == list(range(100))
    assert loader.skipped == 2 and loader.state_dict()["skipped"] == 2
    assert [w.split(": ")[0] for w in loader.skipped_where] == [f"{tmp_path / 'b.jsonl'}:1", "quarantined shard"]
    assert f"{tmp_path / 'c.jsonl.zst'}: cannot decompress" in loader.skipped_where[1]
    resumed = hr.Loader(loader.dataset, num_workers=workers, worker_type=worker_type, prefetch=prefetch)
    resumed.load_state_dict(loader.state_dict())
    assert resumed.skipped == 2  # the count travels with the state, before any batch


def test_timeout_must_be_a_positive_number_of_seconds(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).batch(8)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout must be a number of seconds > 0 or None"):
            hr.Loader(ds, timeout=bad)
    assert hr.Loader(ds, timeout=30).timeout == 30


def test_timeout_leaves_a_healthy_loader_unchanged(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir), columns=["id"]).shuffle(seed=4, buffer_size=300).batch(64)
    want = [b["id"].tolist() for b in hr.Loader(ds)]
    loader = hr.Loader(ds, prefetch=0, timeout=60)  # a timeout runs the pipeline in a background thread
    assert [b["id"].tolist() for b in loader] == want
    wait_no_threads()


class SlowNode(Node[Any]):
    """A stage whose ``next()`` is slow but legitimate (a big shuffle window, a remote read with retries): it
    returns once ``release`` is set. No user function runs in it."""

    def __init__(self, release: threading.Event) -> None:
        self.release, self.closed = release, threading.Event()

    def reset(self, state: dict[str, Any] | None) -> None:
        pass

    def next(self) -> Any:
        self.release.wait(timeout=60)
        raise StopIteration

    def state_dict(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.closed.set()


def test_a_prefetch_thread_still_in_a_slow_stage_stays_registered_until_it_ends(
    parquet_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(prefetch_module, "GRACE_S", 0.05)
    release = threading.Event()
    node = SlowNode(release)
    loader = hr.Loader(hr.open(str(parquet_dir)).batch(8), timeout=0.2)
    monkeypatch.setattr(loader, "_build", lambda pool: node)
    before = set(prefetch_module._LIVE)
    try:
        with caplog.at_level(logging.WARNING, logger="headrace"), pytest.raises(hr.LoaderTimeout):
            next(iter(loader))
        left = [entry[1] for key, entry in prefetch_module._LIVE.items() if key not in before]
        assert [t.name for t in left] == ["headrace-prefetch"]  # the exit hook still waits for it
        assert "the prefetch thread has not ended yet; it ends in the background" in caplog.text
        assert "inside" not in caplog.text  # no user function was running
    finally:
        release.set()
    left[0].join(timeout=30)
    assert node.closed.is_set()
    assert set(prefetch_module._LIVE) - before == set()


SLOW_STAGE_AT_EXIT = """
import atexit, sys, threading
import headrace as hr
import headrace.prefetch
from headrace.core.node import Node

release = threading.Event()

class Slow(Node):
    def reset(self, state): pass
    def state_dict(self): return {}
    def next(self):
        release.wait()
        raise StopIteration
    def close(self): print("closed", flush=True)

def release_soon():  # registered after headrace's exit hook, so it runs before it
    timer = threading.Timer(0.5, release.set)
    timer.daemon = True
    timer.start()

atexit.register(release_soon)
headrace.prefetch.GRACE_S = 0.05
loader = hr.Loader(hr.open(sys.argv[1]).batch(8), timeout=0.2)
loader._build = lambda pool: Slow()
try:
    next(iter(loader))
except hr.LoaderTimeout as e:
    print(type(e).__name__, flush=True)
"""


def test_exit_waits_for_a_prefetch_thread_still_in_a_slow_stage(parquet_dir: Path) -> None:
    job = subprocess.run([sys.executable, "-c", SLOW_STAGE_AT_EXIT, str(parquet_dir)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert (job.returncode, job.stdout) == (0, "LoaderTimeout\nclosed\n"), job.stderr


@pytest.mark.parametrize("kind,culprit", [("thread", "instrument"), ("process", "instrument"), ("thread", "_Display")])
def test_a_failure_right_after_the_build_closes_the_pipeline_and_stops_the_workers(
    parquet_dir: Path, monkeypatch: pytest.MonkeyPatch, kind: str, culprit: str
) -> None:
    def fail(*_: Any) -> None:
        raise RuntimeError(f"{culprit} failed")

    monkeypatch.setattr(loader_module, culprit, fail)
    loader = hr.Loader(hr.open(str(parquet_dir)).map(lambda r: {}).batch(8), num_workers=2, worker_type=kind,
                       progress=culprit == "_Display")  # fmt: skip
    pools: list[Any] = []
    closed: list[str] = []
    make_pool, build = loader._pool, loader._build

    def pool() -> Any:
        pools.append(make_pool())
        return pools[-1]

    def built(pool: Any) -> Any:
        node = build(pool)
        close = node.close

        def closing() -> None:
            closed.append(type(node).__name__)
            close()

        node.close = closing  # type: ignore[method-assign]
        return node

    monkeypatch.setattr(loader, "_pool", pool)
    monkeypatch.setattr(loader, "_build", built)
    with pytest.raises(RuntimeError, match=f"{culprit} failed"):
        next(iter(loader))
    assert closed == ["BatchNode"]
    if kind == "process":
        assert pools[0].pids() == []
    else:
        for thread in pools[0]._threads:
            thread.join(timeout=10)
        assert pools[0].alive() == []
