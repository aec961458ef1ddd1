"""Small JSON Lines and Parquet shards with fixed names and contents, written into the test's folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SHARD_ROWS = (10, 7, 7)  # ids 0..9, 10..16, 17..23


def rows(first: int, count: int) -> list[dict[str, object]]:
    """Rows ``first..first+count-1``: ``id``, a short ``text`` and a ragged list ``ids`` of ``id % 4 + 1`` values."""
    return [{"id": i, "text": f"row {i} " + "x" * (i % 5), "ids": list(range(i, i + i % 4 + 1))}
            for i in range(first, first + count)]  # fmt: skip


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    """Three JSON Lines shards, ``part-0.jsonl`` .. ``part-2.jsonl``, of 10, 7 and 7 rows (ids 0..23 in order)."""
    folder = tmp_path / "jsonl"
    folder.mkdir()
    first = 0
    for k, n in enumerate(SHARD_ROWS):
        (folder / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(first, n)))
        first += n
    return folder


@pytest.fixture
def parquet(tmp_path: Path) -> Path:
    """The same 24 rows as three Parquet shards, in row groups of 3 rows."""
    folder = tmp_path / "parquet"
    folder.mkdir()
    first = 0
    for k, n in enumerate(SHARD_ROWS):
        pq.write_table(pa.Table.from_pylist(rows(first, n)), folder / f"part-{k}.parquet", row_group_size=3)
        first += n
    return folder
