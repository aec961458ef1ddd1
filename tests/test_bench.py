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


def test_bench_names_stages_by_their_kind_and_each_map_apart(tmp_path: Path) -> None:
    """pack is run by the window machinery but is called pack; two maps of the same name are numbered."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(f'{{"id": {i}}}\n' for i in range(16)))
    (tmp_path / "hr_bench_a.py").write_text("def ids(row):\n    return {'input_ids': [row['id']] * 3}\n")
    (tmp_path / "hr_bench_b.py").write_text(
        "def ids(row):\n    return {'input_ids': [t + 1 for t in row['input_ids']]}\n"
    )
    (tmp_path / "hr_bench_c.py").write_text("def more(row):\n    return {'input_ids': row['input_ids'] + [0]}\n")
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"source: {{path: {data}}}\nsteps:\n  - map: {{fn: 'hr_bench_a:ids'}}\n"
                      "  - map: {fn: 'hr_bench_b:ids'}\n  - map: {fn: 'hr_bench_c:more'}\n  - pack: {seq_len: 4}\n"
                      "  - batch: {size: 2}\n")  # fmt: skip
    report = bench(str(config), "--batches", "2")
    assert [s["stage"] for s in report["stages"]] == ["batch", "pack", "map(more)", "map(ids)#2", "map(ids)#1",
                                                      "source"]  # fmt: skip
    assert report["batches"] == 2 and report["rows"] == 4
