"""from_hf: an HF streaming dataset under headrace's loader, resumed exactly through HF's own state."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
datasets = pytest.importorskip("datasets")
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0

import headrace as hr  # noqa: E402
from headrace.testing import check_resume  # noqa: E402


def streaming(parquet_dir: Path, tmp_path: Path) -> object:
    files = sorted(str(p) for p in parquet_dir.glob("*.parquet"))
    return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True,
                                 cache_dir=str(tmp_path / "hf"))  # fmt: skip


def test_rows_equal_hf_own_iteration(parquet_dir: Path, tmp_path: Path, corpus: pa.Table) -> None:
    hf = streaming(parquet_dir, tmp_path).map(lambda r: {"n": len(r["text"])})  # type: ignore[attr-defined]
    ds = hr.from_hf(hf, block_rows=300)
    rows = [r for b in hr.Loader(ds.batch(500)) for r in b["id"].tolist()]
    assert rows == corpus.column("id").to_pylist()
    lengths = [n for b in hr.Loader(ds.batch(500)) for n in b["n"].tolist()]
    assert lengths == [len(t) for t in corpus.column("text").to_pylist()]


def test_resume_is_exact_through_hf_state(parquet_dir: Path, tmp_path: Path) -> None:
    ds = hr.from_hf(streaming(parquet_dir, tmp_path), block_rows=128).map(lambda r: {"k": r["id"] % 7})
    report = check_resume(ds.batch(96), every=6)
    assert report.steps == 53


def test_headrace_stages_and_ranks_on_top(parquet_dir: Path, tmp_path: Path) -> None:
    ds = hr.from_hf(streaming(parquet_dir, tmp_path)).shuffle(seed=1, buffer_size=700).batch(100)
    ids = sorted(i for rank in range(2) for b in hr.Loader(ds, rank=rank, world_size=2) for i in b["id"].tolist())
    assert ids == list(range(5000))  # 7 shards split over 2 ranks by HF: every row exactly once


def test_not_an_iterable_dataset_is_refused() -> None:
    with pytest.raises(TypeError, match=r"datasets\.IterableDataset"):
        hr.from_hf([1, 2, 3])


HUB_JOB = """
import headrace as hr
from headrace.io.resolve import fs_for
fs, path = fs_for("hf://datasets/stanfordnlp/imdb/plain_text/train-00000-of-00001.parquet")
print(type(fs).__name__, type(fs.fs).__name__, path)
try:
    hr.open("hf://datasets/stanfordnlp/imdb/plain_text/*.parquet")
except hr.SourceError as e:
    print("error:", e)
"""


def test_hf_urls_go_through_the_hub_filesystem_and_fail_clearly_offline() -> None:
    """``hf://`` is huggingface_hub's ``HfFileSystem`` behind our retrying wrapper. The Hub itself is out of
    reach in tests (no internet), so this checks the wiring and the offline error: one clear message
    naming the URL, no retry loop (offline stays offline)."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", HUB_JOB], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0] == "RemoteFS HfFileSystem datasets/stanfordnlp/imdb/plain_text/train-00000-of-00001.parquet"
    assert lines[1].startswith("error: hf://datasets/stanfordnlp/imdb/plain_text/*.parquet: cannot list or open ")
    assert "offline mode is enabled" in lines[1]
    assert "try 2 of" not in run.stderr  # not retried
