"""WebDataset-style tar shards and the image stages, on real images: scikit-learn's handwritten digits.

The fixtures write the 1,797 real 8x8 digit scans, upscaled to 16x16 grey PNGs, into tar shards
(``digit-NNNN.png``, ``.cls``, ``.json`` per sample). The tests pin: rows and keys in order, typed by
extension; exact resume (shuffled, augmented, on a rank, with worker processes, gzipped) that
reads from the stored byte; the same rows over HTTP; augmentations that are a pure function of
(seed, epoch, lineage); unsafe members (``..``, absolute names, links, devices) rejected by name or
counted and skipped with nothing written anywhere; corrupt tar data and a corrupt image as clear
errors.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace.core.errors import RecordError, SourceError
from headrace.core.policy import ErrorLog, SkippedRecordWarning
from headrace.formats.base import ReadOptions, Start
from headrace.formats.tar import TarFormat
from headrace.testing import check_resume
from servers import Store

pytest.importorskip("PIL")
sklearn_datasets = pytest.importorskip("sklearn.datasets")
pytestmark = pytest.mark.timeout(120)

SHARDS = 3
PER_SHARD = 120
SIDE = 16
CHUNK = 16 << 10  # small pieces: several resume points per shard


def digit_png(i: int) -> tuple[bytes, np.ndarray]:
    """Digit ``i`` upscaled to SIDE x SIDE as PNG bytes, and the pixels the PNG holds."""
    from PIL import Image

    pixels = (DIGITS.images[i] * (255 / 16)).round().astype(np.uint8)
    image = Image.fromarray(pixels, mode="L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), np.asarray(image)


DIGITS = sklearn_datasets.load_digits()


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname = len(data), kind, link
    tar.addfile(info, io.BytesIO(data) if data else None)


def add_sample(tar: tarfile.TarFile, i: int, png: bytes | None = None) -> None:
    add(tar, f"digit-{i:04d}.png", png if png is not None else digit_png(i)[0])
    add(tar, f"digit-{i:04d}.cls", str(DIGITS.target[i]).encode())
    add(tar, f"digit-{i:04d}.json", json.dumps({"index": i, "source": "sklearn digits"}).encode())


def write_shard(path: Path, indices: range | list[int], tar_format: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w", format=tar_format) as tar:
        for i in indices:
            add_sample(tar, i)
    return path


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("digits-tar")
    for k in range(SHARDS):
        write_shard(folder / f"train-{k:04d}.tar", range(k * PER_SHARD, (k + 1) * PER_SHARD))
    return folder


def keys(n: int = SHARDS * PER_SHARD) -> list[str]:
    return [f"digit-{i:04d}" for i in range(n)]


def rows_of(ds: hr.Dataset, **loader: Any) -> tuple[list[dict[str, Any]], hr.Loader]:
    run = hr.Loader(ds, **loader)
    rows = [row for batch in run for row in _rows(batch)]
    return rows, run


def _rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    names = list(batch)
    for values in zip(*(batch[n] for n in names), strict=True):
        yield dict(zip(names, values, strict=True))


# -- reading -------------------------------------------------------------------------------------------------------


def test_rows_are_the_samples_in_order_typed_by_extension(digits_dir: Path) -> None:
    ds = hr.open(str(digits_dir / "*.tar"), chunk_bytes=CHUNK)
    assert ds.schema.names == ["__key__", "cls", "json", "png"]
    assert [str(t) for t in ds.schema.types] == ["string", "int64", "string", "binary"]
    rows = list(ds)
    assert [r["__key__"] for r in rows] == keys()
    assert [r["cls"] for r in rows] == DIGITS.target[: len(rows)].tolist()
    assert [json.loads(r["json"])["index"] for r in rows] == list(range(len(rows)))
    assert [r["png"] for r in rows[:5]] == [digit_png(i)[0] for i in range(5)]


def test_decoded_images_are_the_pixels_written(digits_dir: Path) -> None:
    batch = next(iter(hr.open(str(digits_dir / "train-0000.tar")).decode_images("png", mode="L").batch(8)))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, SIDE, SIDE, 1)
    assert "png" not in batch  # remove_column=True: the bytes are dropped once decoded
    for i in range(8):
        assert np.array_equal(batch["image"][i, :, :, 0], digit_png(i)[1])
    rgb = next(iter(hr.open(str(digits_dir / "train-0000.tar")).decode_images("png", size=(8, 12)).batch(4)))
    assert rgb["image"].shape == (4, 8, 12, 3)


def test_columns_projection_reads_only_those_members(digits_dir: Path) -> None:
    rows = list(hr.open(str(digits_dir / "train-0001.tar"), columns=["__key__", "cls"]))
    assert rows[0] == {"__key__": f"digit-{PER_SHARD:04d}", "cls": int(DIGITS.target[PER_SHARD])}
    assert len(rows) == PER_SHARD


def test_gzipped_and_gnu_long_name_shards_read_the_same(tmp_path: Path) -> None:
    plain = write_shard(tmp_path / "a.tar", range(40))
    with open(plain, "rb") as f, gzip.open(tmp_path / "a.tar.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    long_dir = "x" * 120  # names over 100 bytes: pax "path" records, and GNU long-name headers
    for fmt, name in ((tarfile.PAX_FORMAT, "pax"), (tarfile.GNU_FORMAT, "gnu")):
        with tarfile.open(tmp_path / f"{name}.tar", "w", format=fmt) as tar:
            for i in range(3):
                add(tar, f"{long_dir}/digit-{i:04d}.cls", str(DIGITS.target[i]).encode())
        assert [r["__key__"] for r in hr.open(str(tmp_path / f"{name}.tar"))] == [
            f"{long_dir}/digit-{i:04d}" for i in range(3)
        ]
    want = [r["__key__"] for r in hr.open(str(plain))]
    assert [r["__key__"] for r in hr.open(str(tmp_path / "a.tar.gz"))] == want == keys(40)
    check_resume(hr.open(str(tmp_path / "a.tar.gz"), chunk_bytes=CHUNK).batch(16))


def test_ranks_read_contiguous_halves_of_all_samples(digits_dir: Path) -> None:
    ds = hr.open(str(digits_dir / "*.tar"), columns=["__key__"]).batch(10)
    got = []
    for rank in range(2):
        run = hr.Loader(ds, rank=rank, world_size=2)
        got.append([k for b in run for k in b["__key__"].tolist()])
    assert got[0] + got[1] == keys()


# -- exact resume --------------------------------------------------------------------------------------------------


def test_resume_is_exact(digits_dir: Path) -> None:
    ds = hr.open(str(digits_dir / "*.tar"), chunk_bytes=CHUNK, block_rows=64)
    assert check_resume(ds.batch(32)).steps == SHARDS * PER_SHARD // 32 + 1
    check_resume(ds.shuffle(seed=3, buffer_size=100).batch(32, drop_last=True))
    check_resume(ds.shuffle(seed=3, buffer_size=100).batch(32), world=hr.World(rank=1, world_size=2))


def test_resume_is_exact_with_decode_and_augment_on_worker_processes(digits_dir: Path) -> None:
    ds = (
        hr.open(str(digits_dir / "*.tar"), chunk_bytes=CHUNK, block_rows=64)
        .shuffle(seed=5, buffer_size=150)
        .decode_images("png", mode="L")
        .augment(random_crop=14, padding=1, flip=True, seed=9)
        .batch(32)
    )
    check_resume(ds, every=2)
    check_resume(ds, num_workers=2, worker_type="process", every=4)


def test_a_piece_restarts_at_its_byte_without_reading_what_is_before(digits_dir: Path, tmp_path: Path) -> None:
    shard = digits_dir / "train-0000.tar"
    ds = hr.open(str(shard), chunk_bytes=CHUNK)
    src = ds.source
    fmt = TarFormat()
    pieces = list(fmt.pieces(src.fs, src.shards[0], src.opts, Start(), 0, ErrorLog()))
    assert len(pieces) > 3 and pieces[2].start.byte > 0
    damaged = tmp_path / "damaged.tar"  # everything before the third piece overwritten with garbage
    data = bytearray(shard.read_bytes())
    data[: pieces[2].start.byte] = b"\xff" * pieces[2].start.byte
    damaged.write_bytes(bytes(data))
    src2 = hr.open(str(damaged), format="tar", schema=ds.schema, chunk_bytes=CHUNK).source
    again = list(fmt.pieces(src2.fs, src2.shards[0], src2.opts, pieces[2].start, pieces[2].start.slot, ErrorLog()))
    assert [p.start for p in again] == [p.start for p in pieces[2:]]
    assert all(a.batch.equals(b.batch) for a, b in zip(again, pieces[2:], strict=True))


# -- augmentation --------------------------------------------------------------------------------------------------


def augmented(ds: hr.Dataset, epoch: int = 0, **loader: Any) -> dict[str, np.ndarray]:
    run = hr.Loader(ds.batch(50), **loader)
    run.set_epoch(epoch)
    return {k: img for b in run for k, img in zip(b["__key__"].tolist(), b["image"], strict=True)}


def test_augmentation_is_a_function_of_seed_epoch_and_lineage(digits_dir: Path) -> None:
    base = hr.open(str(digits_dir / "*.tar"), block_rows=40)

    def pipeline(ds: hr.Dataset, seed: int = 1) -> hr.Dataset:
        return ds.decode_images("png", mode="L").augment(random_crop=(12, 12), padding=2, seed=seed)

    plain = augmented(pipeline(base))
    assert all(img.shape == (12, 12, 1) for img in plain.values())
    assert plain.keys() == set(keys())
    # the stage's position is part of the key (two augment stages draw apart), so compare equal pipelines
    shuffled = augmented(pipeline(base.shuffle(seed=7, buffer_size=200)))
    reshuffled = augmented(pipeline(base.shuffle(seed=8, buffer_size=30)), num_workers=2)
    assert all(np.array_equal(shuffled[k], reshuffled[k]) for k in plain)  # whatever the order or workers
    with_workers = augmented(pipeline(base), num_workers=2)
    assert all(np.array_equal(plain[k], with_workers[k]) for k in plain)
    next_epoch = augmented(pipeline(base), epoch=1)
    other_seed = augmented(pipeline(base, seed=2))
    assert sum(np.array_equal(plain[k], next_epoch[k]) for k in plain) < len(plain) // 2
    assert sum(np.array_equal(plain[k], other_seed[k]) for k in plain) < len(plain) // 2
    # the crops are of the zero-padded image: a crop offset (dy, dx) reproduces one window of it
    image = next(iter(base.decode_images("png", mode="L").batch(1)))["image"][0]
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = [padded[y : y + 12, x : x + 12] for y in range(9) for x in range(9)]
    assert any(np.array_equal(plain["digit-0000"], w) for w in windows)


def test_flip_mirrors_about_half_of_the_images(digits_dir: Path) -> None:
    base = hr.open(str(digits_dir / "*.tar")).decode_images("png", mode="L")
    plain = augmented(base)
    flipped = augmented(base.augment(flip=True, seed=4))
    mirrored = sum(np.array_equal(flipped[k], plain[k][:, ::-1]) and not np.array_equal(plain[k], plain[k][:, ::-1])
                   for k in plain)  # fmt: skip
    assert 0.4 < mirrored / len(plain) < 0.6


def test_augment_and_decode_options_are_checked(digits_dir: Path) -> None:
    ds = hr.open(str(digits_dir / "train-0000.tar"))
    with pytest.raises(ValueError, match="random_crop"):
        ds.augment(padding=2, flip=True)
    with pytest.raises(ValueError, match="mode"):
        ds.decode_images("png", mode="CMYK")
    with pytest.raises(ValueError, match="padding_mode"):
        ds.augment(random_crop=8, padding_mode="wrap")
    too_big = ds.decode_images("png", mode="L").augment(random_crop=40)
    with pytest.raises(ValueError, match=r"train-0000\.tar \(record 0\).*random_crop=\(40, 40\)"):
        list(too_big.batch(8))


# -- unsafe members ------------------------------------------------------------------------------------------------

UNSAFE = {
    "traversal": ("../../evil-traversal.png", tarfile.REGTYPE, "", "a name with a '..' component"),
    "absolute": ("/tmp/evil-absolute.png", tarfile.REGTYPE, "", "an absolute name"),
    "symlink": ("evil-symlink.png", tarfile.SYMTYPE, "/etc/passwd", "a symbolic link (to '/etc/passwd')"),
    "hardlink": ("evil-hardlink.png", tarfile.LNKTYPE, "digit-0000.png", "a hard link"),
    "device": ("evil-device.png", tarfile.CHRTYPE, "", "a character device"),
    "fifo": ("evil-fifo", tarfile.FIFOTYPE, "", "a FIFO"),
}


def write_with_unsafe(path: Path, names: list[str]) -> Path:
    """Samples 0..9 with one unsafe member after sample 3 for each of ``names``, in order."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(10):
            add_sample(tar, i)
            if i == 3:
                for name in names:
                    member, kind, link, _ = UNSAFE[name]
                    add(tar, member, b"\x89PNG evil" if kind == tarfile.REGTYPE else b"", kind, link)
    raw = path.read_bytes()
    assert b"../../evil-traversal" in raw or "traversal" not in names
    assert b"/tmp/evil-absolute" in raw or "absolute" not in names  # the name is stored as written
    return path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", list(UNSAFE))
def test_an_unsafe_member_is_a_clear_error_naming_the_shard_and_member(tmp_path: Path, name: str) -> None:
    shard = write_with_unsafe(tmp_path / "unsafe.tar", [name])
    member, _, _, why = UNSAFE[name]
    with pytest.raises(RecordError) as info:
        list(hr.open(str(shard)))
    message = str(info.value)
    assert str(shard) in message and repr(member) in message and why in message and "errors='skip'" in message


def test_unsafe_members_are_counted_skips_and_nothing_is_written(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    shard = write_with_unsafe(folder / "unsafe.tar", list(UNSAFE))
    before, cwd_before = files_under(tmp_path), set(os.listdir("."))
    ds = hr.open(str(shard), errors="skip").decode_images("png", mode="L").batch(4)
    rows, run = rows_of(ds)
    assert [r["__key__"] for r in rows] == keys(10)
    assert run.skipped == len(UNSAFE)
    assert len(run.skipped_where) == len(UNSAFE)
    assert all(repr(UNSAFE[n][0]) in w for n, w in zip(UNSAFE, run.skipped_where, strict=True))
    assert files_under(tmp_path) == before and set(os.listdir(".")) == cwd_before
    assert not Path("/tmp/evil-absolute.png").exists() and not (tmp_path.parent / "evil-traversal.png").exists()
    check_resume(hr.open(str(shard), errors="skip", block_rows=3).batch(2))


def test_unsafe_members_over_http_with_a_disk_cache_write_only_cache_entries(http_store: Store, tmp_path: Path) -> None:
    local = write_with_unsafe(tmp_path / "unsafe.tar", list(UNSAFE))
    url = http_store.put(local, "tar-unsafe/unsafe.tar")
    cache = tmp_path / "cache"
    before = files_under(tmp_path)
    run = hr.Loader(hr.open(url, errors="skip", cache_dir=cache).batch(4))
    assert [k for b in run for k in b["__key__"].tolist()] == keys(10)
    assert run.skipped == len(UNSAFE)
    written = files_under(tmp_path) - before
    assert written and all(w.startswith("cache") for w in written)
    assert not any("evil" in w for w in written)


# -- remote --------------------------------------------------------------------------------------------------------


def test_shards_over_http_read_and_resume_as_local_ones(http_store: Store, digits_dir: Path) -> None:
    http_store.put(digits_dir, "digits-tar")
    local = hr.open(str(digits_dir / "*.tar"), chunk_bytes=CHUNK).decode_images("png", mode="L").batch(40)
    remote = hr.open(http_store.url("digits-tar/*.tar"), chunk_bytes=CHUNK).decode_images("png", mode="L").batch(40)
    got, want = list(hr.Loader(remote)), list(hr.Loader(local))
    assert len(got) == len(want) == SHARDS * PER_SHARD // 40
    for g, w in zip(got, want, strict=True):
        assert g["__key__"].tolist() == w["__key__"].tolist() and np.array_equal(g["image"], w["image"])
    check_resume(remote, every=3)


# -- corrupt data --------------------------------------------------------------------------------------------------


def test_a_corrupt_header_is_a_source_error_naming_the_shard_and_byte(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "bad.tar", range(20))
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        member_offsets = [m.offset for m in tar.getmembers()]
    at = member_offsets[30]  # the header of sample 10's first member
    data[at : at + 16] = b"garbage garbage!"
    shard.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=rf"bad\.tar: corrupt tar data at byte {at}: not a valid tar header"):
        list(hr.open(str(shard)))
    delivered = []
    with pytest.raises(SourceError, match=rf"bad\.tar: corrupt tar data at byte {at}"):
        delivered.extend(r["__key__"] for r in hr.open(str(shard)))
    assert delivered == keys(10)  # every member of samples 0-9 is whole: the damage is in sample 10's header
    rows, run = rows_of(hr.open(str(shard), errors="skip").batch(5))  # samples 0-9, then the shard is quarantined
    assert [r["__key__"] for r in rows] == keys(10)
    assert run.skipped == 1 and "quarantined shard" in run.skipped_where[0]


def test_a_member_cut_short_loses_only_its_own_sample(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "cut.tar", range(12))
    with tarfile.open(shard) as tar:
        json_member = tar.getmember("digit-0009.json")  # sample 9's last member, cut inside its data
    shard.write_bytes(shard.read_bytes()[: json_member.offset_data + 10])
    delivered = []
    with pytest.raises(SourceError, match=r"cut\.tar: corrupt tar data at byte \d+: the data ends inside member "
                                          r"'digit-0009\.json'"):  # fmt: skip
        delivered.extend(r["__key__"] for r in hr.open(str(shard)))
    assert delivered == keys(9)
    rows, run = rows_of(hr.open(str(shard), errors="skip").batch(4))
    assert [r["__key__"] for r in rows] == keys(9)
    assert run.skipped == 1 and f"quarantined shard: {shard}" in run.skipped_where[0]


def crafted_header(name: str, size_field: bytes) -> bytes:
    """A ustar header for ``name`` whose size field is ``size_field`` (12 bytes), its checksum recomputed."""
    info = tarfile.TarInfo(name)
    buf = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    buf[124:136] = size_field
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def pax_size_header(size: int) -> bytes:
    """A pax extended header holding one record, ``size=<size>``."""
    body = f" size={size}\n".encode()
    n = len(body) + len(str(len(body) + 2))
    records = str(n).encode() + body
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(records)
    return info.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
@pytest.mark.parametrize("crafted", ["pax size 10**30", "base-256 size 2**62"])
def test_a_crafted_member_size_is_a_source_error_after_every_good_sample(
    tmp_path: Path, crafted: str, suffix: str
) -> None:
    good = write_shard(tmp_path / "good.tar", range(10)).read_bytes()
    end = len(good.rstrip(b"\0"))
    end += -end % 512  # the end-of-archive blocks (and the record padding) dropped
    if crafted == "pax size 10**30":
        tail = pax_size_header(10**30) + crafted_header("digit-0010.png", b"%011o\0" % 1) + b"\x89" * 512
    else:
        tail = crafted_header("digit-0010.png", b"\x80" + (2**62).to_bytes(11, "big")) + b"\x89" * 512
    data = good[:end] + tail + bytes(1024)
    shard = tmp_path / f"crafted{suffix}"
    shard.write_bytes(gzip.compress(data) if suffix == ".tar.gz" else data)
    delivered = []
    with pytest.raises(SourceError, match=rf"crafted\.tar(\.gz)?: corrupt tar data at byte {end}\b.*'digit-0010\.png'"):
        delivered.extend(r["__key__"] for r in hr.open(str(shard)))
    assert delivered == keys(10)
    rows, run = rows_of(hr.open(str(shard), errors="skip").batch(4))
    assert [r["__key__"] for r in rows] == keys(10)
    assert run.skipped == 1 and f"quarantined shard: {shard}" in run.skipped_where[0]


def test_a_truncated_shard_is_a_source_error(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "cut.tar", range(5))
    shard.write_bytes(shard.read_bytes()[: 512 * 7 + 100])
    with pytest.raises(SourceError, match=r"cut\.tar: corrupt tar data at byte \d+: the data ends inside"):
        list(hr.open(str(shard)))


def test_a_corrupt_image_is_a_record_error_naming_shard_and_key_or_a_counted_skip(tmp_path: Path) -> None:
    shard = tmp_path / "images.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(12):
            add_sample(tar, i, png=digit_png(i)[0][:40] if i == 7 else None)  # sample 7: a PNG cut short
    with pytest.raises(RecordError) as info:
        list(hr.open(str(shard)).decode_images("png").batch(4))
    message = str(info.value)
    assert f"{shard} (record 7)" in message and "'digit-0007'" in message and "column 'png'" in message
    ds = hr.open(str(shard), errors="skip", block_rows=5).decode_images("png", mode="L").batch(4)
    rows, run = rows_of(ds)
    assert [r["__key__"] for r in rows] == [k for k in keys(12) if k != "digit-0007"]
    assert run.skipped == 1 and "'digit-0007'" in run.skipped_where[0]
    check_resume(ds)
    with pytest.warns(SkippedRecordWarning, match="digit-0007"):
        list(hr.open(str(shard)).decode_images("png", errors="warn").batch(4))


def test_malformed_labels_json_and_repeated_extensions_are_record_errors(tmp_path: Path) -> None:
    shard = tmp_path / "values.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(6):
            add_sample(tar, i)
            if i == 1:
                add(tar, "bad-label.cls", b"seven")
            if i == 2:
                add(tar, "bad-json.cls", b"1")
                add(tar, "bad-json.json", b"{not json")
            if i == 3:
                add(tar, "twice.cls", b"1")
                add(tar, "twice.cls", b"2")
    with pytest.raises(RecordError, match=r"values\.tar: sample 'bad-label': member 'bad-label\.cls' is not a valid"):
        list(hr.open(str(shard)))
    rows, run = rows_of(hr.open(str(shard), errors="skip").batch(3))
    assert [r["__key__"] for r in rows] == keys(6)
    assert run.skipped == 3
    assert "repeats extension 'cls'" in run.skipped_where[2]


def test_directories_metadata_and_files_without_extension_are_ignored(tmp_path: Path) -> None:
    shard = tmp_path / "extra.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "__meta__.json", b"{}")
        add(tar, "README", b"digits")
        add(tar, "train", kind=tarfile.DIRTYPE)
        for i in range(3):
            add(tar, f"train/digit-{i:04d}.cls", str(DIGITS.target[i]).encode())
    assert [r["__key__"] for r in hr.open(str(shard))] == [f"train/digit-{i:04d}" for i in range(3)]
    src = hr.open(str(shard)).source
    assert TarFormat().count(src.fs, src.shards[0], ReadOptions()) == 3


# -- member sizes --------------------------------------------------------------------------------------------------

GIB = 1 << 30
BIG_MEMBER_JOB = """
import json, sys
import pyarrow as pa
import headrace as hr
path, columns = sys.argv[1], json.loads(sys.argv[2])
schema = pa.schema([("__key__", pa.string()), ("bin", pa.binary()), ("cls", pa.int64())])  # one pass less
run = hr.Loader(hr.open(path, columns=columns, schema=schema, errors="skip").batch(4, batch_format="arrow"))
rows = [{k: len(v) if isinstance(v, bytes) else v for k, v in r.items()} for b in run for r in b.to_pylist()]
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(json.dumps({"rows": rows, "skipped": run.skipped, "where": run.skipped_where,
                  "peak": int(status.split()[0]) * 1024}))
"""


def tar_member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.USTAR_FORMAT)


def write_gigabyte_member_shard(path: Path) -> None:
    """Samples 0-5 (``.cls``) around sample ``big`` (``.cls`` and a 1 GiB ``.bin`` of zeros), zstd-compressed
    as it is written: neither the member nor the archive is ever held in memory (the file is ~40 KB)."""
    import pyarrow as pa

    zeros = bytes(1 << 20)
    with pa.CompressedOutputStream(str(path), "zstd") as out:
        for key in ["s0", "s1", "s2", "big", "s3", "s4", "s5"]:
            label = str(len(key)).encode()
            out.write(tar_member(f"{key}.cls", len(label)) + label + bytes(512 - len(label)))
            if key == "big":
                out.write(tar_member("big.bin", GIB))
                for _ in range(GIB // len(zeros)):
                    out.write(zeros)
        out.write(bytes(1024))


def stream_in_a_subprocess(path: Path, columns: list[str] | None) -> dict[str, Any]:
    """Read ``path`` with ``errors="skip"`` in a fresh process; its rows, skips and peak memory (VmHWM, as
    tests/test_memory.py measures it)."""
    run = subprocess.run([sys.executable, "-c", BIG_MEMBER_JOB, str(path), json.dumps(columns)],
                         capture_output=True, text=True, timeout=240)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_a_gigabyte_member_is_never_held_in_memory(tmp_path: Path) -> None:
    shard = tmp_path / "big.tar.zst"
    write_gigabyte_member_shard(shard)
    assert shard.stat().st_size < 1 << 20
    labels = [{"__key__": k, "cls": len(k)} for k in ["s0", "s1", "s2", "big", "s3", "s4", "s5"]]
    unselected = stream_in_a_subprocess(shard, ["__key__", "cls"])  # the 1 GiB member is skipped, not read
    assert unselected["rows"] == labels and unselected["skipped"] == 0
    selected = stream_in_a_subprocess(shard, None)  # over the default max_member_bytes: a counted skip
    assert selected["rows"] == [{**r, "bin": None} for r in labels if r["__key__"] != "big"]
    assert selected["skipped"] == 1
    where = selected["where"][0]
    assert where.startswith(f"{shard}: sample 'big': member 'big.bin'") and f"{GIB} bytes" in where
    assert "max_member_bytes" in where
    for peak in (unselected["peak"], selected["peak"]):
        assert peak < GIB // 4, peak  # the interpreter, numpy, pyarrow and 1 MiB reads: never the member
