"""Byte-level mutation of real shards of every format: truncated at seeded offsets, bytes flipped, two files
spliced. Each run either raises a headrace error naming the mutated file, or (under ``errors="skip"``)
delivers every good record exactly once and counts what it left out — never a hang, never a bare
``KeyError``/``UnicodeDecodeError``/``ArrowInvalid`` escaping.

Every run reads the mutated shard beside an intact one. Records carry ``id`` and ``key = f"k{id:05d}"``: a
single mutation cannot change both consistently, so a record whose key matches its id is one that was
written (it must come once, and only if it was in a file), and one whose key does not is a corrupt but
well-formed record that a reader cannot tell from a good one (Parquet and Arrow pages have no checksums
here). For plain JSON Lines and text, Python's own line-by-line decoding is the oracle: what headrace
delivers and counts must be exactly what it finds.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore::UserWarning")]

ROWS = 90  # records per shard: several chunks, row groups and record batches at the sizes below
MUTATED, INTACT, DONOR = 0, 1000, 2000  # first ids of the mutated shard, the intact one, the splice donor
SEEDS = range(6)  # runs per format and kind of mutation (each under errors="raise" and "skip")
SUFFIXES = {
    "parquet": ".parquet", "arrow": ".arrow", "jsonl": ".jsonl", "jsonl.gz": ".jsonl.gz",
    "jsonl.zst": ".jsonl.zst", "csv": ".csv", "text": ".txt",
}  # fmt: skip
ORACLES = ("jsonl", "text", "jsonl.gz", "jsonl.zst")  # formats whose records Python finds in the mutated bytes


def records(first: int) -> list[dict[str, Any]]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]
    return [
        {"id": i, "key": f"k{i:05d}", "text": " ".join(words[(i + j) % len(words)] for j in range(i % 7 + 2))}
        for i in range(first, first + ROWS)
    ]


def shard_bytes(kind: str, first: int, scratch: Path) -> bytes:
    """A shard of ``ROWS`` records from id ``first`` in format ``kind``, as bytes."""
    rows = records(first)
    table = pa.Table.from_pylist(rows)
    path = scratch / f"build-{first}{SUFFIXES[kind]}"
    if kind == "parquet":
        pq.write_table(table, path, row_group_size=25, compression="none" if first % 2 else "snappy")
        return path.read_bytes()
    if kind == "arrow":
        with pa.ipc.new_file(str(path), table.schema) as writer:
            writer.write_table(table, max_chunksize=20)
        return path.read_bytes()
    if kind == "csv":
        return ("id,key,text\n" + "".join(f'{r["id"]},{r["key"]},"{r["text"]}"\n' for r in rows)).encode()
    if kind == "text":
        return "".join(f"{r['id']} {r['key']} {r['text']}\n" for r in rows).encode()
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if kind == "jsonl.gz":
        return gzip.compress(data, mtime=0)
    if kind == "jsonl.zst":
        with pa.CompressedOutputStream(str(path), "zstd") as out:
            out.write(data)
        return path.read_bytes()
    return data


def truncate(rng: random.Random, data: bytes, donor: bytes) -> tuple[bytes, str]:
    cut = rng.randrange(1, len(data))
    return data[:cut], f"truncated at byte {cut} of {len(data)}"


def flip(rng: random.Random, data: bytes, donor: bytes) -> tuple[bytes, str]:
    at, bits = rng.randrange(len(data)), rng.randrange(1, 256)
    out = bytearray(data)
    out[at] ^= bits
    return bytes(out), f"byte {at} of {len(data)} xor {bits:#x}"


def flip_head(rng: random.Random, data: bytes, donor: bytes) -> tuple[bytes, str]:
    """A flipped byte among the first 64: magic numbers, headers, schemas."""
    at, bits = rng.randrange(min(64, len(data))), rng.randrange(1, 256)
    out = bytearray(data)
    out[at] ^= bits
    return bytes(out), f"byte {at} of {len(data)} xor {bits:#x}"


def splice(rng: random.Random, data: bytes, donor: bytes) -> tuple[bytes, str]:
    cut, join = rng.randrange(1, len(data)), rng.randrange(0, len(donor) - 1)
    return data[:cut] + donor[join:], f"bytes [0, {cut}) then the donor's from {join}"


MUTATIONS: dict[str, Callable[[random.Random, bytes, bytes], tuple[bytes, str]]] = {
    "truncate": truncate, "flip": flip, "flip_head": flip_head, "splice": splice,
}  # fmt: skip


def identity(kind: str, record: dict[str, Any]) -> tuple[Any, bool]:
    """``(id, whether the record's key matches it)``; a text line is ``"id key words"``."""
    if kind == "text":
        parts = record["text"].split(" ")
        if not (parts[0].isascii() and parts[0].isdigit()):
            return parts[0], False
        number = int(parts[0])
        return number, len(parts) > 1 and parts[1] == f"k{number:05d}"
    rid, key = record.get("id"), record.get("key")
    return rid, isinstance(rid, int) and key == f"k{rid:05d}"


def decompressed(kind: str, data: bytes) -> tuple[bytes, bool]:
    """The bytes a compressed shard decompresses to, up to where decompressing fails, and whether it ends well.

    A flipped byte inside compressed data may decompress without an error to other bytes (copies of earlier
    records, say): they are what the file holds, and the oracle reads them like any other line.
    """
    out = bytearray()
    if kind == "jsonl.gz":
        inflate = zlib.decompressobj(wbits=31)
        try:
            for i in range(0, len(data), 16):
                out += inflate.decompress(data[i : i + 16])
            return bytes(out), inflate.eof and not inflate.unused_data
        except zlib.error:
            return bytes(out), False
    stream = pa.CompressedInputStream(pa.BufferReader(data), "zstd")
    try:
        while piece := stream.read(16):
            out += piece
        return bytes(out), True
    except (OSError, pa.ArrowException):
        return bytes(out), False


def oracle(kind: str, data: bytes) -> tuple[list[Any], int]:
    """The ids Python finds in the records of a mutated JSON Lines or text shard, and how many are bad."""
    ids: list[Any] = []
    bad = 0
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for line in lines:
        if kind != "text" and not line.strip():
            continue  # blank lines are not records
        try:
            if kind == "text":
                text = (line[:-1] if line.endswith(b"\r") else line).decode("utf-8")
                ids.append(identity(kind, {"text": text})[0])
                continue
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError("not an object")
            ids.append(value.get("id"))
        except ValueError:
            bad += 1
    return ids, bad


def read(paths: list[Path], errors: str, **world: Any) -> tuple[list[dict[str, Any]], int]:
    ds = hr.open([str(p) for p in paths], errors=errors, chunk_bytes=300, block_rows=16)
    loader = hr.Loader(ds.batch(32), **world)
    rows = []
    for batch in loader:
        columns = {name: values.tolist() for name, values in batch.items()}
        rows += [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return rows, loader.skipped


def check_ranks(kind: str, paths: list[Path], mutated: Path, where: str) -> None:
    """Two ranks (each shard's records counted first, damaged or not): a headrace error naming the file, or
    the intact shard whole, and no record that was never written."""
    found = []
    try:
        for rank in (0, 1):
            found += [identity(kind, r) for r in read(paths, "skip", rank=rank, world_size=2, remainder="pad")[0]]
    except hr.HeadraceError as e:
        assert str(mutated) in str(e), f"{where}, two ranks: the error does not name the file: {e}"
        return
    good = {i for i, consistent in found if consistent}
    assert set(range(INTACT, INTACT + ROWS)) <= good, f"{where}, two ranks: the intact shard is not whole"
    if kind not in ORACLES:  # (a damaged compressed stream may decompress to copies of records)
        assert good <= {r["id"] for first in (MUTATED, INTACT, DONOR) for r in records(first)}, where


def check(kind: str, mutation: str, seed: int, tmp_path: Path) -> None:
    rng = random.Random(f"{kind}/{mutation}/{seed}")
    scratch = tmp_path / "build"
    scratch.mkdir(exist_ok=True)
    data, how = MUTATIONS[mutation](rng, shard_bytes(kind, MUTATED, scratch), shard_bytes(kind, DONOR, scratch))
    folder = tmp_path / f"{kind}-{mutation}-{seed}"
    folder.mkdir()
    place = seed % 2  # the mutated shard is read first or second
    mutated = folder / f"part-{place}{SUFFIXES[kind]}"
    mutated.write_bytes(data)
    (folder / f"part-{1 - place}{SUFFIXES[kind]}").write_bytes(shard_bytes(kind, INTACT, scratch))
    paths = sorted(folder.iterdir())
    where = f"{kind}, {how} (seed {seed}, mutated shard read {'first' if place == 0 else 'second'})"
    written = {r["id"] for first in (MUTATED, DONOR) for r in records(first)}
    intact = [r["id"] for r in records(INTACT)]
    check_ranks(kind, paths, mutated, where)
    for errors in ("raise", "skip"):
        try:
            rows, skipped = read(paths, errors)
        except hr.HeadraceError as e:
            assert str(mutated) in str(e), f"{where}, errors={errors}: the error does not name the file: {e}"
            continue
        found = [identity(kind, r) for r in rows]
        good = [i for i, consistent in found if consistent]
        assert [i for i in good if INTACT <= i < INTACT + ROWS] == intact, f"{where}: the intact shard is not whole"
        ids = [i for i, _ in found if not (isinstance(i, int) and INTACT <= i < INTACT + ROWS)]  # the mutated shard's
        if kind in ORACLES:  # exact: every record Python finds, in order, and every bad one counted
            plain, whole = decompressed(kind, data) if kind.startswith("jsonl.") else (data, True)
            want, bad = oracle(kind, plain)
            assert errors == "skip" or (bad == 0 and whole), f"{where}: a bad record or file passed errors='raise'"
            if whole:
                assert (ids, skipped) == (want, bad if errors == "skip" else 0), f"{where}, errors={errors}"
            else:  # what was read before decompressing failed, then the rest of the shard skipped and counted
                assert ids == want[: len(ids)], f"{where}: not the records the file decompresses to"
                assert 1 <= skipped <= bad + 1, f"{where}: {skipped} skipped, of {bad} bad lines and the file"
            continue
        assert len(good) == len(set(good)), f"{where}, errors={errors}: records delivered twice"
        assert set(good) - set(intact) <= written, f"{where}: records that were never written"
        present = {r["id"] for r in records(MUTATED)}
        if kind == "csv" and mutation == "truncate":  # only the rows written whole are in the file
            present = set(range(MUTATED, MUTATED + data.count(b"\n") - 1))
        lost = len(present - set(good))
        # a damaged quote in a CSV file makes one value of the rows up to the next quote: its newlines say how many
        corrupt = len(found) - len(good) + sum(str(r.get("text")).count("\n") for r in rows)
        if lost > corrupt and mutation != "splice":  # records gone that nothing stands for: counted?
            assert skipped >= 1 and errors == "skip", f"{where}, errors={errors}: {lost} records lost, none counted"


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("kind", sorted(SUFFIXES))
def test_mutated_shard_raises_naming_the_file_or_skips_exactly(tmp_path: Path, kind: str, mutation: str) -> None:
    for seed in SEEDS:
        check(kind, mutation, seed, tmp_path)
