"""decode_images() on Hugging Face's Image structs ({"bytes", "path"}), as ``datasets`` writes them to Parquet:
bytes decoded, path-only rows read from the dataset's folder, paths leading out of it refused (issue #15)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr

pytest.importorskip("PIL")
from PIL import Image

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Image()'s Arrow type


def pixels(seed: int, size: tuple[int, int] = (5, 7)) -> np.ndarray:
    """A small RGB image whose every pixel differs: ``[h, w, 3]`` uint8."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 31 + seed) % 256, (y * 47 + 3 * seed) % 256, (x * y + 7 * seed) % 256], -1).astype(np.uint8)


def encoded(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def decoded(data: bytes, mode: str = "RGB") -> np.ndarray:
    """What Pillow itself makes of ``data`` (for lossy JPEG: the exact pixels to expect)."""
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert(mode))
    return array[:, :, None] if array.ndim == 2 else array


def write(path: Path, cells: list[dict[str, object] | None], **extra: list[object]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array(cells, type=IMAGE), **extra}), path)
    return str(path)


def images(ds: hr.Dataset) -> list[np.ndarray]:
    return [row["image"] for row in ds]


def test_datasets_written_parquet_decodes_to_datasets_own_pixels(tmp_path: Path) -> None:
    """A Parquet file written by ``datasets`` itself: PIL images (stored as PNG bytes), JPEG bytes, and files given by
    path (stored as their absolute path, no bytes) decode exactly as ``datasets`` decodes them."""
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    (folder / "files").mkdir(parents=True)
    png, jpeg = pixels(1), encoded(pixels(2), "JPEG")
    on_disk = folder / "files" / "c.png"
    on_disk.write_bytes(encoded(pixels(3, (4, 6)), "PNG"))
    cells = [Image.fromarray(png), {"bytes": jpeg, "path": "b.jpg"}, str(on_disk)]
    hf = datasets.Dataset.from_dict({"image": cells, "label": [0, 1, 2]}).cast_column("image", datasets.Image())
    hf.to_parquet(str(folder / "train.parquet"))
    stored = pq.read_table(folder / "train.parquet").column("image").to_pylist()
    assert [c["bytes"] is None for c in stored] == [False, False, True] and stored[2]["path"] == str(on_disk)
    got = list(hr.open(str(folder / "train.parquet")).decode_images("image"))
    assert [r["label"] for r in got] == [0, 1, 2] and set(got[0]) == {"label", "image"}
    want = [np.asarray(datasets.Dataset.from_parquet(str(folder / "train.parquet"))[i]["image"]) for i in range(3)]
    for row, expected in zip(got, want, strict=True):
        assert row["image"].dtype == np.uint8 and np.array_equal(row["image"], expected)
    assert np.array_equal(got[0]["image"], png) and np.array_equal(got[2]["image"], pixels(3, (4, 6)))
    assert np.array_equal(got[1]["image"], decoded(jpeg))


def test_bytes_or_a_path_relative_to_the_shards_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(encoded(pixels(4), "PNG"))
    (folder / "shards" / "b.png").parent.mkdir()
    (folder / "shards" / "b.png").write_bytes(encoded(pixels(5), "PNG"))
    (folder / "more" / "c.png").parent.mkdir()
    (folder / "more" / "c.png").write_bytes(encoded(pixels(3), "PNG"))
    jpeg = encoded(pixels(6), "JPEG")
    shard = write(folder / "shards" / "part-0.parquet", [
        {"bytes": encoded(pixels(7), "PNG"), "path": "no-such-file.png"},  # bytes win: the path is only a name
        {"bytes": None, "path": "b.png"},  # beside the shard
        {"bytes": jpeg, "path": None},
        {"bytes": None, "path": str(folder / "shards" / "b.png")},  # absolute, inside the shard's folder
    ])  # fmt: skip
    other = write(folder / "more" / "part-1.parquet", [{"bytes": None, "path": "c.png"}])
    got = images(hr.open([shard, other]).decode_images("image"))
    want = [pixels(7), pixels(5), decoded(jpeg), pixels(5), pixels(3)]
    assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    grey = next(iter(hr.open([shard, other]).decode_images("image", mode="L", size=(5, 7)).batch(5)))["image"]
    assert grey.shape == (5, 5, 7, 1) and np.array_equal(grey[1], decoded(encoded(pixels(5), "PNG"), "L"))
    # each row's own shard's folder, not the folder the shards share: ../images is out of reach of both
    elsewhere = write(folder / "shards" / "part-2.parquet", [{"bytes": None, "path": "../images/a.png"}])
    with pytest.raises(hr.RecordError, match=r"part-2\.parquet \(record 0\): the file '../images/a.png' is outside "
                                             r"the dataset's folder .*/ds/shards;"):  # fmt: skip
        list(hr.open([elsewhere, other]).decode_images("image"))


def test_paths_leading_out_of_the_dataset_folder_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(encoded(pixels(8), "PNG"))  # a real image: refused for where it is, not for what it is
    folder = tmp_path / "ds"
    shard = write(folder / "train.parquet", [
        {"bytes": None, "path": "../secret.png"},
        {"bytes": None, "path": str(secret)},
        {"bytes": None, "path": "hf://datasets/someone/data/x.png"},
        {"bytes": None, "path": "missing.png"},
        {"bytes": None, "path": None},
        None,
    ])  # fmt: skip
    for row, message in enumerate([
        f"the file '../secret.png' is outside the dataset's folder {folder}; headrace reads image files named by path "
        "only inside it (pass decode_images(image_root=...) to read them from another folder, or embed the bytes)",
        f"the file '{secret}' is outside the dataset's folder {folder}",
        "the image has no bytes, only the URL 'hf://datasets/someone/data/x.png'; headrace reads image files only "
        f"inside the dataset's folder {folder}",
        "the image has no bytes and its file cannot be read (FileNotFoundError",
        "an image struct with neither bytes nor a path",
        "the sample has no such member",
    ]):  # fmt: skip
        with pytest.raises(hr.RecordError) as error:
            list(hr.open(shard).skip(row).take(1).decode_images("image"))
        assert f"train.parquet (record {row}): " in str(error.value) and message in str(error.value)
    loader = hr.Loader(hr.open(shard, errors="skip").decode_images("image").batch(2))
    assert list(loader) == [] and loader.skipped == 6
    assert "outside the dataset's folder" in loader.skipped_where[0]


def test_image_root_reads_files_kept_beside_the_data(tmp_path: Path) -> None:
    """``to_parquet`` from local files stores their absolute paths: image_root names the folder they are in."""
    files = tmp_path / "photos"
    files.mkdir()
    (files / "a.png").write_bytes(encoded(pixels(9), "PNG"))
    shard = write(tmp_path / "ds" / "train.parquet", [{"bytes": None, "path": str(files / "a.png")},
                                                      {"bytes": None, "path": "a.png"}])  # fmt: skip
    with pytest.raises(hr.RecordError, match="outside the dataset's folder"):
        list(hr.open(shard).decode_images("image"))
    ds = hr.open(shard).decode_images("image", image_root=str(files))
    got = images(ds)
    assert len(got) == 2 and all(np.array_equal(g, pixels(9)) for g in got)
    assert ds.describe()[-1]["image_root"] == str(files)
    assert "image_root" not in hr.open(shard).decode_images("image").describe()[-1]  # the fingerprint as before
    with pytest.raises(hr.RecordError, match=f"the file '../ds/train.parquet' is outside the dataset's folder {files}"):
        list(hr.open(write(tmp_path / "ds" / "evil.parquet", [{"bytes": None, "path": "../ds/train.parquet"}]))
             .decode_images("image", image_root=str(files)))  # fmt: skip
    with pytest.raises(ValueError, match=r"decode_images\(image_root=...\) must be a folder"):
        hr.open(shard).decode_images("image", image_root="")


def test_struct_images_resume_exactly_with_workers(tmp_path: Path) -> None:
    from headrace.testing import check_resume

    folder = tmp_path / "ds"
    (folder / "img").mkdir(parents=True)
    cells: list[dict[str, object] | None] = []
    for i in range(40):
        if i % 2:
            (folder / "img" / f"{i}.png").write_bytes(encoded(pixels(i), "PNG"))
            cells.append({"bytes": None, "path": f"img/{i}.png"})
        else:
            cells.append({"bytes": encoded(pixels(i), "PNG"), "path": f"{i}.png"})
    shard = write(folder / "train.parquet", cells, id=list(range(40)))
    ds = hr.open(shard, block_rows=6).shuffle(seed=1, buffer_size=12).decode_images("image").batch(4)
    batches = list(hr.Loader(ds, num_workers=2))
    assert sorted(int(i) for b in batches for i in b["id"]) == list(range(40))
    for batch in batches:
        assert all(np.array_equal(img, pixels(int(i))) for img, i in zip(batch["image"], batch["id"], strict=True))
    assert check_resume(ds, every=3, num_workers=2).steps == 10


def test_far_apart_shards_do_not_widen_the_folder_and_links_out_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(encoded(pixels(8), "PNG"))
    a = write(tmp_path / "one" / "deep" / "a.parquet", [{"bytes": None, "path": str(secret)}])
    b = write(tmp_path / "two" / "b.parquet", [{"bytes": None, "path": "link.png"}])
    (tmp_path / "two" / "link.png").symlink_to(secret)  # inside the folder, leading out of it
    for skip, name in ((0, "a.parquet"), (1, "b.parquet")):  # the shards' common folder holds secret.png: no matter
        with pytest.raises(hr.RecordError, match=f"{name} \\(record 0\\): the file '.*' is outside the dataset's"):
            list(hr.open([a, b]).skip(skip).take(1).decode_images("image"))
