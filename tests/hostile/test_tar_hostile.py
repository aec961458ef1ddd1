"""Hostile tar archives: crafted headers, escapes, long names, huge counts, and seeded byte-level mutation.

Every archive here is built byte by byte by the test (a header is a real ``tarfile`` header whose fields
are then overwritten, its checksum recomputed), after real, readable samples. Each case is read twice:
with ``errors="raise"`` it either reads through or raises a headrace error naming the shard, after
delivering the samples before the damage; with ``errors="skip"`` it delivers those same samples
exactly once and counts what it skipped. Never a hang (a test timeout), never a bare ``OverflowError``,
``MemoryError``, ``KeyError`` or ``tarfile`` error: anything that is not a :class:`HeadraceError`
fails the test.
"""

from __future__ import annotations

import gzip
import random
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import headrace as hr
from headrace.core.errors import HeadraceError, RecordError, SourceError

pytestmark = pytest.mark.timeout(60)

BLOCK = 512
END = bytes(2 * BLOCK)
GOOD = 10  # the readable samples before each crafted part


# -- building archives ---------------------------------------------------------------------------------------------


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def checksummed(buf: bytearray) -> bytes:
    """``buf`` (one header) with its checksum field recomputed, as tar writes it."""
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def header(
    name: str, size: int, kind: bytes = tarfile.REGTYPE, link: str = "", size_field: bytes | None = None
) -> bytes:
    """One ustar header; ``size_field`` (12 bytes) replaces the size tar would write."""
    info = tarfile.TarInfo(name if len(name) <= 100 else "x")
    info.size, info.type, info.linkname = size, kind, link
    buf = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    assert len(buf) == BLOCK
    if len(name) > 100:  # a raw long name field (tar would split it): only tests that want it pass one
        buf[0:100] = name.encode()[:100]
    if size_field is not None:
        assert len(size_field) == 12
        buf[124:136] = size_field
    return checksummed(buf)


def member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    return header(name, len(data), kind, link) + padded(data)


def record(key: str, value: str) -> bytes:
    """One pax record, ``"%d key=value\\n"``, its length counting its own digits."""
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def pax(records: dict[str, str] | bytes, kind: bytes = tarfile.XHDTYPE) -> bytes:
    raw = records if isinstance(records, bytes) else b"".join(record(k, v) for k, v in records.items())
    return member("././@PaxHeader", raw, kind)


def gnu_long(name: str, kind: bytes = tarfile.GNUTYPE_LONGNAME) -> bytes:
    return member("././@LongLink", name.encode() + b"\0", kind)


def base256(n: int) -> bytes:
    """GNU's base-256 number field: 0x80 and 11 bytes big-endian, or 0xff and the two's complement."""
    return b"\x80" + n.to_bytes(11, "big") if n >= 0 else b"\xff" + (n + 256**11).to_bytes(11, "big")


def payload(i: int) -> bytes:
    return random.Random(i).randbytes(100 + 37 * i)


def sample(i: int, prefix: str = "s") -> bytes:
    key = f"{prefix}{i:04d}"
    return (
        member(f"{key}.cls", str(i).encode())
        + member(f"{key}.txt", f"text {i}".encode())
        + member(f"{key}.bin", payload(i))
    )


def row(i: int, prefix: str = "s") -> dict[str, Any]:
    return {"__key__": f"{prefix}{i:04d}", "bin": payload(i), "cls": i, "txt": f"text {i}"}


def samples(indices: range) -> bytes:
    return b"".join(sample(i) for i in indices)


def keys(indices: range) -> list[str]:
    return [f"s{i:04d}" for i in indices]


def write(folder: Path, body: bytes, suffix: str = ".tar", name: str = "hostile") -> Path:
    path = folder / f"{name}{suffix}"
    if suffix == ".tar.gz":
        path.write_bytes(gzip.compress(body, mtime=0))
    elif suffix == ".tar.zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(body))
    else:
        path.write_bytes(body)
    return path


# -- reading -------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    rows: list[dict[str, Any]]
    error: HeadraceError | None = None
    skipped: int = 0
    where: list[str] = field(default_factory=list)


def read(path: Path, errors: str = "raise", **options: Any) -> Run:
    """The rows delivered and the headrace error that ended the read (any other exception fails the test)."""
    rows: list[dict[str, Any]] = []
    if errors == "raise":
        try:
            for r in hr.open(str(path), **options):
                rows.append(r)
        except HeadraceError as e:
            return Run(rows, e)
        return Run(rows)
    try:
        loader = hr.Loader(hr.open(str(path), errors=errors, **options).batch(3, batch_format="arrow"))
        for batch in loader:
            rows.extend(batch.to_pylist())
    except HeadraceError as e:
        return Run(rows, e)
    return Run(rows, None, loader.skipped, loader.skipped_where)


def key_list(run: Run) -> list[str]:
    return [r["__key__"] for r in run.rows]


def names_shard(error: HeadraceError | None, path: Path) -> bool:
    return error is not None and str(path) in str(error)


# -- crafted headers: sizes, pax records, checksums, truncation -----------------------------------------------------

NEXT = f"s{GOOD:04d}"
ONE = member(f"{NEXT}.cls", b"1")
CRAFTED: dict[str, Callable[[], bytes]] = {  # what follows the good samples: all of the rest of the archive
    "pax size 10**30": lambda: pax({"size": str(10**30)}) + ONE + END,
    "pax size of 5000 digits": lambda: pax({"size": "9" * 5000}) + ONE + END,
    "pax size negative": lambda: pax({"size": "-5"}) + ONE + END,
    "pax size not a number": lambda: pax({"size": "ten"}) + ONE + END,
    "pax size 2**62 on a binary member": lambda: pax({"size": str(2**62)}) + member(f"{NEXT}.bin", b"1") + END,
    "pax size then a GNU long name": lambda: (
        pax({"size": str(2**62)}) + gnu_long(f"{NEXT}.cls") + member("x.cls", b"1") + END
    ),
    "pax record length longer than the header": lambda: pax(b"99 size=1\n") + ONE + END,
    "pax record length zero": lambda: pax(b"0 size=1\n") + ONE + END,
    "pax record length of 30 digits": lambda: pax(b"9" * 30 + b" path=x.cls\n") + ONE + END,
    "pax record without '='": lambda: pax(b"11 nothing\n") + ONE + END,
    "pax record without a length": lambda: pax(b"path=x.cls\n") + ONE + END,
    "pax header size 2**62": lambda: (
        header("././@PaxHeader", 0, tarfile.XHDTYPE, size_field=base256(2**62)) + ONE + END
    ),
    "GNU long name size 2**62": lambda: (
        header("././@LongLink", 0, tarfile.GNUTYPE_LONGNAME, size_field=base256(2**62)) + ONE + END
    ),
    "GNU long name size 10**9": lambda: (
        header("././@LongLink", 0, tarfile.GNUTYPE_LONGNAME, size_field=b"%011o\0" % 10**9) + ONE + END
    ),
    "base-256 size 2**62": lambda: header(f"{NEXT}.cls", 0, size_field=base256(2**62)) + padded(b"1") + END,
    "base-256 size 256**11 - 1": lambda: header(f"{NEXT}.cls", 0, size_field=base256(256**11 - 1)) + END,
    "base-256 size 2**62 on a binary member": lambda: header(f"{NEXT}.bin", 0, size_field=base256(2**62)) + END,
    "base-256 negative size": lambda: header(f"{NEXT}.cls", 0, size_field=base256(-1)) + padded(b"1") + END,
    "base-256 most negative size": lambda: header(f"{NEXT}.cls", 0, size_field=base256(-(256**11) + 1)) + END,
    "octal size past the end": lambda: header(f"{NEXT}.cls", 0, size_field=b"77777777777\0") + padded(b"1") + END,
    "size field not octal": lambda: header(f"{NEXT}.cls", 0, size_field=b"0000000009\0\0") + padded(b"1") + END,
    "bad checksum": lambda: ONE[:148] + b"0000000\0" + ONE[156:] + END,
    "garbage header": lambda: b"\x93" * BLOCK + ONE + END,
    "header cut short": lambda: ONE[:300],
    "member cut short": lambda: header(f"{NEXT}.cls", 100) + b"12",
    "pax header then the end of the archive": lambda: pax({"path": f"{NEXT}.cls"}) + END,
    "pax header then the end of the data": lambda: pax({"path": f"{NEXT}.cls"}),
    "GNU long name cut short": lambda: header("././@LongLink", 300, tarfile.GNUTYPE_LONGNAME) + b"a" * 100,
}


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_headers_raise_naming_the_shard_after_every_good_sample(tmp_path: Path, case: str, suffix: str) -> None:
    path = write(tmp_path, samples(range(GOOD)) + CRAFTED[case](), suffix)
    raised = read(path)
    assert isinstance(raised.error, SourceError) and names_shard(raised.error, path), raised.error
    assert "corrupt tar data at byte" in str(raised.error) or "max_member_bytes" in str(raised.error)
    assert raised.rows == [row(i) for i in range(GOOD)]
    skipped = read(path, errors="skip")
    assert skipped.error is None and skipped.rows == raised.rows
    assert skipped.skipped == 1 and skipped.where[0].startswith(f"quarantined shard: {path}")
    unselected = read(path, columns=["__key__", "cls"])
    assert [r["__key__"] for r in unselected.rows] == keys(range(GOOD)) and names_shard(unselected.error, path)


@pytest.mark.parametrize("how", ["one pax header of 2 MiB", "300 pax headers of 4 KiB", "a GNU long name of 2 MiB"])
def test_extended_headers_over_a_mebibyte_make_their_member_a_record_error(tmp_path: Path, how: str) -> None:
    if how == "one pax header of 2 MiB":  # 2 MiB of distinct records: a dict of 200,000 keys if it were read
        headers = pax(b"".join(record(f"k{i}", "v") for i in range(200_000)))
    elif how == "300 pax headers of 4 KiB":
        headers = b"".join(pax({f"k{i}": "v" * 4000}) for i in range(300))
    else:
        headers = gnu_long("n" * (2 << 20) + ".cls")
    path = write(tmp_path, samples(range(3)) + headers + member("big.cls", b"1") + samples(range(3, 6)) + END)
    raised = read(path)
    assert isinstance(raised.error, RecordError) and names_shard(raised.error, path)
    assert "member 'big.cls' (byte" in str(raised.error) and "of over 1048576 bytes" in str(raised.error)
    assert key_list(raised) == keys(range(3))
    skipped = read(path, errors="skip")
    assert skipped.rows == [row(i) for i in range(6)] and skipped.skipped == 1


def test_damage_read_by_worker_processes_is_the_same_error_and_the_same_count(tmp_path: Path) -> None:
    write(tmp_path, samples(range(GOOD)) + END, name="a-good")
    bad = write(tmp_path, samples(range(GOOD, 2 * GOOD)) + CRAFTED["base-256 size 2**62"](), name="b-bad")
    ds = hr.open(str(tmp_path / "*.tar"), errors="skip").batch(4, batch_format="arrow")
    run = hr.Loader(ds, num_workers=2, worker_type="process")
    assert sorted(r["__key__"] for b in run for r in b.to_pylist()) == keys(range(2 * GOOD))
    assert run.skipped == 1 and run.skipped_where[0].startswith(f"quarantined shard: {bad}: corrupt tar data")
    with pytest.raises(SourceError, match=rf"{bad}: corrupt tar data at byte \d+: the data ends inside member"):
        list(hr.Loader(hr.open(str(tmp_path / "*.tar")).batch(4), num_workers=2, worker_type="process"))


def test_a_member_over_max_member_bytes_is_a_record_error_and_reading_goes_on(tmp_path: Path) -> None:
    body = samples(range(3)) + member("big.bin", b"\x01" * 5000) + member("big.cls", b"7") + samples(range(3, 6))
    path = write(tmp_path, body + END, ".tar.gz")
    options = {"format_options": {"max_member_bytes": 4096}}
    raised = read(path, **options)
    assert isinstance(raised.error, RecordError) and names_shard(raised.error, path)
    assert (
        "'big.bin'" in str(raised.error)
        and "5000 bytes" in str(raised.error)
        and "max_member_bytes" in str(raised.error)
    )
    assert key_list(raised) == keys(range(3))
    skipped = read(path, errors="skip", **options)
    assert skipped.rows == [row(i) for i in range(6)] and skipped.skipped == 1 and "'big.bin'" in skipped.where[0]
    assert key_list(read(path, columns=["__key__", "cls"], **options)) == [*keys(range(3)), "big", *keys(range(3, 6))]


def test_a_sample_whose_members_add_up_past_max_member_bytes_is_a_record_error(tmp_path: Path) -> None:
    many = b"".join(member(f"many.part{k}", bytes([k]) * 1000) for k in range(100))  # 100 kB in 1 kB members
    path = write(tmp_path, samples(range(3)) + many + samples(range(3, 6)) + END, ".tar.zst")
    options = {"format_options": {"max_member_bytes": 4096}}
    raised = read(path, **options)
    assert isinstance(raised.error, RecordError) and names_shard(raised.error, path)
    assert "member 'many.part4' (byte" in str(raised.error)
    assert "has 1000 bytes, over the 96 bytes its sample's other members leave of max_member_bytes=4096" in str(
        raised.error
    )
    assert key_list(raised) == keys(range(3))
    skipped = read(path, errors="skip", **options)
    assert key_list(skipped) == keys(range(6)) and skipped.skipped == 1
    few = read(path, columns=["__key__", "part0", "part99"], **options)  # the members not read take no room
    assert [r["__key__"] for r in few.rows] == [*keys(range(3)), "many", *keys(range(3, 6))] and few.error is None
    assert few.rows[3] == {"__key__": "many", "part0": b"\0" * 1000, "part99": b"\x63" * 1000}


@pytest.mark.parametrize("value", [0, -1, 1.5, "1 GiB", True])
def test_max_member_bytes_must_be_a_positive_integer(tmp_path: Path, value: Any) -> None:
    path = write(tmp_path, samples(range(2)) + END)
    with pytest.raises(ValueError, match=r"max_member_bytes must be a positive number of bytes"):
        hr.open(str(path), format_options={"max_member_bytes": value})


# -- members that could escape a directory -------------------------------------------------------------------------

ESCAPES: dict[str, tuple[Callable[[], bytes], str]] = {
    "dot-dot": (lambda: member("../../evil.txt", b"x"), "a name with a '..' component"),
    "dot-dot inside": (lambda: member("s0004/../../evil.txt", b"x"), "a name with a '..' component"),
    "backslash dot-dot": (lambda: member("..\\..\\evil.txt", b"x"), "a name with a '..' component"),
    "absolute": (lambda: member("/etc/evil.txt", b"x"), "an absolute name"),
    "drive letter": (lambda: member("C:/evil.txt", b"x"), "an absolute name"),
    "pax path dot-dot": (lambda: pax({"path": "../../evil.txt"}) + member("evil.txt", b"x"), "'..' component"),
    "pax path absolute": (lambda: pax({"path": "/tmp/evil.txt"}) + member("evil.txt", b"x"), "an absolute name"),
    "GNU long name dot-dot": (
        lambda: gnu_long("d" * 150 + "/../../../evil.txt") + member("evil.txt", b"x"),
        "'..' component",
    ),
    "symlink": (lambda: member("evil.txt", b"", tarfile.SYMTYPE, "/etc/passwd"), "a symbolic link (to '/etc/passwd')"),
    "pax linkpath": (
        lambda: pax({"linkpath": "../../../etc/shadow"}) + member("evil.txt", b"", tarfile.SYMTYPE, "x"),
        "a symbolic link (to '../../../etc/shadow')",
    ),
    "GNU long link": (
        lambda: gnu_long("/" + "e" * 200, tarfile.GNUTYPE_LONGLINK) + member("evil.txt", b"", tarfile.SYMTYPE, "x"),
        "a symbolic link (to '/eee",
    ),
    "hardlink": (lambda: member("evil.txt", b"", tarfile.LNKTYPE, "s0000.txt"), "a hard link"),
    "hardlink outside": (lambda: member("evil.txt", b"", tarfile.LNKTYPE, "../../etc/passwd"), "a hard link"),
    "device": (lambda: member("evil.txt", b"", tarfile.BLKTYPE), "a block device"),
    "fifo": (lambda: member("evil.txt", b"", tarfile.FIFOTYPE), "a FIFO"),
    "sparse": (lambda: member("evil.txt", b"x", tarfile.GNUTYPE_SPARSE), "a member of type 'S'"),
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_members_that_could_escape_are_refused_by_name_or_counted(tmp_path: Path, case: str) -> None:
    build, why = ESCAPES[case]
    path = write(tmp_path, samples(range(4)) + build() + samples(range(4, 8)) + END)
    before = sorted(p.name for p in tmp_path.iterdir())
    raised = read(path)
    assert isinstance(raised.error, RecordError) and names_shard(raised.error, path)
    assert why in str(raised.error) and "evil" in str(raised.error)
    assert key_list(raised) == keys(range(4))
    skipped = read(path, errors="skip")
    assert skipped.rows == [row(i) for i in range(8)] and skipped.skipped == 1 and why in skipped.where[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was extracted


# -- long names, zero-size members, many members ----------------------------------------------------------------


def test_long_names_from_gnu_and_pax_headers_are_the_keys(tmp_path: Path) -> None:
    long_dir = "/".join(["directory"] * 120)  # 1,199 characters
    body = samples(range(2))
    body += gnu_long(f"{long_dir}/a.cls") + member("ignored.cls", b"1")
    body += pax({"path": f"{long_dir}/b.txt"}) + member("ignored.txt", b"two")
    body += pax({"path": "ü" * 3000 + ".cls", "comment": "x" * 5000}) + member("ignored.cls", b"3")
    body += samples(range(2, 4))
    path = write(tmp_path, body + END)
    got = read(path)
    assert got.error is None
    assert key_list(got) == [*keys(range(2)), f"{long_dir}/a", f"{long_dir}/b", "ü" * 3000, *keys(range(2, 4))]
    assert [r.get("cls") for r in got.rows[2:5]] == [1, None, 3] and got.rows[3]["txt"] == "two"


def test_zero_size_members_are_empty_values_or_record_errors(tmp_path: Path) -> None:
    body = samples(range(2)) + member("empty.txt", b"") + member("empty.bin", b"") + member("README", b"")
    body += member("nolabel.cls", b"") + member("nojson.json", b"") + samples(range(2, 4))
    path = write(tmp_path, body + END)
    raised = read(path)
    assert isinstance(raised.error, RecordError) and "'nolabel.cls' is not a valid cls value" in str(raised.error)
    assert key_list(raised) == [*keys(range(2)), "empty"]
    skipped = read(path, errors="skip")
    assert key_list(skipped) == [*keys(range(2)), "empty", *keys(range(2, 4))]
    assert skipped.rows[2] == {"__key__": "empty", "bin": b"", "cls": None, "json": None, "txt": ""}
    assert skipped.skipped == 2 and "'nolabel.cls'" in skipped.where[0] and "'nojson.json'" in skipped.where[1]


def test_an_archive_of_only_end_blocks_or_directories_is_a_source_error_at_open(tmp_path: Path) -> None:
    for body in (END, member("dir", b"", tarfile.DIRTYPE) + member("README", b"x") + END, bytes(BLOCK)):
        path = write(tmp_path, body)
        with pytest.raises(SourceError, match=rf"{path}: no samples in the tar file"):
            hr.open(str(path), errors="skip")


def test_twenty_thousand_members_are_read_in_order(tmp_path: Path) -> None:
    n = 20_000
    path = write(tmp_path, b"".join(member(f"m{i:05d}.cls", str(i).encode()) for i in range(n)) + END)
    got = [int(k) for b in hr.Loader(hr.open(str(path)).batch(1000)) for k in b["cls"]]
    assert got == list(range(n))


def test_ten_thousand_extended_headers_before_one_member_are_folded_into_it(tmp_path: Path) -> None:
    body = samples(range(1)) + b"".join(pax({"comment": str(i)}) for i in range(10_000))
    body += pax({"path": "last.cls"}) + member("ignored.cls", b"9") + member("same.cls", b"1") * 5_000
    path = write(tmp_path, body + END)
    raised = read(path)
    assert key_list(raised) == [*keys(range(1)), "last"] and raised.rows[1]["cls"] == 9
    assert isinstance(raised.error, RecordError) and "repeats extension 'cls'" in str(raised.error)


# -- seeded byte-level mutation of a real shard --------------------------------------------------------------------

MUTATED_SAMPLES = 12


@dataclass(frozen=True)
class Base:
    data: bytes
    spans: list[tuple[int, int]]  # each sample's bytes, first header to last padding
    other: bytes  # another real shard (other keys), the source of splices


def base_shard() -> Base:
    """A real shard: ustar samples, one with a GNU long name and one with a pax path (checksum-free data)."""
    parts, spans, at = [], [], 0
    for i in range(MUTATED_SAMPLES):
        part = sample(i)
        if i == 4:
            part = gnu_long(f"s{i:04d}.cls") + member("x.cls", str(i).encode()) + part[BLOCK * 2 :]
        if i == 7:
            part = (
                pax({"path": f"s{i:04d}.txt"})
                + member("y.txt", f"text {i}".encode())
                + part[: BLOCK * 2]
                + part[BLOCK * 4 :]
            )
        parts.append(part)
        spans.append((at, at + len(part)))
        at += len(part)
    other = b"".join(sample(i, prefix="o") for i in range(MUTATED_SAMPLES)) + END
    return Base(b"".join(parts) + END, spans, other)


def mutate(base: Base, rng: random.Random) -> tuple[bytes, int, int]:
    """A truncation, byte flips or a splice of ``base``; (the bytes, the first and last+1 changed byte)."""
    data, n = bytearray(base.data), len(base.data)
    kind = rng.choice(["truncate", "flip", "flip", "splice", "aligned splice", "insert"])
    if kind == "truncate":
        cut = rng.randrange(1, n)
        return bytes(data[:cut]), cut, n
    if kind == "flip":
        where = sorted(rng.sample(range(n), rng.randint(1, 4)))
        for w in where:
            data[w] ^= rng.randrange(1, 256)
        return bytes(data), where[0], where[-1] + 1
    length = rng.randrange(1, 3 * BLOCK)
    if kind == "aligned splice":
        length = BLOCK * rng.randint(1, 6)
        src = BLOCK * rng.randrange(len(base.other) // BLOCK - 6)
        dst = BLOCK * rng.randrange(n // BLOCK - 6)
    else:
        src, dst = rng.randrange(len(base.other) - length), rng.randrange(n - length)
    piece = base.other[src : src + length]
    if kind == "insert":
        return bytes(data[:dst]) + piece + bytes(data[dst:]), dst, n + length
    data[dst : dst + length] = piece
    return bytes(data), dst, dst + length


BASE = base_shard()


@pytest.mark.parametrize("seed", range(80))
def test_mutated_shards_raise_naming_the_shard_or_deliver_the_good_samples_once(tmp_path: Path, seed: int) -> None:
    data, lo, hi = mutate(BASE, random.Random(seed))
    path = write(tmp_path, data)
    whole = [i for i, (_, end) in enumerate(BASE.spans) if end <= lo]  # samples wholly before the damage
    raised, skipped = read(path), read(path, errors="skip")
    assert raised.error is None or names_shard(raised.error, path), raised.error
    if skipped.error is not None:  # unreadable from its first sample: refused at open, naming the shard
        assert not whole and isinstance(skipped.error, SourceError) and names_shard(skipped.error, path)
        return
    assert skipped.rows[: len(whole)] == [row(i) for i in whole]
    untouched = {
        f"s{i:04d}" for i, (a, b) in enumerate(BASE.spans) if b <= lo or (a >= hi and len(data) == len(BASE.data))
    }
    got = [k for k in key_list(skipped) if k in untouched]
    assert len(set(got)) == len(got), got  # no sample twice (a damaged one may be cut in two)
    for r in skipped.rows:
        if r["__key__"] in untouched:  # delivered as it was written
            i = int(r["__key__"][1:])
            assert {k: r.get(k) for k in row(i)} == row(i)
    if raised.error is None:
        assert raised.rows == skipped.rows and skipped.skipped == 0
    else:
        assert skipped.skipped >= 1 and raised.rows == skipped.rows[: len(raised.rows)]
        assert all(str(path) in w for w in skipped.where)


@pytest.mark.parametrize("seed", range(20))
def test_mutated_compressed_shards_raise_naming_the_shard_or_deliver_samples_once(tmp_path: Path, seed: int) -> None:
    rng = random.Random(1000 + seed)
    packed = bytearray(gzip.compress(BASE.data, mtime=0))
    if rng.random() < 0.3:
        packed = packed[: rng.randrange(10, len(packed))]
    else:
        for w in rng.sample(range(10, len(packed)), rng.randint(1, 3)):
            packed[w] ^= rng.randrange(1, 256)
    path = tmp_path / "mutated.tar.gz"
    path.write_bytes(bytes(packed))
    raised, skipped = read(path), read(path, errors="skip")
    assert raised.error is None or names_shard(raised.error, path), raised.error
    if skipped.error is not None:
        assert isinstance(skipped.error, SourceError) and names_shard(skipped.error, path)
        return
    got = key_list(skipped)
    assert len(set(got)) == len(got)
    if raised.error is None:
        assert raised.rows == skipped.rows and skipped.skipped == 0
    else:
        assert skipped.skipped >= 1 and raised.rows == skipped.rows[: len(raised.rows)]
