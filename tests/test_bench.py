"""headrace bench: real numbers from a real run, and shuffle quality that tells the orders apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from headrace.cli import main


def bench(*args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "headrace", "bench", *args, "--json"], check=True,
                         capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_bench_reports_throughput_and_quality(parquet_dir: Path) -> None:
    none = bench(str(parquet_dir), "--batches", "10", "--batch-size", "100", "--quality", "id,doc")
    assert none["batches"] == 10 and none["rows"] == 1000
    assert none["rows_per_s"] > 0 and 0 < none["first_batch_s"] < none["seconds"]  # type: ignore[operator]
    assert none["peak_rss_bytes"] > 10 << 20  # type: ignore[operator]
    assert none["quality"]["rank_correlation"] == pytest.approx(1.0)  # type: ignore[index]
    best = bench(str(parquet_dir), "--shuffle", "global", "--window", "32", "--batches", "50", "--batch-size", "100",
                 "--quality", "id,doc")  # fmt: skip
    q = best["quality"]
    assert abs(q["rank_correlation"]) < 0.1  # type: ignore[index]
    assert q["batch_mix_distance"] < none["quality"]["batch_mix_distance"]  # type: ignore[index]
    assert best["pipeline"][0]["ordering"] == "global"  # type: ignore[index]


def test_bench_errors_are_one_line(parquet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(parquet_dir), "--quality", "id,nope", "--batches", "1"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    assert main(["bench", str(parquet_dir), "--quality", "id"]) == 2
    assert "ID,GROUP" in capsys.readouterr().err
    assert main(["bench", str(parquet_dir), "--batches", "3", "--batch-size", "10"]) == 0
    assert "rows/s" in capsys.readouterr().out
