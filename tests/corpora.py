"""Real text from the repository's ``corpora/`` (unpacked on first use) turned into dataset shards, for tests,
the demo and benchmarks.

Every record is a paragraph of a real document with a global ``id`` (its position in the corpus),
the document it came from, and the text. Shards hold consecutive ids, so tests can check exact order.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "corpora"))
from unpacked import corpora_dir  # noqa: E402 - corpora/unpacked.py: the archive in the checkout, unpacked once

CORPORA = corpora_dir()


def documents(limit: int | None = None) -> list[tuple[str, str]]:
    """``(name, text)`` of the real documents, Shakespeare first then the Python docs, sorted by path."""
    files = sorted((CORPORA / "shakespeare").glob("*.txt")) + sorted((CORPORA / "python-docs").rglob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no corpora under {CORPORA}; see corpora/README.md")
    out = []
    for path in files[:limit]:
        out.append((str(path.relative_to(CORPORA)), path.read_text(encoding="utf-8", errors="replace")))
    return out


def paragraphs(limit_docs: int | None = None, max_rows: int | None = None) -> pa.Table:
    """One row per non-empty paragraph: ``id`` (int64), ``doc`` (string), ``text`` (string)."""
    ids: list[int] = []
    docs: list[str] = []
    texts: list[str] = []
    for name, text in documents(limit_docs):
        for para in text.replace("\r\n", "\n").split("\n\n"):
            para = para.strip()
            if para:
                ids.append(len(ids))
                docs.append(name)
                texts.append(para)
                if max_rows is not None and len(ids) >= max_rows:
                    return pa.table({"id": pa.array(ids, pa.int64()), "doc": docs, "text": texts})
    return pa.table({"id": pa.array(ids, pa.int64()), "doc": docs, "text": texts})


def split(table: pa.Table, shards: int) -> list[pa.Table]:
    n = table.num_rows
    bounds = [n * i // shards for i in range(shards + 1)]
    return [table.slice(bounds[i], bounds[i + 1] - bounds[i]) for i in range(shards)]


def write_parquet(table: pa.Table, folder: Path, shards: int, row_group_size: int = 1000) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(split(table, shards)):
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(part, path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def write_jsonl(table: pa.Table, folder: Path, shards: int, compression: str | None = "zstd") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = {None: "", "zstd": ".zst", "gzip": ".gz", "bz2": ".bz2"}[compression]
    paths = []
    for i, part in enumerate(split(table, shards)):
        path = folder / f"part-{i:05d}.jsonl{suffix}"
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in part.to_pylist()).encode()
        if compression is None:
            path.write_bytes(data)
        else:
            with pa.CompressedOutputStream(str(path), compression) as out:
                out.write(data)
        paths.append(path)
    return paths


def write_csv(table: pa.Table, folder: Path, shards: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(split(table, shards)):
        path = folder / f"part-{i:05d}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(part.column_names)
            for row in part.to_pylist():
                writer.writerow([row[c] for c in part.column_names])
        paths.append(path)
    return paths
