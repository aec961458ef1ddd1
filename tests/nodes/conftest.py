"""Small JSON Lines and Parquet shards with fixed names and contents, written into the test's folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SHARD_ROWS = (10, 7, 7)  # ids 0..9, 10..16, 17..23


def rows(first: int, count: int) -> list[dict[str, object]]:
    """Rows ``first..first+count-1``: ``id``, a short ``text`` and a ragged list ``ids`` of ``id % 4 + 1`` values."""
    return [{"id": i, "text": f"row {i} " + "x" * (i % 5), "ids": list(range(i, i + i % 4 + 1))}
            for i in range(first, first + count)]  # fmt: skip


def shards(folder: Path, write: Callable[[list[dict[str, object]], Path], object], suffix: str) -> Path:
    """``folder`` with the 24 rows as three shards ``part-0`` .. ``part-2`` of ``SHARD_ROWS`` rows, by ``write``."""
    folder.mkdir()
    first = 0
    for k, n in enumerate(SHARD_ROWS):
        write(rows(first, n), folder / f"part-{k}{suffix}")
        first += n
    return folder


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    """Three JSON Lines shards, ``part-0.jsonl`` .. ``part-2.jsonl``, of 10, 7 and 7 rows (ids 0..23 in order)."""
    return shards(tmp_path / "jsonl", lambda r, p: p.write_text("".join(json.dumps(x) + "\n" for x in r)), ".jsonl")


@pytest.fixture
def parquet(tmp_path: Path) -> Path:
    """The same 24 rows as three Parquet shards, in row groups of 3 rows."""
    return shards(tmp_path / "parquet",
                  lambda r, p: pq.write_table(pa.Table.from_pylist(r), p, row_group_size=3), ".parquet")  # fmt: skip
