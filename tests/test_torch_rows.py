"""The rows view under ``DataLoader(batch_size=16, num_workers=2, pin_memory=True)`` (issue #15, part 2): rows are
tensors, so ``default_collate`` stacks them into ``[16, seq_len]``; every worker packs its own part of the records,
and the windows are exactly those of each part's token stream, nothing else dropped."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import headrace as hr  # noqa: E402
from headrace.core.world import World  # noqa: E402
from headrace.integrations.torch import IterableDataset  # noqa: E402

N = 5000  # records in the parquet_dir fixture, ids 0..4999 in file order
SEQ = 64


@pytest.fixture(scope="module")
def record_ids(parquet_dir: Path, bpe_path: str) -> list[list[int]]:
    """Each record's ids as tokenize() gives them (its tokens, then the end-of-text id), in record order."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(bpe_path)
    eos = tok.token_to_id("<|endoftext|>")
    assert eos is not None
    texts = [r["text"] for r in hr.open(str(parquet_dir), columns=["text"])]
    return [[*e.ids, eos] for e in tok.encode_batch(texts)]


def packed(records: list[list[int]]) -> list[list[int]]:
    """The windows of these records' token stream cut every SEQ tokens, the final partial one left out."""
    stream = np.array([t for r in records for t in r])
    whole = len(stream) // SEQ
    return stream[: whole * SEQ].reshape(whole, SEQ).tolist()


def interleaved(parts: list[list[list[int]]], batch: int) -> list[list[list[int]]]:
    """What a DataLoader hands out: each worker's rows in batches of ``batch``, one batch from each worker in turn."""
    batched = [[p[i : i + batch] for i in range(0, len(p), batch)] for p in parts]
    return [b[k] for k in range(max(map(len, batched))) for b in batched if k < len(b)]


@pytest.mark.parametrize("workers", [2, 3])
def test_seed_style_dataloader_gives_stacked_tensors_and_every_window_of_each_part(
    parquet_dir: Path, bpe_path: str, record_ids: list[list[int]], workers: int
) -> None:
    ds = hr.open(str(parquet_dir), columns=["text"]).tokenize(bpe_path).pack(SEQ)  # rows: no batch()
    batches = list(DataLoader(IterableDataset(ds), batch_size=16, num_workers=workers, pin_memory=True))
    assert all(isinstance(b["input_ids"], torch.Tensor) and b["input_ids"].dtype == torch.int64 for b in batches)
    cuts = [N * w // workers for w in range(workers + 1)]  # the records split between the workers, none left out
    parts = [packed(record_ids[cuts[w] : cuts[w + 1]]) for w in range(workers)]
    assert [b["input_ids"].tolist() for b in batches] == interleaved(parts, 16)
    assert [tuple(b["input_ids"].shape) for b in batches] == [(len(b), SEQ) for b in interleaved(parts, 16)]
    assert [tuple(b["input_ids"].shape) for b in batches[: 2 * workers]] == [(16, SEQ)] * (2 * workers)
    # Against one process: the first part's windows are its first windows; no other window is dropped than each
    # part's final partial one, so the counts differ by less than one a part.
    single = packed(record_ids)
    assert parts[0] == single[: len(parts[0])]
    tails = sum(sum(map(len, record_ids[cuts[w] : cuts[w + 1]])) % SEQ for w in range(workers))
    assert sum(map(len, parts)) * SEQ == len(single) * SEQ + sum(map(len, record_ids)) % SEQ - tails


def test_two_workers_lose_no_window_of_a_whole_split(parquet_dir: Path, bpe_path: str) -> None:
    """With an even split and the same windows per worker as its own headrace Loader: the union over the workers is
    exactly the union of the workers' parts, as a multiset (nothing dropped at the worker boundary)."""
    ds = hr.open(str(parquet_dir), columns=["text"]).tokenize(bpe_path).window(SEQ)
    batches = DataLoader(IterableDataset(ds), batch_size=16, num_workers=2)
    got = [tuple(r) for b in batches for r in b["labels"].tolist()]
    mine = [hr.Loader(ds, world=World(worker=w, num_workers=2), uneven="off") for w in range(2)]
    assert Counter(got) == Counter(tuple(r["labels"]) for loader in mine for r in loader)


def test_rows_of_whole_documents_are_tensors_of_their_own_length(parquet_dir: Path, bpe_path: str) -> None:
    ds = hr.open(str(parquet_dir), columns=["id", "text"]).take(3).tokenize(bpe_path)
    rows = list(IterableDataset(ds))
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert all(isinstance(r["input_ids"], torch.Tensor) and r["input_ids"].dtype == torch.int64 for r in rows)
    assert len({len(r["input_ids"]) for r in rows}) > 1  # one tensor per document, its own length
