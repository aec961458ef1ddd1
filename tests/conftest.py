"""Fixtures: the real corpora converted into Parquet, JSONL.zst and CSV shards (once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpora import paragraphs, write_csv, write_jsonl, write_parquet


@pytest.fixture(scope="session")
def corpus() -> pa.Table:
    """About 5,000 real paragraphs (Shakespeare and the Python docs) with ids 0..n-1."""
    return paragraphs(max_rows=5000)


@pytest.fixture(scope="session")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> Path:
    folder = tmp_path_factory.mktemp("parquet")
    write_parquet(corpus, folder, shards=7, row_group_size=250)
    return folder


@pytest.fixture(scope="session")
def jsonl_dir(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> Path:
    folder = tmp_path_factory.mktemp("jsonl")
    write_jsonl(corpus, folder, shards=5, compression="zstd")
    return folder


@pytest.fixture(scope="session")
def csv_dir(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> Path:
    folder = tmp_path_factory.mktemp("csv")
    write_csv(corpus, folder, shards=3)
    return folder
