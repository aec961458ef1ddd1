"""pack() and window(): every token exactly once and in order, windows as defined, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import headrace as hr
from headrace.stages.bestfit import best_fit
from headrace.testing import check_resume


def token_docs(tmp_path: Path, docs: list[list[int]]) -> hr.Dataset:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"input_ids": d}) + "\n" for d in docs))
    return hr.open(str(path), block_rows=3)


def corpus_ids(corpus: pa.Table, bpe_path: str, n: int = 600) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(bpe_path)
    eos = tok.token_to_id("<|endoftext|>")
    return [[*e.ids, eos] for e in tok.encode_batch(corpus.column("text").to_pylist()[:n], add_special_tokens=False)]


def rows(ds: hr.Dataset, key: str = "input_ids") -> list[list[int]]:
    return [r for b in hr.Loader(ds) for r in b[key].tolist()]


def test_window_matches_the_definition(tmp_path: Path) -> None:
    ds = token_docs(tmp_path, [list(range(0, 5)), list(range(5, 12)), list(range(12, 30))])
    got = list(hr.Loader(ds.window(8, stride=8, shift=2).batch(1)))
    assert got[0]["input_ids"].tolist() == [list(range(0, 8))]
    assert got[0]["labels"].tolist() == [list(range(2, 10))]
    assert [b["input_ids"][0, 0] for b in got] == [0, 8, 16]  # the next window starts stride later
    overlapping = rows(ds.window(8, stride=3, shift=1).batch(4))
    assert overlapping == [list(range(s, s + 8)) for s in range(0, 30 - 8, 3)]


def test_pack_keeps_every_token_once_in_order(corpus: pa.Table, bpe_path: str, parquet_dir: Path) -> None:
    want = np.concatenate([np.asarray(d) for d in corpus_ids(corpus, bpe_path)])
    ds = hr.open(str(parquet_dir)).take(600).tokenize(bpe_path)
    packed = np.asarray(rows(ds.pack(128).batch(8)))
    assert packed.shape[1] == 128
    assert np.array_equal(packed.reshape(-1), want[: packed.size]) and len(want) - packed.size < 128
    padded = hr.Loader(ds.pack(128, remainder="pad", pad_id=-7).batch(1000))
    batch = next(iter(padded))
    flat = batch["input_ids"][batch["attention_mask"] == 1]
    assert np.array_equal(flat, want)  # nothing dropped
    assert (batch["input_ids"][batch["attention_mask"] == 0] == -7).all()


def test_document_mode_resets_positions_and_marks_segments(tmp_path: Path) -> None:
    docs = [list(range(100, 103)), list(range(200, 207)), list(range(300, 302)), list(range(400, 410))]
    ds = token_docs(tmp_path, docs).pack(8, mode="document")
    got = list(hr.Loader(ds.batch(1)))
    assert [b["input_ids"][0].tolist() for b in got] == [
        [100, 101, 102, 200, 201, 202, 203, 204],
        [205, 206, 300, 301, 400, 401, 402, 403],
    ]
    assert [b["position_ids"][0].tolist() for b in got] == [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 0, 1, 0, 1, 2, 3]]
    assert [b["segment_ids"][0].tolist() for b in got] == [[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2, 2, 2]]
    assert [b["cu_seqlens"][0].tolist() for b in got] == [[0, 3, 8], [0, 2, 4, 8]]
    padded = next(iter(hr.Loader(ds.batch(2, pad="longest", pad_value={"cu_seqlens": -1}))))
    assert padded["cu_seqlens"].tolist() == [[0, 3, 8, -1], [0, 2, 4, 8]]


def test_shift_none_draws_one_proper_divisor_per_batch(corpus: pa.Table, bpe_path: str, parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).take(300).tokenize(bpe_path).window(12, shift=None, batch_size=4, seed=3)
    batches = list(hr.Loader(ds.batch(4)))
    shifts = [int(b["shift"][0]) for b in batches]
    assert all((b["shift"] == b["shift"][0]).all() for b in batches)
    assert set(shifts) <= {1, 2, 3, 4, 6} and len(set(shifts)) > 2
    stream = np.concatenate([np.asarray(d) for d in corpus_ids(corpus, bpe_path, 300)])
    pos = 0
    for b, shift in zip(batches, shifts, strict=True):
        for x, y in zip(b["input_ids"], b["labels"], strict=True):
            assert np.array_equal(x, stream[pos : pos + 12])
            assert np.array_equal(y, stream[pos + shift : pos + shift + 12])
            pos += 12
    again = [int(b["shift"][0]) for b in hr.Loader(ds.batch(4))]
    assert again == shifts


def test_bestfit_packs_whole_documents_each_once(corpus: pa.Table, bpe_path: str, parquet_dir: Path) -> None:
    docs = [d for d in corpus_ids(corpus, bpe_path) if len(d) <= 256]
    by_len: dict[tuple[int, ...], int] = {}
    for d in docs:
        by_len[tuple(d)] = by_len.get(tuple(d), 0) + 1
    ds = hr.open(str(parquet_dir)).take(600).tokenize(bpe_path).filter(lambda r: len(r["input_ids"]) <= 256)
    found: dict[tuple[int, ...], int] = {}
    batches = list(hr.Loader(ds.pack(256, mode="bestfit", buffer=200).batch(16)))
    for b in batches:
        for ids, seg, mask in zip(b["input_ids"], b["segment_ids"], b["attention_mask"], strict=True):
            for s in range(seg.max() + 1):
                doc = tuple(ids[seg == s].tolist())
                found[doc] = found.get(doc, 0) + 1
            assert (mask == (seg >= 0)).all()
    assert found == by_len  # every document exactly once, never split
    used = sum(int(b["attention_mask"].sum()) for b in batches)
    assert used / sum(b["attention_mask"].size for b in batches) > 0.9  # best-fit packs tightly


def test_best_fit_bins_fit() -> None:
    lengths = np.random.default_rng(0).integers(1, 100, size=500)
    bins = best_fit(lengths, 100)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(lengths[b].sum() <= 100 for b in bins)


def test_bestfit_truncates_oversize_documents_and_says_so(tmp_path: Path) -> None:
    ds = token_docs(tmp_path, [list(range(10)), [7, 8], list(range(20, 25))]).pack(6, mode="bestfit")
    with pytest.warns(UserWarning, match="1 document\\(s\\) longer than seq_len=6 truncated"):
        got = rows(ds.batch(8))
    assert got == [[0, 1, 2, 3, 4, 5], [20, 21, 22, 23, 24, 0], [7, 8, 0, 0, 0, 0]]


@pytest.mark.filterwarnings("ignore:pack\\(mode='bestfit'\\)")
@pytest.mark.parametrize(
    "make",
    [
        lambda ds: ds.pack(64),
        lambda ds: ds.pack(64, mode="document"),
        lambda ds: ds.pack(50, remainder="pad"),
        lambda ds: ds.window(32, stride=20, shift=2),
        lambda ds: ds.window(16, shift=None, batch_size=4),
        lambda ds: ds.pack(200, mode="bestfit", buffer=64),
    ],
    ids=["concat", "document", "pad", "window", "dynamic-shift", "bestfit"],
)
def test_token_pipelines_resume_exactly(make: object, bpe_path: str, jsonl_dir: Path) -> None:
    ds = hr.open(str(jsonl_dir), block_rows=40).take(500).tokenize(bpe_path)
    out = make(ds)  # type: ignore[operator]
    check_resume(out.batch(4, pad="longest", pad_value={"cu_seqlens": -1}), every=7, num_workers=2)


def test_pack_without_tokens_is_a_clear_error(parquet_dir: Path) -> None:
    with pytest.raises(hr.SchemaError, match="tokenize\\(\\) first"):
        list(hr.open(str(parquet_dir)).pack(16).batch(2))
    with pytest.raises(ValueError, match="batch_size"):
        hr.open(str(parquet_dir)).window(16, shift=None)
