"""Every local format read back exactly, on real text: rows in order, projection, seek and resume.

The corpus (``conftest.corpus``) is real paragraphs with ``id`` = position; every test compares what
headrace reads with the corpus itself, value for value.
"""

from __future__ import annotations

import csv
import json
import lzma
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import headrace as hr
from corpora import CORPORA, split, write_csv, write_jsonl, write_parquet
from headrace.stages.partition import consumer_range
from headrace.testing import check_resume

pytestmark = pytest.mark.timeout(60)

SHAKESPEARE = CORPORA / "shakespeare"
RESUME_ROWS = 1200  # resume tests use the corpus's first rows: every restore re-reads the rest


def read(ds: hr.Dataset, **loader: Any) -> dict[str, list[Any]]:
    """All columns of ``ds`` (one epoch, through a Loader) as lists."""
    out: dict[str, list[Any]] = {}
    for batch in hr.Loader(ds.batch(1000), **loader):
        for name, values in batch.items():
            out.setdefault(name, []).extend(values.tolist())
    return out


def assert_corpus(got: dict[str, list[Any]], corpus: pa.Table, ids: range | None = None) -> None:
    """``got`` holds exactly the corpus rows ``ids`` (all by default), in order."""
    ids = ids if ids is not None else range(corpus.num_rows)
    assert got["id"] == list(ids)
    want = corpus.column("text").to_pylist()
    assert got["text"] == [want[i] for i in ids]


def write_lines_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_arrow_files(table: pa.Table, folder: Path, shards: int, kind: str) -> list[Path]:
    """``kind``: ``"file"`` (IPC file, ``.arrow``), ``"feather"`` or ``"stream"`` (IPC stream, ``.arrow``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(split(table, shards)):
        path = folder / f"part-{i:05d}.{'feather' if kind == 'feather' else 'arrow'}"
        if kind == "feather":
            feather.write_feather(part, str(path), chunksize=200)
        else:
            opener = pa.ipc.new_file if kind == "file" else pa.ipc.new_stream
            with opener(str(path), part.schema) as writer:
                for batch in part.to_batches(max_chunksize=200):
                    writer.write_batch(batch)
        paths.append(path)
    return paths


def corpus_lines(corpus: pa.Table, rows: int = 400) -> list[str]:
    """The real lines of the first ``rows`` paragraphs (blank lines included)."""
    return [line for text in corpus.column("text").to_pylist()[:rows] for line in text.split("\n")]


# -- Parquet ---------------------------------------------------------------------------------------
def test_parquet_glob_reads_every_row_in_order(parquet_dir: Path, corpus: pa.Table) -> None:
    ds = hr.open(str(parquet_dir / "*.parquet"))
    assert ds.schema.names == ["id", "doc", "text"]
    got = read(ds)
    assert_corpus(got, corpus)
    assert got["doc"] == corpus.column("doc").to_pylist()


def test_parquet_directory_list_and_single_file(parquet_dir: Path, corpus: pa.Table) -> None:
    files = sorted(parquet_dir.glob("*.parquet"))
    assert_corpus(read(hr.open(str(parquet_dir))), corpus)
    assert_corpus(read(hr.open([str(p) for p in files])), corpus)
    one = pq.read_metadata(files[0]).num_rows
    assert_corpus(read(hr.open(str(files[0]))), corpus, range(one))


def test_parquet_list_order_is_kept(parquet_dir: Path, corpus: pa.Table) -> None:
    files = sorted(parquet_dir.glob("*.parquet"))
    sizes = [pq.read_metadata(p).num_rows for p in files]
    got = read(hr.open([str(files[2]), str(files[0])]))
    first2 = sum(sizes[:2])
    assert got["id"] == list(range(first2, first2 + sizes[2])) + list(range(sizes[0]))


def test_parquet_columns_projection_returns_only_those_columns(parquet_dir: Path, corpus: pa.Table) -> None:
    ds = hr.open(str(parquet_dir), columns=["text", "id"])
    assert ds.schema.names == ["text", "id"]
    got = read(ds)
    assert list(got) == ["text", "id"]
    assert_corpus(got, corpus)
    assert [sorted(r) for r in hr.open(str(parquet_dir), columns=["doc"]).take(3)] == [["doc"]] * 3


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_parquet_rank_reads_its_contiguous_range(parquet_dir: Path, corpus: pa.Table, rank: int) -> None:
    ds = hr.open(str(parquet_dir))
    lo, hi = consumer_range(corpus.num_rows, rank, 3, "drop")
    got = read(ds, rank=rank, world_size=3)
    assert_corpus(got, corpus, range(lo, hi))
    batches = [b["id"].tolist() for b in hr.Loader(ds.batch(100), rank=rank, world_size=3)]
    assert [i for b in batches for i in b] == list(range(lo, hi))
    assert all(len(b) == 100 for b in batches[:-1])


def test_parquet_counts_come_from_the_footers(parquet_dir: Path, corpus: pa.Table) -> None:
    ds = hr.open(str(parquet_dir))
    counts = ds.source.counts()
    assert len(counts) == 7
    assert counts == [pq.read_metadata(p).num_rows for p in sorted(parquet_dir.glob("*.parquet"))]
    assert sum(counts) == corpus.num_rows


# -- JSON Lines and JSON ---------------------------------------------------------------------------
@pytest.mark.parametrize("compression", [None, "gzip", "zstd", "bz2"])
def test_jsonl_compressions_read_back_exactly(tmp_path: Path, corpus: pa.Table, compression: str | None) -> None:
    paths = write_jsonl(corpus, tmp_path, shards=3, compression=compression)
    ds = hr.open(str(tmp_path), chunk_bytes=1 << 16)
    assert [s.url for s in ds.source.shards] == [str(p) for p in paths]
    got = read(ds)
    assert_corpus(got, corpus)
    assert got["doc"] == corpus.column("doc").to_pylist()


def test_jsonl_zst_fixture_reads_back_exactly(jsonl_dir: Path, corpus: pa.Table) -> None:
    assert_corpus(read(hr.open(str(jsonl_dir / "*.jsonl.zst"))), corpus)


def test_jsonl_xz_reads_back_exactly(tmp_path: Path, corpus: pa.Table) -> None:
    rows = corpus.slice(0, 1500).to_pylist()
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    (tmp_path / "part.jsonl.xz").write_bytes(lzma.compress(data))
    assert_corpus(read(hr.open(str(tmp_path / "part.jsonl.xz"), chunk_bytes=8192)), corpus, range(1500))


def test_json_array_file(tmp_path: Path, corpus: pa.Table) -> None:
    rows = corpus.slice(0, 700).to_pylist()
    (tmp_path / "rows.json").write_text("\n  " + json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    ds = hr.open(str(tmp_path / "rows.json"))
    assert ds.schema.names == ["id", "doc", "text"]
    assert_corpus(read(ds), corpus, range(700))


def test_json_file_holding_json_lines(tmp_path: Path, corpus: pa.Table) -> None:
    write_lines_jsonl(corpus.slice(0, 700).to_pylist(), tmp_path / "rows.json")
    assert_corpus(read(hr.open(str(tmp_path / "rows.json"), chunk_bytes=4096)), corpus, range(700))


def test_jsonl_blank_lines_are_ignored(tmp_path: Path, corpus: pa.Table) -> None:
    rows = corpus.slice(0, 600).to_pylist()
    text = "\n".join(json.dumps(r) + ("\n\n  \t" if r["id"] % 7 == 0 else "") for r in rows)
    (tmp_path / "gaps.jsonl").write_text("\n\n" + text + "\n\n\n", encoding="utf-8")
    ds = hr.open(str(tmp_path / "gaps.jsonl"), chunk_bytes=2048)
    assert_corpus(read(ds), corpus, range(600))
    assert ds.source.counts() == [600]


def test_jsonl_columns_projection(jsonl_dir: Path, corpus: pa.Table) -> None:
    ds = hr.open(str(jsonl_dir), columns=["id", "text"])
    got = read(ds)
    assert list(got) == ["id", "text"]
    assert_corpus(got, corpus)


def test_jsonl_field_null_at_first_takes_its_type_from_later_lines(tmp_path: Path, corpus: pa.Table) -> None:
    rows = corpus.slice(0, 800).to_pylist()
    for r in rows:
        r["doc"] = r["doc"] if r["id"] >= 500 else None
    write_lines_jsonl(rows, tmp_path / "late.jsonl")
    ds = hr.open(str(tmp_path / "late.jsonl"), chunk_bytes=1 << 16)
    assert ds.schema.field("doc").type == pa.string()
    got = read(ds)
    assert got["doc"] == [r["doc"] for r in rows]
    assert_corpus(got, corpus, range(800))


# -- CSV and TSV -----------------------------------------------------------------------------------
def test_csv_reads_back_exactly(csv_dir: Path, corpus: pa.Table) -> None:
    ds = hr.open(str(csv_dir / "*.csv"))
    got = read(ds)
    assert_corpus(got, corpus)
    assert got["doc"] == corpus.column("doc").to_pylist()


def test_csv_columns_projection(csv_dir: Path, corpus: pa.Table) -> None:
    got = read(hr.open(str(csv_dir), columns=["text", "id"]))
    assert list(got) == ["text", "id"]
    assert_corpus(got, corpus)


def test_tsv_reads_back_exactly(tmp_path: Path, corpus: pa.Table) -> None:
    for i, part in enumerate(split(corpus, 2)):
        with (tmp_path / f"part-{i}.tsv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(part.column_names)
            writer.writerows([r["id"], r["doc"], r["text"]] for r in part.to_pylist())
    ds = hr.open(str(tmp_path))
    assert {s.format for s in ds.source.shards} == {"tsv"}
    assert_corpus(read(ds), corpus)


def test_csv_with_an_odd_suffix_reads_with_format(csv_dir: Path, tmp_path: Path, corpus: pa.Table) -> None:
    first = sorted(csv_dir.glob("*.csv"))[0]
    odd = tmp_path / "export.dat"
    odd.write_bytes(first.read_bytes())
    n = len(split(corpus, 3)[0])
    assert_corpus(read(hr.open(str(odd), format="csv")), corpus, range(n))


# -- plain text ------------------------------------------------------------------------------------
def test_text_one_record_per_line(tmp_path: Path, corpus: pa.Table) -> None:
    lines = corpus_lines(corpus)
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = hr.open(str(tmp_path / "lines.txt"), text_mode="line", chunk_bytes=4096)
    assert ds.schema.names == ["text"]
    assert read(ds) == {"text": lines}
    assert ds.source.counts() == [len(lines)]


def test_text_crlf_line_endings_are_stripped(tmp_path: Path, corpus: pa.Table) -> None:
    lines = corpus_lines(corpus)
    (tmp_path / "dos.txt").write_bytes("\r\n".join(lines).encode())  # no final newline
    assert read(hr.open(str(tmp_path / "dos.txt"), chunk_bytes=4096)) == {"text": lines}


def test_text_column_name(tmp_path: Path, corpus: pa.Table) -> None:
    lines = corpus_lines(corpus, rows=50)
    (tmp_path / "a.txt").write_text("\n".join(lines), encoding="utf-8")
    assert read(hr.open(str(tmp_path / "a.txt"), text_column="line")) == {"line": lines}


def test_text_one_record_per_file_over_shakespeare() -> None:
    files = sorted(SHAKESPEARE.glob("*.txt"))
    assert len(files) > 50
    ds = hr.open(str(SHAKESPEARE / "*.txt"), text_mode="file")
    assert [s.url for s in ds.source.shards] == [str(p) for p in files]
    texts = [row["text"] for row in ds]
    assert len(texts) == len(files)
    for path, text in zip(files, texts, strict=True):
        assert text == path.read_text(encoding="utf-8"), path.name


def test_text_file_mode_ranks_split_the_files() -> None:
    files = sorted(SHAKESPEARE.glob("h*.txt"))
    ds = hr.open([str(p) for p in files], text_mode="file")
    got: list[str] = []
    for rank in range(3):
        got += read(ds, rank=rank, world_size=3, remainder="pad")["text"]
    want = [p.read_text(encoding="utf-8") for p in files]
    per = -(-len(files) // 3)
    assert got == (want + want)[: 3 * per]


# -- Arrow IPC -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "feather", "stream"])
def test_arrow_ipc_reads_back_exactly(tmp_path: Path, corpus: pa.Table, kind: str) -> None:
    write_arrow_files(corpus, tmp_path, shards=3, kind=kind)
    ds = hr.open(str(tmp_path))
    assert ds.schema.names == ["id", "doc", "text"]
    got = read(ds)
    assert_corpus(got, corpus)
    assert got["doc"] == corpus.column("doc").to_pylist()
    assert sum(ds.source.counts()) == corpus.num_rows
    assert list(read(hr.open(str(tmp_path), columns=["text"]))) == ["text"]


@pytest.mark.parametrize("kind", ["parquet", "arrow", "csv"])
def test_a_column_missing_from_a_later_shard_reads_as_nulls(tmp_path: Path, corpus: pa.Table, kind: str) -> None:
    first, second = corpus.slice(0, 300), corpus.slice(300, 300).drop_columns(["doc"])
    for name, part in (("a", first), ("b", second)):
        if kind == "parquet":
            pq.write_table(part, tmp_path / f"{name}.parquet")
        elif kind == "csv":  # with columns=, was a bare ArrowKeyError
            pa.csv.write_csv(part, tmp_path / f"{name}.csv")
        else:
            feather.write_feather(part, str(tmp_path / f"{name}.arrow"))
    for columns in (None, ["doc", "id", "text"]):
        got = read(hr.open(str(tmp_path), columns=columns))
        assert_corpus(got, corpus, range(600))
        assert got["doc"] == first.column("doc").to_pylist() + [None] * 300


# -- starting a shard at a row ---------------------------------------------------------------------
def dataset_for(kind: str, tmp_path: Path, corpus: pa.Table, **options: Any) -> tuple[hr.Dataset, pa.Table]:
    """``(dataset, expected rows)`` of ``corpus`` written in format ``kind`` (several shards)."""
    if kind == "parquet":
        write_parquet(corpus, tmp_path, shards=3, row_group_size=100)
    elif kind.startswith("jsonl"):
        write_jsonl(corpus, tmp_path, shards=3, compression={"jsonl": None}.get(kind, kind.split("-")[-1]))
    elif kind == "csv":
        write_csv(corpus, tmp_path, shards=3)
    elif kind in ("arrow-file", "arrow-stream"):
        write_arrow_files(corpus, tmp_path, shards=3, kind=kind.split("-")[1])
    elif kind == "text":
        lines = corpus_lines(corpus, rows=corpus.num_rows)
        for i, j in enumerate(range(0, len(lines), 500)):
            (tmp_path / f"part-{i:03d}.txt").write_text("\n".join(lines[j : j + 500]) + "\n", encoding="utf-8")
        return hr.open(str(tmp_path), **options), pa.table({"text": lines})
    else:
        raise AssertionError(kind)
    return hr.open(str(tmp_path), **options), corpus


KINDS = ["parquet", "jsonl", "jsonl-gzip", "jsonl-zstd", "jsonl-bz2", "csv", "arrow-file", "arrow-stream", "text"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_rank_reads_exactly_its_range_of_the_global_order(tmp_path: Path, corpus: pa.Table, kind: str) -> None:
    ds, want = dataset_for(kind, tmp_path, corpus.slice(0, 2500), chunk_bytes=4096, block_rows=50)
    texts = want.column("text").to_pylist()
    total = len(texts)
    assert sum(ds.source.counts()) == total
    starts = []
    for rank in range(4):
        lo, hi = consumer_range(total, rank, 4, "drop")
        got = read(ds, rank=rank, world_size=4)
        assert got["text"] == texts[lo:hi], f"rank {rank}"
        if "id" in got:
            assert got["id"] == list(range(lo, hi))
        starts.append(lo)
    counts = np.cumsum(ds.source.counts())
    assert any(lo not in counts for lo in starts[1:])  # some ranks start mid-shard


# -- exact resume ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_resume_is_exact_in_every_format(tmp_path: Path, corpus: pa.Table, kind: str) -> None:
    ds, want = dataset_for(kind, tmp_path, corpus.slice(0, RESUME_ROWS), chunk_bytes=4096, block_rows=50)
    report = check_resume(ds.batch(64), every=5)
    assert report.steps == -(-want.num_rows // 64)
    assert report.restores >= report.steps // 5


@pytest.mark.parametrize("kind", ["parquet", "jsonl-zstd", "csv", "text"])
def test_resume_is_exact_on_a_rank_with_shuffle(tmp_path: Path, corpus: pa.Table, kind: str) -> None:
    ds, want = dataset_for(kind, tmp_path, corpus.slice(0, RESUME_ROWS), chunk_bytes=4096, block_rows=50)
    report = check_resume(ds.shuffle(seed=3, buffer_size=200).batch(32), world=hr.World(1, 3), every=4)
    assert report.steps == -(-(want.num_rows // 3) // 32)


def test_resume_json_array(tmp_path: Path, corpus: pa.Table) -> None:
    rows = corpus.slice(0, 600).to_pylist()
    (tmp_path / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
    report = check_resume(hr.open(str(tmp_path / "rows.json"), block_rows=50).batch(64), every=2)
    assert report.steps == 10


def test_resume_text_files_mode() -> None:
    ds = hr.open(str(SHAKESPEARE / "ham*.txt"), text_mode="file")
    assert check_resume(ds.batch(1)).steps == 2


# -- long lines ------------------------------------------------------------------------------------
LONG_LINES = (2 << 20, 5 << 20, 20 << 20)  # 2, 5 and 20 MiB: Arrow's JSON blocks are 1 MiB


def long_records() -> list[dict[str, Any]]:
    """Short records around lines of 2, 5 and 20 MiB, each long text different all along (no repeats)."""
    rng = np.random.default_rng(7)
    rows: list[dict[str, Any]] = [{"id": 0, "text": "short"}]
    for n in LONG_LINES:
        letters = rng.integers(ord("a"), ord("z") + 1, size=n, dtype=np.uint8).tobytes().decode()
        rows += [{"id": len(rows), "text": letters}, {"id": len(rows) + 1, "text": f"after {n}"}]
    return rows


def write_compressed(data: bytes, path: Path, compression: str | None) -> Path:
    if compression is None:
        path.write_bytes(data)
    else:
        with pa.CompressedOutputStream(str(path), compression) as out:
            out.write(data)
    return path


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_jsonl_lines_of_2_5_and_20_mib_read_back_exactly(tmp_path: Path, compression: str | None) -> None:
    rows = long_records()
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    suffix = {None: "", "gzip": ".gz", "zstd": ".zst"}[compression]
    path = write_compressed(data, tmp_path / f"long.jsonl{suffix}", compression)
    for errors in ("raise", "skip"):
        loader = hr.Loader(hr.open(str(path), errors=errors, block_rows=2).batch(1))
        got = [(b["id"][0], b["text"][0]) for b in loader]
        assert got == [(r["id"], r["text"]) for r in rows] and loader.skipped == 0
    report = check_resume(hr.open(str(path), block_rows=2, chunk_bytes=1 << 16).batch(2))
    assert report.steps == 4 and report.restores == 5


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_text_lines_of_2_5_and_20_mib_read_back_exactly(tmp_path: Path, compression: str | None) -> None:
    texts = [r["text"] for r in long_records()]
    suffix = {None: "", "gzip": ".gz", "zstd": ".zst"}[compression]
    path = write_compressed("\n".join(texts).encode(), tmp_path / f"long.txt{suffix}", compression)
    assert [r["text"] for r in hr.open(str(path))] == texts
    report = check_resume(hr.open(str(path), block_rows=2, chunk_bytes=1 << 16).batch(2))
    assert report.steps == 4 and report.restores == 5


def test_a_line_of_exactly_max_line_bytes_is_read(tmp_path: Path) -> None:
    lines = ["a" * 100, "b" * 99, "c" * 100]
    (tmp_path / "edge.txt").write_text("\n".join(lines))  # the last line without "\n" at the end
    for chunk_bytes in (7, 100, 101, 4096):
        ds = hr.open(str(tmp_path / "edge.txt"), max_line_bytes=100, chunk_bytes=chunk_bytes)
        assert [r["text"] for r in ds] == lines, chunk_bytes
