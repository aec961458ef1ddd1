"""``headrace inspect``, run as users run it: ``python -m headrace`` in a subprocess, on the real-corpus shards."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from corpora import CORPORA, split
from headrace.cli import SHOWN_SHARDS, build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [sys.executable, "-m", "headrace", "inspect", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
    )


def inspect_json(*args: str) -> dict[str, Any]:
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # the whole of stdout is one JSON document


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def jsonl_lines(path: Path) -> int:
    with pa.CompressedInputStream(pa.OSFile(str(path)), "zstd") as stream:
        return sum(1 for line in stream.read().split(b"\n") if line.strip())


def csv_records(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1  # minus the header


CORPUS_SCHEMA = [
    {"name": "id", "type": "int64", "nullable": True},
    {"name": "doc", "type": "string", "nullable": True},
    {"name": "text", "type": "string", "nullable": True},
]


def test_inspect_parquet_reports_shards_rows_bytes_schema_and_sample(parquet_dir: Path, corpus: pa.Table) -> None:
    report = inspect_json(str(parquet_dir))

    paths = files(parquet_dir)
    rows = [pq.read_metadata(p).num_rows for p in paths]
    assert rows == [part.num_rows for part in split(corpus, 7)]
    assert report["shards"] == [
        {
            "path": str(p),
            "format": "parquet",
            "compression": None,
            "bytes": p.stat().st_size,
            "rows": n,
            "indexed": True,
        }
        for p, n in zip(paths, rows, strict=True)
    ]
    assert report["totals"] == {
        "shards": 7,
        "bytes": sum(p.stat().st_size for p in paths),
        "rows": corpus.num_rows,
        "indexed": True,
        "formats": ["parquet"],
    }
    assert report["schema"] == CORPUS_SCHEMA
    assert report["sample"] == corpus.slice(0, 5).to_pylist()
    assert [row["id"] for row in report["sample"]] == [0, 1, 2, 3, 4]


def test_inspect_jsonl_rows_are_unknown_without_count(jsonl_dir: Path, corpus: pa.Table) -> None:
    report = inspect_json(str(jsonl_dir / "*.jsonl.zst"), "-n", "3")

    paths = files(jsonl_dir)
    assert [s["path"] for s in report["shards"]] == [str(p) for p in paths]
    assert [s["rows"] for s in report["shards"]] == [None] * 5
    assert {(s["format"], s["compression"], s["indexed"]) for s in report["shards"]} == {("jsonl", "zstd", False)}
    assert [s["bytes"] for s in report["shards"]] == [p.stat().st_size for p in paths]
    assert report["totals"]["rows"] is None
    assert report["totals"]["indexed"] is False
    assert report["schema"] == CORPUS_SCHEMA
    assert report["sample"] == corpus.slice(0, 3).to_pylist()


def test_inspect_jsonl_count_reads_exact_rows(jsonl_dir: Path, corpus: pa.Table) -> None:
    report = inspect_json(str(jsonl_dir), "--count", "-n", "0")

    expected = [jsonl_lines(p) for p in files(jsonl_dir)]
    assert sum(expected) == corpus.num_rows
    assert [s["rows"] for s in report["shards"]] == expected
    assert report["totals"]["rows"] == corpus.num_rows
    assert report["sample"] == []


def test_inspect_csv_count_matches_records_with_multiline_fields(csv_dir: Path, corpus: pa.Table) -> None:
    report = inspect_json(str(csv_dir), "--count", "-n", "2")

    expected = [csv_records(p) for p in files(csv_dir)]
    assert expected == [part.num_rows for part in split(corpus, 3)]
    assert [s["rows"] for s in report["shards"]] == expected
    assert report["totals"]["rows"] == corpus.num_rows
    assert [f["name"] for f in report["schema"]] == ["id", "doc", "text"]
    assert report["sample"] == corpus.slice(0, 2).to_pylist()


def test_columns_option_projects_schema_and_sample(parquet_dir: Path, corpus: pa.Table) -> None:
    report = inspect_json(str(parquet_dir), "--columns", "text,id", "-n", "4")

    assert report["schema"] == [CORPUS_SCHEMA[2], CORPUS_SCHEMA[0]]
    assert report["sample"] == corpus.select(["text", "id"]).slice(0, 4).to_pylist()
    assert all(list(row) == ["text", "id"] for row in report["sample"])
    assert report["totals"]["rows"] == corpus.num_rows


def test_text_mode_file_gives_one_row_per_file(tmp_path: Path) -> None:
    sources = [sorted((CORPORA / "shakespeare").glob("*.txt"))[0], sorted((CORPORA / "python-docs").rglob("*.txt"))[0]]
    for i, src in enumerate(sources):
        shutil.copyfile(src, tmp_path / f"doc{i}.txt")
    report = inspect_json(str(tmp_path), "--text-mode", "file", "--count")

    assert [s["rows"] for s in report["shards"]] == [1, 1]
    assert report["schema"] == [{"name": "text", "type": "string", "nullable": True}]
    assert [row["text"] for row in report["sample"]] == [p.read_text(encoding="utf-8") for p in sources]


def test_rich_output_names_files_columns_and_sample_text(parquet_dir: Path, corpus: pa.Table) -> None:
    proc = run_cli(str(parquet_dir), "-n", "2")

    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"7 shards in {parquet_dir}" in out
    for p in files(parquet_dir):
        assert p.name in out
    for name in ("id", "doc", "text", "int64", "string"):
        assert name in out
    assert f"{corpus.num_rows:,}" in out  # total rows
    assert f"{sum(p.stat().st_size for p in files(parquet_dir)):,}" in out  # total bytes
    assert corpus["text"][0].as_py()[:20] in out
    assert proc.stderr == ""


def test_rich_output_shows_unknown_rows_as_question_marks(jsonl_dir: Path) -> None:
    proc = run_cli(str(jsonl_dir), "-n", "0")

    assert proc.returncode == 0, proc.stderr
    assert "part-00004.jsonl.zst" in proc.stdout
    assert "?" in proc.stdout
    assert "--count" in proc.stdout  # says how to get the counts


def test_rich_output_truncates_long_values(tmp_path: Path) -> None:
    path = tmp_path / "long.parquet"
    pq.write_table(pa.table({"text": ["word " * 100 + "END"]}), path)

    proc = run_cli(str(path), "-n", "1")

    assert proc.returncode == 0, proc.stderr
    assert "word word" in proc.stdout
    assert "END" not in proc.stdout
    assert "…" in proc.stdout


def write_truncated(tmp_path: Path, corpus: pa.Table) -> Path:
    path = tmp_path / "cut.parquet"
    pq.write_table(corpus.slice(0, 500), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case", ["missing path", "empty glob", "unknown column", "truncated parquet"])
def test_errors_are_one_line_exit_2_and_name_the_path(
    case: str, tmp_path: Path, parquet_dir: Path, corpus: pa.Table
) -> None:
    if case == "missing path":
        args, named = [str(tmp_path / "nope.parquet")], str(tmp_path / "nope.parquet")
    elif case == "empty glob":
        args, named = [str(tmp_path / "*.parquet")], str(tmp_path / "*.parquet")
    elif case == "unknown column":
        args, named = [str(parquet_dir), "--columns", "id,nosuch"], "nosuch"
    else:
        cut = write_truncated(tmp_path, corpus)
        args, named = [str(cut)], str(cut)

    proc = run_cli(*args, "--json")

    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("headrace: error: ")
    assert proc.stderr.count("\n") == 1
    assert named in proc.stderr


def test_truncated_later_shard_fails_while_counting(tmp_path: Path, parquet_dir: Path, corpus: pa.Table) -> None:
    good = files(parquet_dir)[0]
    cut = write_truncated(tmp_path, corpus)

    proc = run_cli(str(good), str(cut), "-n", "0")  # open() reads only the first shard's schema

    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"headrace: error: {cut}")


def test_in_process_many_shards_rich_lists_first_and_json_lists_all(
    tmp_path: Path, corpus: pa.Table, capsys: pytest.CaptureFixture[str]
) -> None:
    n = SHOWN_SHARDS + 13
    parts = split(corpus.slice(0, 330), n)
    for i, part in enumerate(parts):
        pq.write_table(part, tmp_path / f"s{i:03d}.parquet")

    assert main(["inspect", str(tmp_path), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert f"s{SHOWN_SHARDS - 1:03d}.parquet" in out
    assert f"s{SHOWN_SHARDS:03d}.parquet" not in out
    assert "... 13 more" in out

    assert main(["inspect", str(tmp_path), "-n", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["rows"] for s in report["shards"]] == [p.num_rows for p in parts]
    assert report["totals"]["shards"] == n
    assert report["totals"]["rows"] == 330
    assert report["sample"] == corpus.slice(0, 1).to_pylist()


def test_in_process_usage_errors_and_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"headrace {hr.__version__}"

    assert main(["inspect", str(tmp_path), "-n", "-1"]) == 2  # argparse rejects it
    assert "-n/--rows" in capsys.readouterr().err

    assert main(["inspect", str(tmp_path), "--format", "nosuch"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"headrace: error: {tmp_path}: unknown format 'nosuch'")
    assert captured.out == ""

    assert main(["inspect", str(tmp_path), "--columns", " , "]) == 2
    assert capsys.readouterr().err.startswith("headrace: error: --columns")


def test_help_shows_the_default_of_every_option_that_has_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--seq-len SEQ_LEN tokens per training sequence (default: 128)" in out
    assert "--checkpoint-every N save OUT/checkpoint.pt every N steps and at the end (default: 100)" in out
    assert "(default: None)" not in out and "(default: False)" not in out and "(default: [])" not in out
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(commands) == ["bench", "inspect", "prepare", "train"]
    for name, command in commands.items():
        formatter = command._get_formatter()
        for action in command._actions:
            if action.default not in (None, False, [], argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action), (name, action.option_strings)  # type: ignore[attr-defined]
    assert main(["inspect", "--help"]) == 0
    assert "-n N, --rows N sample rows to show (0: none) (default: 5)" in " ".join(capsys.readouterr().out.split())
