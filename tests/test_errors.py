"""Bad input: one clear error naming the file and the position, never a hang, never a silent loss.

Each case asserts the exception type and that the message names the file and (where there is one)
the line or row. Under ``errors="skip"``/``"warn"`` the good rows come back in order and exactly the
bad records are counted — also across ranks and across a resume.
"""

from __future__ import annotations

import bz2
import gzip
import json
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from corpora import write_jsonl, write_parquet
from headrace.core.policy import SkippedRecordWarning
from headrace.testing import check_resume

pytestmark = pytest.mark.timeout(60)


def ids_of(ds: hr.Dataset, **loader: Any) -> tuple[list[int], int]:
    """The ``id`` column of one epoch and how many records were skipped."""
    loader_ = hr.Loader(ds.batch(100), **loader)
    ids = [i for b in loader_ for i in b["id"].tolist()]
    return ids, loader_.skipped


def jsonl_with_bad_lines(path: Path, n: int, bad: dict[int, str], compression: str | None = None) -> Path:
    """``n`` records ``{"id": i, ...}``, one per line, with line ``k`` (1-based) replaced by ``bad[k]``."""
    lines = [json.dumps({"id": i, "text": f"record {i} " + "x" * (i % 40)}) for i in range(n)]
    for line_no, text in bad.items():
        lines[line_no - 1] = text
    data = ("\n".join(lines) + "\n").encode()
    if compression == "gzip":
        data = gzip.compress(data)
    elif compression == "bz2":
        data = bz2.compress(data)
    elif compression == "zstd":
        with pa.CompressedOutputStream(str(path), "zstd") as out:
            out.write(data)
        return path
    path.write_bytes(data)
    return path


def good_ids(n: int, bad: dict[int, str]) -> list[int]:
    return [i for i in range(n) if i + 1 not in bad]


# -- paths and formats -----------------------------------------------------------------------------
def test_no_path_given() -> None:
    with pytest.raises(hr.SourceError, match="no path given"):
        hr.open([])


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "data.jsonl"
    with pytest.raises(hr.SourceError, match=re.escape(str(path))):
        hr.open(str(path))


def test_missing_file_in_a_list_is_named(tmp_path: Path) -> None:
    good = tmp_path / "a.jsonl"
    good.write_text('{"id": 0}\n')
    with pytest.raises(hr.SourceError, match=re.escape(str(tmp_path / "b.jsonl"))):
        hr.open([str(good), str(tmp_path / "b.jsonl")])


def test_empty_glob_is_named(tmp_path: Path) -> None:
    pattern = str(tmp_path / "shard-*.parquet")
    with pytest.raises(hr.SourceError, match=r"matched no files") as info:
        hr.open(pattern)
    assert pattern in str(info.value)


def test_directory_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "README.xyz").write_text("not data")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".hidden.jsonl").write_text('{"id": 0}\n')
    with pytest.raises(hr.SourceError, match="no data files") as info:
        hr.open(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_unknown_suffix_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data.xyz"
    path.write_text('{"id": 0}\n')
    with pytest.raises(hr.SourceError, match="unknown format") as info:
        hr.open(str(path))
    assert str(path) in str(info.value) and "format=" in str(info.value)


def test_unknown_format_name_lists_the_formats(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": 0}\n')
    with pytest.raises(hr.SourceError, match="'nope'") as info:
        hr.open(str(path), format="nope")
    assert "parquet" in str(info.value) and "jsonl" in str(info.value)


def test_unknown_column_lists_the_real_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"]}), path)
    with pytest.raises(hr.SchemaError, match=r"'txet'") as info:
        hr.open(str(path), columns=["id", "txet"])
    message = str(info.value)
    assert str(path) in message and "['id', 'text']" in message


def test_unknown_column_in_jsonl(tmp_path: Path) -> None:
    path = jsonl_with_bad_lines(tmp_path / "data.jsonl", 5, {})
    with pytest.raises(hr.SchemaError, match=r"unknown column.*'nope'.*\['id', 'text'\]"):
        hr.open(str(path), columns=["nope"])


# -- malformed JSON lines --------------------------------------------------------------------------
def test_malformed_json_line_raises_with_file_and_line(tmp_path: Path) -> None:
    path = jsonl_with_bad_lines(tmp_path / "data.jsonl", 50, {17: '{"id": 16, "text": "unterminated'})
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:17:")):
        ids_of(hr.open(str(path)))


def test_malformed_json_raises_after_the_good_rows_before_it(tmp_path: Path) -> None:
    path = jsonl_with_bad_lines(tmp_path / "data.jsonl", 500, {321: "{oops"})
    seen: list[int] = []
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:321:")):
        for row in hr.open(str(path), chunk_bytes=1 << 20):
            seen.append(row["id"])
    assert seen == list(range(320))


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = jsonl_with_bad_lines(tmp_path / "data.jsonl", 20, {4: "[1, 2, 3]", 9: "42"})
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:4:")):
        ids_of(hr.open(str(path)))
    ids, skipped = ids_of(hr.open(str(path), errors="skip"))
    assert ids == good_ids(20, {4: "", 9: ""}) and skipped == 2


BAD = {1: "{", 40: "not json", 41: '{"id": 40,}', 333: '{"id": "332"', 1000: "}"}


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 512])
@pytest.mark.parametrize("compression", [None, "gzip", "zstd", "bz2"])
def test_skip_returns_the_other_rows_in_order_and_counts_exactly(
    tmp_path: Path, chunk_bytes: int, compression: str | None
) -> None:
    suffix = {None: "", "gzip": ".gz", "zstd": ".zst", "bz2": ".bz2"}[compression]
    path = jsonl_with_bad_lines(tmp_path / f"data.jsonl{suffix}", 1000, BAD, compression)
    ds = hr.open(str(path), errors="skip", chunk_bytes=chunk_bytes, block_rows=64)
    ids, skipped = ids_of(ds)
    assert ids == good_ids(1000, BAD)
    assert skipped == len(BAD)
    assert ds.source.counts() == [1000]  # a skipped record keeps its slot


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_raise_names_a_bad_line_in_a_later_chunk(tmp_path: Path, compression: str | None) -> None:
    suffix = ".zst" if compression else ""
    path = jsonl_with_bad_lines(tmp_path / f"data.jsonl{suffix}", 1000, {777: "{bad"}, compression)
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:777:")):
        ids_of(hr.open(str(path), chunk_bytes=512))


def test_warn_policy_warns_naming_each_line(tmp_path: Path) -> None:
    path = jsonl_with_bad_lines(tmp_path / "data.jsonl.gz", 600, {5: "{x", 450: "nope"}, "gzip")
    with pytest.warns(SkippedRecordWarning) as caught:
        ids, skipped = ids_of(hr.open(str(path), errors="warn", chunk_bytes=1024), prefetch=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedRecordWarning)]
    assert len(messages) == 2
    assert f"{path}:5:" in messages[0] and f"{path}:450:" in messages[1]
    assert ids == good_ids(600, {5: "", 450: ""}) and skipped == 2


def test_skip_counts_each_bad_line_once_across_ranks(tmp_path: Path) -> None:
    bad = {8: "{", 151: "{", 152: "x", 300: "]"}
    path = jsonl_with_bad_lines(tmp_path / "data.jsonl", 300, bad)
    ds = hr.open(str(path), errors="skip", chunk_bytes=1024, block_rows=32)
    all_ids: list[int] = []
    total_skipped = 0
    for rank in range(4):
        ids, skipped = ids_of(ds, rank=rank, world_size=4)
        assert ids == [i for i in range(rank * 75, rank * 75 + 75) if i + 1 not in bad]
        all_ids += ids
        total_skipped += skipped
    assert all_ids == good_ids(300, bad)
    assert total_skipped == len(bad)


def test_skip_count_is_exact_across_a_resume(tmp_path: Path) -> None:
    bad = {3: "{", 90: "{", 91: "{", 200: "x", 401: "]"}
    path = jsonl_with_bad_lines(tmp_path / "data.jsonl.zst", 500, bad, "zstd")
    ds = hr.open(str(path), errors="skip", chunk_bytes=1024, block_rows=16).batch(10)
    check_resume(ds, every=3)
    for step in range(0, 50, 7):
        first = hr.Loader(ds)
        it = iter(first)
        for _ in range(step):
            next(it)
        state = json.loads(json.dumps(first.state_dict()))
        it.close()
        resumed = hr.Loader(ds)
        resumed.load_state_dict(state)
        rest = [i for b in resumed for i in b["id"].tolist()]
        assert rest == good_ids(500, bad)[step * 10 :]
        assert resumed.skipped == len(bad), f"after a resume at step {step}"


def test_json_array_element_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"id": 0}, {"id": 1}, 7, {"id": 3}, "x", {"id": 5}]))
    with pytest.raises(hr.RecordError, match=re.escape(str(path)) + r".*element 2"):
        ids_of(hr.open(str(path)))
    assert ids_of(hr.open(str(path), errors="skip")) == ([0, 1, 3, 5], 2)


def test_malformed_json_array_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text('[{"id": 0}, {"id": 1}')
    with pytest.raises(hr.SourceError, match=re.escape(str(path))):
        ids_of(hr.open(str(path)))


def test_type_conflict_inside_a_jsonl_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(10)) + '{"id": "ten"}\n')
    with pytest.raises(hr.SchemaError, match=re.escape(f"{path}:11")):
        ids_of(hr.open(str(path)))


# -- corrupt and empty files -----------------------------------------------------------------------
def test_truncated_parquet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": list(range(10_000))}), path, row_group_size=1000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(hr.SourceError, match=re.escape(str(path))):
        ids_of(hr.open(str(path)))


def test_truncated_parquet_later_in_a_glob_is_named(tmp_path: Path) -> None:
    paths = write_parquet(pa.table({"id": list(range(3000))}), tmp_path, shards=3, row_group_size=200)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    ds = hr.open(str(tmp_path / "*.parquet"))
    with pytest.raises(hr.SourceError, match=re.escape(str(paths[1]))):
        ids_of(ds)


def test_parquet_with_a_corrupt_page_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    table = pa.table({"id": list(range(20_000)), "text": [f"row {i}" * 3 for i in range(20_000)]})
    pq.write_table(table, path, row_group_size=5000, compression="snappy")
    meta = pq.read_metadata(path)
    col = meta.row_group(2).column(1)
    start = col.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 20 : start + 400] = b"\xff" * 380
    path.write_bytes(bytes(data))
    with pytest.raises(hr.SourceError, match=re.escape(str(path))):
        ids_of(hr.open(str(path)))


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".bz2", ".xz"])
def test_truncated_compressed_jsonl_is_named(tmp_path: Path, suffix: str) -> None:
    table = pa.table({"id": list(range(3000)), "text": [f"line {i} {i * 7919 % 10007}" for i in range(3000)]})
    compression = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": None}[suffix]
    if compression is None:
        import lzma

        path = tmp_path / "part-00000.jsonl.xz"
        path.write_bytes(lzma.compress("".join(json.dumps(r) + "\n" for r in table.to_pylist()).encode()))
    else:
        (path,) = write_jsonl(table, tmp_path, shards=1, compression=compression)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(hr.SourceError, match=re.escape(str(path))):
        ids_of(hr.open(str(path), chunk_bytes=4096))


def test_not_actually_gzip_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl.gz"
    path.write_text('{"id": 0}\n')
    with pytest.raises(hr.SourceError, match=re.escape(str(path))):
        ids_of(hr.open(str(path)))


def test_corrupt_arrow_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.arrow"
    table = pa.table({"id": list(range(5000))})
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table, max_chunksize=500)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(hr.SourceError, match=re.escape(str(path))):
        ids_of(hr.open(str(path)))


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.parquet", "empty.csv", "empty.txt", "empty.arrow"])
def test_empty_file_is_named(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(hr.SourceError, match=re.escape(str(path)) + ".*empty"):
        hr.open(str(path))


def test_empty_file_later_in_a_list_is_named(tmp_path: Path) -> None:
    good = jsonl_with_bad_lines(tmp_path / "a.jsonl", 3, {})
    empty = tmp_path / "b.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(hr.SourceError, match=re.escape(str(empty))):
        hr.open([str(good), str(empty)])


def test_jsonl_with_only_blank_lines_is_named(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("\n \n\t\n")
    with pytest.raises(hr.SourceError, match=re.escape(str(path)) + ".*no JSON records"):
        hr.open(str(path))


# -- incompatible schemas --------------------------------------------------------------------------
def test_parquet_shards_with_string_and_int_text(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [0, 1], "text": ["a", "b"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [2, 3], "text": [5, 6]}), tmp_path / "b.parquet")
    with pytest.raises(hr.SchemaError, match=re.escape(str(tmp_path / "b.parquet")) + ".*'text'"):
        ids_of(hr.open(str(tmp_path)))


def test_parquet_integer_widths_are_compatible(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": pa.array([0, 1], pa.int64())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([2, 3], pa.int32())}), tmp_path / "b.parquet")
    assert ids_of(hr.open(str(tmp_path))) == ([0, 1, 2, 3], 0)


def test_explicit_schema_chooses_the_common_type(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [0, 1], "text": ["a", "b"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [2, 3], "text": [5, 6]}), tmp_path / "b.parquet")
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    assert [r["text"] for r in hr.open(str(tmp_path), schema=schema)] == ["a", "b", "5", "6"]


def test_jsonl_file_with_an_extra_field(tmp_path: Path) -> None:
    first = jsonl_with_bad_lines(tmp_path / "a.jsonl", 5, {})
    second = tmp_path / "b.jsonl"
    second.write_text('{"id": 5, "text": "t"}\n{"id": 6, "text": "u", "lang": "en"}\n')
    with pytest.raises(hr.SchemaError, match=re.escape(str(second)) + r".*\['lang'\]"):
        ids_of(hr.open([str(first), str(second)]))
    # projecting to the shared columns reads both
    assert ids_of(hr.open([str(first), str(second)], columns=["id"])) == ([0, 1, 2, 3, 4, 5, 6], 0)


# -- text and CSV records --------------------------------------------------------------------------
def test_invalid_utf8_in_text_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    lines = [f"line {i}".encode() for i in range(200)]
    lines[122] = b"caf\xe9 au lait"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:123:") + ".*UTF-8"):
        list(hr.open(str(path), chunk_bytes=256))
    loader = hr.Loader(hr.open(str(path), errors="skip", chunk_bytes=256).batch(64))
    texts = [t for b in loader for t in b["text"].tolist()]
    assert texts == [f"line {i}" for i in range(200) if i != 122]
    assert loader.skipped == 1


def test_invalid_utf8_in_file_mode_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("fine")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe broken")
    (tmp_path / "c.txt").write_text("also fine")
    with pytest.raises(hr.RecordError, match=re.escape(str(tmp_path / "b.txt"))):
        list(hr.open(str(tmp_path), text_mode="file"))
    loader = hr.Loader(hr.open(str(tmp_path), text_mode="file", errors="skip").batch(8))
    assert [t for b in loader for t in b["text"].tolist()] == ["fine", "also fine"]
    assert loader.skipped == 1


def test_csv_row_with_the_wrong_number_of_fields(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    rows = [f"{i},text {i}" for i in range(100)]
    rows[41] = "41,text 41,surplus"
    rows[76] = "76"
    path.write_text("id,text\n" + "\n".join(rows) + "\n")
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:43:") + ".*expected 2 fields, got 3"):
        ids_of(hr.open(str(path)))
    ids, skipped = ids_of(hr.open(str(path), errors="skip", chunk_bytes=256))
    assert ids == [i for i in range(100) if i not in (41, 76)]
    assert skipped == 2


def test_csv_skip_count_is_exact_across_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    rows = [f'{i},"text {i}\nsecond line"' for i in range(400)]
    for i in (0, 57, 58, 222, 399):
        rows[i] = f"{i},a,b"
    path.write_text("id,text\n" + "\n".join(rows) + "\n")
    ds = hr.open(str(path), errors="skip", chunk_bytes=512, block_rows=16).batch(10)
    want = [i for i in range(400) if i not in (0, 57, 58, 222, 399)]
    check_resume(ds, every=4)
    for step in (0, 5, 6, 22, 39):
        first = hr.Loader(ds)
        it = iter(first)
        for _ in range(step):
            next(it)
        state = json.loads(json.dumps(first.state_dict()))
        it.close()
        resumed = hr.Loader(ds)
        resumed.load_state_dict(state)
        assert [i for b in resumed for i in b["id"].tolist()] == want[step * 10 :]
        assert resumed.skipped == 5, f"after a resume at step {step}"


def bad_text_and_csv(tmp_path: Path, kind: str) -> tuple[hr.Dataset, list[int], int]:
    """400 records (ids 0..399) with 6 bad ones, as text lines or CSV rows: ``(dataset, good ids, bad)``."""
    bad = {0, 99, 100, 101, 250, 333}
    if kind == "text":
        lines = [f"{i}".encode() if i not in bad else b"\xff" for i in range(400)]
        (tmp_path / "lines.txt").write_bytes(b"\n".join(lines) + b"\n")
        ds = hr.open(str(tmp_path / "lines.txt"), errors="skip", chunk_bytes=128, block_rows=16)
        ds = ds.map(lambda r: {"id": int(r["text"])})
        return ds, [i for i in range(400) if i not in bad], len(bad)
    rows = [f'{i},"text {i}\nline 2"' if i not in bad else f"{i},x,y" for i in range(400)]
    (tmp_path / "rows.csv").write_text("id,text\n" + "\n".join(rows) + "\n")
    ds = hr.open(str(tmp_path / "rows.csv"), errors="skip", chunk_bytes=256, block_rows=16)
    return ds, [i for i in range(400) if i not in bad], len(bad)


@pytest.mark.parametrize("kind", ["text", "csv"])
def test_skip_counts_each_bad_record_once_across_ranks(tmp_path: Path, kind: str) -> None:
    ds, want, bad = bad_text_and_csv(tmp_path, kind)
    total = sum(ds.source.counts())
    got: list[int] = []
    skipped = 0
    for rank in range(4):
        ids, n = ids_of(ds, rank=rank, world_size=4)
        got += ids
        skipped += n
    assert got == want[: total - total % 4]
    assert skipped == bad


@pytest.mark.parametrize("kind", ["text", "csv"])
def test_skip_count_of_text_and_csv_is_exact_across_a_resume(tmp_path: Path, kind: str) -> None:
    ds, want, bad = bad_text_and_csv(tmp_path, kind)
    batches = ds.batch(10)
    check_resume(batches, every=3)
    for step in (0, 1, 9, 10, 24, 33):
        state = state_after(hr.Loader(batches), step)
        resumed = hr.Loader(batches)
        resumed.load_state_dict(state)
        assert [i for b in resumed for i in b["id"].tolist()] == want[step * 10 :]
        assert resumed.skipped == bad, f"after a resume at step {step}"


# -- states ----------------------------------------------------------------------------------------
@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    return write_parquet(pa.table({"id": list(range(600)), "text": [f"t{i}" for i in range(600)]}), tmp_path, 3, 100)


def state_after(loader: hr.Loader, steps: int) -> dict[str, Any]:
    it = iter(loader)
    for _ in range(steps):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    it.close()
    return state


def test_state_of_another_seed_is_refused(shards: list[Path]) -> None:
    ds = hr.open([str(p) for p in shards])
    state = state_after(hr.Loader(ds.shuffle(seed=1, buffer_size=50).batch(10)), 3)
    other = hr.Loader(ds.shuffle(seed=2, buffer_size=50).batch(10))
    with pytest.raises(hr.StateError, match=r"seed.*saved 1, now 2"):
        other.load_state_dict(state)


def test_state_of_another_file_set_is_refused(shards: list[Path]) -> None:
    state = state_after(hr.Loader(hr.open([str(p) for p in shards]).batch(10)), 2)
    other = hr.Loader(hr.open([str(p) for p in shards[:2]]).batch(10))
    with pytest.raises(hr.StateError, match=r"shards: saved 3, now 2"):
        other.load_state_dict(state)


def test_state_of_another_batch_size_is_refused(shards: list[Path]) -> None:
    ds = hr.open([str(p) for p in shards])
    state = state_after(hr.Loader(ds.batch(10)), 2)
    with pytest.raises(hr.StateError, match=r"size: saved 10, now 16"):
        hr.Loader(ds.batch(16)).load_state_dict(state)


def test_state_of_another_world_is_refused(shards: list[Path]) -> None:
    ds = hr.open([str(p) for p in shards]).batch(10)
    state = state_after(hr.Loader(ds, rank=1, world_size=2), 2)
    with pytest.raises(hr.StateError, match=r"world_size: saved 2, now 4"):
        hr.Loader(ds, rank=1, world_size=4).load_state_dict(state)
    with pytest.raises(hr.StateError, match=r"rank: saved 1, now 0"):
        hr.Loader(ds, rank=0, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("state", [{}, {"step": 3}, [], "state", {"format": "other"}])
def test_a_state_that_is_not_headrace_is_refused(shards: list[Path], state: Any) -> None:
    loader = hr.Loader(hr.open([str(p) for p in shards]).batch(10))
    with pytest.raises(hr.StateError, match="not a headrace loader state"):
        loader.load_state_dict(state)


def test_a_state_of_another_version_is_refused(shards: list[Path]) -> None:
    ds = hr.open([str(p) for p in shards]).batch(10)
    state = state_after(hr.Loader(ds), 1)
    state["version"] = 99
    with pytest.raises(hr.StateError, match="version 99"):
        hr.Loader(ds).load_state_dict(state)


def test_invalid_utf8_inside_a_jsonl_string_is_a_record_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "\xff"}\n{"a": "fine"}\n')
    with pytest.raises(hr.RecordError, match=rf"{path}:2: malformed JSON line"):
        list(hr.open(str(path)))
    loader = hr.Loader(hr.open(str(path), errors="skip").batch(10))
    assert [b["a"].tolist() for b in loader] == [["ok", "fine"]] and loader.skipped == 1


def test_one_file_spelled_two_ways_is_one_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"id": 1}\n')
    monkeypatch.chdir(tmp_path)
    ds = hr.open(["d/a.jsonl", "d/../d/a.jsonl", str(tmp_path / "d" / "a.jsonl")])
    assert len(ds.source.shards) == 1 and [r["id"] for r in ds] == [1]


def test_unknown_format_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n')
    with pytest.raises(hr.SourceError, match=r"a\.jsonl.*unknown format 'nope'"):
        hr.open(str(path), format="nope")


# -- lines over max_line_bytes ---------------------------------------------------------------------
@pytest.mark.parametrize(("suffix", "compression"), [("", None), (".gz", "gzip"), (".zst", "zstd")])
def test_a_jsonl_line_over_max_line_bytes_names_the_line_and_follows_the_policy(
    tmp_path: Path, suffix: str, compression: str | None
) -> None:
    bad = {40: json.dumps({"id": 39, "text": "x" * 5000}), 41: json.dumps({"id": 40, "text": "y" * 1500})}
    path = jsonl_with_bad_lines(tmp_path / f"data.jsonl{suffix}", 100, bad, compression)
    options: dict[str, Any] = {"max_line_bytes": 1000, "chunk_bytes": 700, "block_rows": 8}
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:40: the line is 5022 bytes long") + ".*max_line_bytes"):
        ids_of(hr.open(str(path), **options))
    assert ids_of(hr.open(str(path), errors="skip", **options)) == (good_ids(100, bad), 2)
    halves = [ids_of(hr.open(str(path), errors="skip", **options), rank=r, world_size=2) for r in (0, 1)]
    assert halves == [(good_ids(100, bad)[:48], 2), (good_ids(100, bad)[48:], 0)]  # rank 0 holds lines 40 and 41
    ds = hr.open(str(path), errors="skip", **options).batch(10)
    check_resume(ds)
    for step in (3, 4, 5):
        resumed = hr.Loader(ds)
        resumed.load_state_dict(state_after(hr.Loader(ds), step))
        assert [i for b in resumed for i in b["id"].tolist()] == good_ids(100, bad)[step * 10 :]
        assert resumed.skipped == 2, f"after a resume at step {step}"


def test_a_text_line_over_max_line_bytes_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    lines = [f"line {i}" for i in range(50)]
    lines[7] = "z" * 300
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:8: the line is 300 bytes long")):
        list(hr.open(str(path), max_line_bytes=100))
    loader = hr.Loader(hr.open(str(path), max_line_bytes=100, errors="skip", chunk_bytes=64).batch(16))
    assert [t for b in loader for t in b["text"].tolist()] == lines[:7] + lines[8:] and loader.skipped == 1


def test_a_text_file_over_max_line_bytes_in_file_mode_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("short")
    (tmp_path / "b.txt").write_text("long " * 100)
    with pytest.raises(hr.RecordError, match=re.escape(f"{tmp_path / 'b.txt'}: the file is 500 bytes long")):
        list(hr.open(str(tmp_path), text_mode="file", max_line_bytes=100))
    loader = hr.Loader(hr.open(str(tmp_path), text_mode="file", max_line_bytes=100, errors="skip").batch(4))
    assert [t for b in loader for t in b["text"].tolist()] == ["short"] and loader.skipped == 1


@pytest.mark.parametrize("value", [0, -1, (1 << 30) + 1])
def test_max_line_bytes_out_of_range_is_refused(tmp_path: Path, value: int) -> None:
    path = jsonl_with_bad_lines(tmp_path / "a.jsonl", 3, {})
    with pytest.raises(ValueError, match="max_line_bytes must be between 1 and 1073741824"):
        hr.open(str(path), max_line_bytes=value)


# -- invalid UTF-8 in CSV --------------------------------------------------------------------------
def csv_with_invalid_utf8(path: Path, bad: set[int], n: int = 300) -> Path:
    """``n`` rows ``id,text`` (with quoted newlines), rows ``bad`` holding a byte that is not UTF-8."""
    rows = [f'{i},"text {i}\nline 2"'.encode() if i not in bad else f'{i},"caf'.encode() + b'\xe9"' for i in range(n)]
    path.write_bytes(b"id,text\n" + b"\n".join(rows) + b"\n")
    return path


@pytest.mark.parametrize("bad", [{0, 150}, {150}, {299}, {5, 6, 200}])
def test_invalid_utf8_in_csv_is_a_record_error_naming_the_row(tmp_path: Path, bad: set[int]) -> None:
    path = csv_with_invalid_utf8(tmp_path / "data.csv", bad)
    first = min(bad)
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:{first + 2}: column 'text' is not valid UTF-8")):
        ids_of(hr.open(str(path), chunk_bytes=512))
    ds = hr.open(str(path), errors="skip", chunk_bytes=512, block_rows=16)
    want = [i for i in range(300) if i not in bad]
    assert ids_of(ds) == (want, len(bad))
    assert ids_of(hr.open(str(path), errors="skip", columns=["id"])) == (list(range(300)), 0)  # text not read
    batches = ds.batch(10)
    check_resume(batches, every=3)
    for step in (1, 15, 20):
        resumed = hr.Loader(batches)
        resumed.load_state_dict(state_after(hr.Loader(batches), step))
        assert [i for b in resumed for i in b["id"].tolist()] == want[step * 10 :]
        assert resumed.skipped == len(bad), f"after a resume at step {step}"


def test_invalid_utf8_and_short_rows_in_csv_are_counted_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"id,text\n0,a\n1\n2,\xff\n3,d\n4,e,f\n5,\xfe\n6,g\n")
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:3: expected 2 fields, got 1")):
        ids_of(hr.open(str(path)))
    ds = hr.open(str(path), errors="warn")
    with pytest.warns(SkippedRecordWarning) as caught:
        assert ids_of(ds) == ([0, 3, 6], 4)
    assert [str(w.message).split(": ", 2)[1].rsplit(":", 1)[1] for w in caught] == ["3", "4", "6", "7"]


# -- empty files among good ones -------------------------------------------------------------------
def write_good_shard(path: Path, ids: range) -> None:
    table = pa.table({"id": list(ids), "text": [f"t{i}" for i in ids]})
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".arrow":
        with pa.ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table)
    elif path.suffix == ".csv":
        path.write_text("id,text\n" + "".join(f"{i},t{i}\n" for i in ids))
    elif path.suffix == ".txt":
        path.write_text("".join(f"{i}\n" for i in ids))
    elif path.suffix == ".bin":  # a nanoGPT token stream, read one token a row
        np.asarray(ids, dtype=np.uint16).tofile(path)
    else:
        path.write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in ids))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt", ".parquet", ".arrow", ".jsonl.gz", ".bin"])
@pytest.mark.parametrize("empty_at", [0, 1, 2])
def test_an_empty_file_among_good_ones_is_quarantined_under_skip(tmp_path: Path, suffix: str, empty_at: int) -> None:
    paths = [tmp_path / f"part-{i}{suffix}" for i in range(3)]
    for i, path in enumerate(paths):
        if i == empty_at:
            path.write_bytes(b"")
        elif suffix == ".jsonl.gz":
            lines = "".join(json.dumps({"id": j}) + "\n" for j in range(i * 10, i * 10 + 10))
            path.write_bytes(gzip.compress(lines.encode()))
        else:
            write_good_shard(path, range(i * 10, i * 10 + 10))
    empty = str(paths[empty_at])
    options: dict[str, Any] = {"format_options": {"tokens_per_row": 1}} if suffix == ".bin" else {}
    with pytest.raises(hr.SourceError, match=re.escape(empty) + r".*empty \(0 bytes\).*errors='skip'"):
        hr.open(str(tmp_path), **options)
    want = [j for i in range(3) if i != empty_at for j in range(i * 10, i * 10 + 10)]
    for errors in ("skip", "warn"):
        ds = hr.open(str(tmp_path), errors=errors, **options)
        if suffix == ".txt":
            ds = ds.map(lambda r: {"id": int(r["text"])})
        elif suffix == ".bin":
            ds = ds.map(lambda r: {"id": int(r["input_ids"][0])})
        warns = pytest.warns(SkippedRecordWarning, match=re.escape(empty) + r".*empty")
        with warns if errors == "warn" else nullcontext():
            assert ids_of(ds) == (want, 1)
        ranks = [ids_of(ds, rank=r, world_size=2) for r in (0, 1)]  # counted once, by rank 0
        assert ranks == [(want[:10], 1), (want[10:], 0)]


# -- damaged files found by tests/hostile/test_shard_mutation.py -----------------------------------
def arrow_file(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=25)
    return sink.getvalue().to_pybytes()


def damaged_and_good(tmp_path: Path, suffix: str, damaged: bytes, good: pa.Table) -> tuple[Path, Path]:
    """The damaged shard ``part-0`` and a good one ``part-1`` of ``good``, in the format of ``suffix``."""
    bad, fine = tmp_path / f"part-0{suffix}", tmp_path / f"part-1{suffix}"
    bad.write_bytes(damaged)
    if suffix == ".parquet":
        pq.write_table(good, fine)
    else:
        fine.write_bytes(arrow_file(good))
    return bad, fine


def assert_quarantined(bad: Path, fine: Path, want: list[int], **loader: Any) -> None:
    """Under raise, a SourceError naming ``bad``; under skip, the rows ``want`` and one skip."""
    with pytest.raises(hr.SourceError, match=re.escape(str(bad))):
        ids_of(hr.open([str(bad), str(fine)]), **loader)
    assert ids_of(hr.open([str(bad), str(fine)], errors="skip"), **loader) == (want, 1)


TABLE = pa.table({"id": list(range(100)), "text": [f"text {i}" for i in range(100)]})
LATER = pa.table({"id": list(range(100, 150)), "text": [f"text {i}" for i in range(100, 150)]})


@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_invalid_utf8_inside_arrow_or_parquet_strings_quarantines_the_shard(tmp_path: Path, suffix: str) -> None:
    if suffix == ".arrow":
        data = arrow_file(TABLE)
    else:
        path = tmp_path / "build.parquet"
        pq.write_table(TABLE, path, compression="none", use_dictionary=False, write_statistics=False)
        data = path.read_bytes()
    assert data.count(b"text 42") == 1
    bad, fine = damaged_and_good(tmp_path, suffix, data.replace(b"text 42", b"text \xff\xfe"), LATER)
    before = list(range(25)) if suffix == ".arrow" else []  # the record batches of 25 rows before row 42
    assert_quarantined(bad, fine, before + list(range(100, 150)))  # was a bare UnicodeDecodeError


def test_arrow_file_with_a_damaged_footer_is_named(tmp_path: Path) -> None:
    data = bytearray(arrow_file(TABLE))
    footer = len(data) - 10 - int.from_bytes(data[-10:-6], "little")
    data[footer] ^= 1  # fails the footer's flatbuffer verification: an OSError, not an ArrowInvalid
    bad, fine = damaged_and_good(tmp_path, ".arrow", bytes(data), LATER)
    assert_quarantined(bad, fine, list(range(100, 150)))


def test_arrow_file_whose_batches_cannot_be_counted_is_quarantined_on_every_rank(tmp_path: Path) -> None:
    data = arrow_file(TABLE)
    footer = len(data) - 10 - int.from_bytes(data[-10:-6], "little")
    for at in range(footer, len(data) - 10):  # a damaged block in the footer: it opens, its batches fail
        damaged = bytearray(data)
        damaged[at] ^= 0x10
        try:
            reader = pa.ipc.open_file(pa.BufferReader(bytes(damaged)))
        except (OSError, pa.ArrowException):
            continue
        try:
            [reader.get_batch(i) for i in range(reader.num_record_batches)]
        except (OSError, pa.ArrowException):
            break
    else:
        pytest.skip("this pyarrow detects every damaged footer block when opening the file")
    bad, fine = damaged_and_good(tmp_path, ".arrow", bytes(damaged), LATER)
    with pytest.raises(hr.SourceError, match=re.escape(str(bad))):
        ids_of(hr.open([str(bad), str(fine)]), rank=0, world_size=2)
    ranks = [ids_of(hr.open([str(bad), str(fine)], errors="skip"), rank=r, world_size=2) for r in (0, 1)]
    assert ranks == [(list(range(100, 125)), 1), (list(range(125, 150)), 0)]  # was a bare OSError counting


def test_parquet_row_group_that_decodes_short_is_named(tmp_path: Path) -> None:
    path = tmp_path / "build.parquet"
    pq.write_table(TABLE, path, row_group_size=25)
    data = path.read_bytes()
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    flips = ((at, bits) for at in range(footer, len(data) - 8) for bits in (0x53, 0x40, 0x7F))
    for at, bits in flips:  # a damaged value count: the footer still says 25 rows a group
        damaged = bytearray(data)
        damaged[at] ^= bits
        try:
            pf = pq.ParquetFile(pa.BufferReader(bytes(damaged)))
            meta = pf.metadata
            groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            if groups == [25] * 4 and sum(b.num_rows for g in range(4) for b in pf.iter_batches(row_groups=[g])) < 100:
                break  # read by row group, as headrace does
        except (OSError, pa.ArrowException):
            pass
    else:
        pytest.skip("this pyarrow raises on every damaged value count")
    bad, fine = damaged_and_good(tmp_path, ".parquet", bytes(damaged), LATER)
    with pytest.raises(hr.SourceError, match=re.escape(str(bad)) + ".*row group .* rows but the footer says 25"):
        ids_of(hr.open([str(bad), str(fine)]))  # was 75 rows and no error
    ids, skipped = ids_of(hr.open([str(bad), str(fine)], errors="skip"))
    assert skipped == 1 and ids[-50:] == list(range(100, 150)) and ids[:-50] == list(range(len(ids) - 50))


def test_parquet_footer_whose_row_groups_do_not_add_up_is_named(tmp_path: Path) -> None:
    path = tmp_path / "build.parquet"
    pq.write_table(TABLE, path, row_group_size=25)
    data = path.read_bytes()
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    for at in range(footer, len(data) - 8):  # a damaged row group row count
        damaged = bytearray(data)
        damaged[at] ^= 0x53
        try:
            meta = pq.ParquetFile(pa.BufferReader(bytes(damaged))).metadata
            if meta.num_rows == 100 and sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) != 100:
                break
        except (OSError, pa.ArrowException):
            pass
    else:
        pytest.skip("this pyarrow checks the row groups' row counts")
    bad, fine = damaged_and_good(tmp_path, ".parquet", bytes(damaged), LATER)
    for world_size in (1, 2):
        assert_quarantined(bad, fine, list(range(100, 150))[: 50 // world_size], world_size=world_size)


def test_jsonl_field_name_that_is_not_utf8_is_a_record_error(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        b'{"id": 0, "text": "a"}\n{"id": 1, "te\xefxt": "b"}\n{"id": 2, "nested": {"k\xcd": 1}}\n{"id": 3}\n'
    )
    with pytest.raises(hr.RecordError, match=re.escape(f"{path}:2: malformed JSON line")):
        ids_of(hr.open(str(path)))  # was a bare UnicodeDecodeError
    assert ids_of(hr.open(str(path), errors="skip")) == ([0, 3], 2)


def test_schema_error_names_the_shard_the_schema_came_from(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,text\n0,\n")  # a damaged first shard: its text column is all null
    (tmp_path / "b.csv").write_text("id,text\n1,one\n")
    with pytest.raises(
        hr.SchemaError,
        match=re.escape(f"{tmp_path / 'b.csv'}") + ".*taken from the shard " + re.escape(str(tmp_path / "a.csv")),
    ):
        ids_of(hr.open(str(tmp_path)))


def test_csv_header_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    bad, fine = tmp_path / "a.csv", tmp_path / "b.csv"
    bad.write_bytes(b"id,te\xffxt\n0,a\n1,b\n")
    fine.write_text("id,text\n5,e\n6,f\n")
    with pytest.raises(hr.SourceError, match=re.escape(f"{bad}: the header row is not valid UTF-8")):
        ids_of(hr.open([str(bad), str(fine)]))  # was a bare UnicodeDecodeError
    assert ids_of(hr.open([str(bad), str(fine)], errors="skip")) == ([5, 6], 1)


def test_json_array_with_an_integer_over_64_bits_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text('[{"id": 1}, {"id": 1000000000000000000000000000000}]')
    with pytest.raises(hr.SchemaError, match=re.escape(f"{path}: the JSON array's values do not fit one schema")):
        hr.open(str(path))  # was a bare OverflowError


def _stop_at_five(row: dict[str, Any]) -> dict[str, Any]:
    if row["id"] == 5:
        raise StopIteration  # e.g. next() on an exhausted iterator inside the user's function
    return {"twice": row["id"] * 2}


@pytest.mark.parametrize(("workers", "worker_type"), [(0, "thread"), (2, "thread"), (2, "process")])
def test_a_stop_iteration_from_a_user_function_is_an_error_not_the_end_of_the_epoch(
    tmp_path: Path, workers: int, worker_type: str
) -> None:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(10)))
    loader = hr.Loader(hr.open(str(tmp_path)).map(_stop_at_five).batch(2), num_workers=workers,
                       worker_type=worker_type)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"map\(_stop_at_five\) raised StopIteration") as caught:
        list(loader)
    assert any("a.jsonl" in note for note in getattr(caught.value, "__notes__", []))
