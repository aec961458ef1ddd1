"""Tensors that work with the loss on the first try (issue #15, part 2): integer columns come out of every torch
path as int64, a nanoGPT-style loop runs on headrace batches without a cast, ``int_dtype=None`` keeps the compact
dtypes, and ``window(shift=0)`` gives the unshifted labels Hugging Face causal-LM models take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import headrace as hr  # noqa: E402
from headrace.integrations.torch import DevicePrefetcher, IterableDataset, row_tensors, to_tensors  # noqa: E402

V = 4096  # the bpe_path fixture's vocabulary
SEQ = 32


@pytest.fixture(scope="module")
def stream(parquet_dir: Path, bpe_path: str) -> np.ndarray:
    """The corpus' token stream as pack/window see it: each paragraph's ids then the end-of-text id, in order."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(bpe_path)
    eos = tok.token_to_id("<|endoftext|>")
    assert eos is not None
    texts = hr.open(str(parquet_dir), columns=["text"])
    return np.concatenate([np.array([*e.ids, eos]) for e in tok.encode_batch([r["text"] for r in texts])])


@pytest.fixture(scope="module")
def nanogpt_bin(tmp_path_factory: pytest.TempPathFactory, stream: np.ndarray) -> str:
    """The token stream as nanoGPT's prepare.py writes it: a flat uint16 ``train.bin``."""
    path = tmp_path_factory.mktemp("nanogpt") / "train.bin"
    stream.astype(np.uint16).tofile(path)
    return str(path)


def train(batches: Any, steps: int) -> list[tuple[Any, Any]]:
    """nanoGPT's loop, word for word where it touches the data: no cast anywhere."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(V, 16), torch.nn.Linear(16, V))  # ids [B, T] -> logits [B, T, V]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for step, batch in enumerate(batches):
        x, y = batch["input_ids"], batch["labels"]
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        seen.append((x, y))
        if step + 1 == steps:
            break
    return seen


def test_nanogpt_loop_on_the_view_under_a_dataloader_with_workers(parquet_dir: Path, bpe_path: str) -> None:
    ds = hr.open(str(parquet_dir), columns=["text"]).tokenize(bpe_path).window(SEQ).batch(8, drop_last=True)
    assert next(iter(hr.Loader(ds)))["input_ids"].dtype == np.int32  # numpy keeps the compact ids
    seen = train(DataLoader(IterableDataset(ds), batch_size=None, num_workers=2), steps=6)
    assert len(seen) == 6
    for x, y in seen:
        assert (x.dtype, y.dtype, tuple(x.shape), tuple(y.shape)) == (torch.int64, torch.int64, (8, SEQ), (8, SEQ))
        assert torch.equal(x[:, 1:], y[:, :-1])  # the labels are the next tokens


def test_nanogpt_loop_through_the_device_prefetcher_on_nanogpt_bin(nanogpt_bin: str, stream: np.ndarray) -> None:
    ds = hr.open(nanogpt_bin).shuffle(seed=3, buffer_size=None).window(SEQ).batch(4)
    assert next(iter(hr.Loader(ds)))["input_ids"].dtype == np.int32  # from a uint16 file
    seen = train(DevicePrefetcher(hr.Loader(ds), device="cpu"), steps=5)
    assert len(seen) == 5
    place = {tuple(stream[s : s + SEQ].tolist()): s for s in range(0, len(stream) - SEQ, SEQ)}
    for x, y in seen:
        assert (x.dtype, y.dtype, tuple(x.shape)) == (torch.int64, torch.int64, (4, SEQ))
        for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):  # each window is a place in the stream
            s = place[tuple(row_x)]
            assert stream[s + 1 : s + 1 + SEQ].tolist() == row_y


def test_window_rows_batched_by_the_dataloader_train_without_a_cast(parquet_dir: Path, bpe_path: str) -> None:
    ds = hr.open(str(parquet_dir), columns=["text"]).tokenize(bpe_path).window(SEQ)  # rows: no batch()
    seen = train(DataLoader(IterableDataset(ds), batch_size=16, num_workers=2, pin_memory=True), steps=4)
    assert [(tuple(x.shape), x.dtype, tuple(y.shape), y.dtype) for x, y in seen] == [
        ((16, SEQ), torch.int64, (16, SEQ), torch.int64)] * 4  # fmt: skip


def test_int_dtype_none_keeps_the_compact_dtypes_in_every_path(parquet_dir: Path, bpe_path: str) -> None:
    ds = hr.open(str(parquet_dir), columns=["text"]).tokenize(bpe_path).pack(SEQ, remainder="pad").batch(4)
    view = next(iter(IterableDataset(ds, int_dtype=None)))
    prefetched = next(iter(DevicePrefetcher(hr.Loader(ds), device="cpu", int_dtype=None)))
    for batch in (view, prefetched):
        assert (batch["input_ids"].dtype, batch["attention_mask"].dtype) == (torch.int32, torch.int8)
    widened = next(iter(IterableDataset(ds)))
    assert (widened["input_ids"].dtype, widened["attention_mask"].dtype) == (torch.int64, torch.int64)
    assert torch.equal(widened["input_ids"], view["input_ids"].long())
    assert next(iter(IterableDataset(ds, int_dtype=torch.int32)))["attention_mask"].dtype == torch.int32


def test_to_tensors_widens_integers_but_pixels_offsets_floats_and_strings() -> None:
    batch = {
        "input_ids": np.array([[1, 2]], dtype=np.int32),
        "labels": np.array([[2, -100]], dtype=np.int16),
        "tokens": np.array([[7]], dtype=np.uint16),
        "pixels": np.array([[[255]]], dtype=np.uint8),
        "cu_seqlens": np.array([[0, 2]], dtype=np.int32),
        "loss_mask": np.array([[0.5]], dtype=np.float32),
        "keep": np.array([True]),
        "text": np.array(["a b"], dtype=object),
    }
    out = to_tensors(batch)
    dtypes = {k: v.dtype for k, v in out.items() if isinstance(v, torch.Tensor)}
    assert dtypes == {"input_ids": torch.int64, "labels": torch.int64, "tokens": torch.int64, "pixels": torch.uint8,
                      "cu_seqlens": torch.int32, "loss_mask": torch.float32, "keep": torch.bool}  # fmt: skip
    assert out["labels"].tolist() == [[2, -100]] and out["tokens"].tolist() == [[7]] and out["text"] == ["a b"]
    assert {k: v.dtype for k, v in to_tensors(batch, int_dtype=None).items() if isinstance(v, torch.Tensor)} == {
        "input_ids": torch.int32, "labels": torch.int16, "tokens": torch.uint16, "pixels": torch.uint8,
        "cu_seqlens": torch.int32, "loss_mask": torch.float32, "keep": torch.bool}  # fmt: skip
    row = row_tensors({"input_ids": [3, 4], "cu_seqlens": [0, 2], "text": "x", "words": ["a"], "ragged": [[1], [2, 3]]})
    assert (row["input_ids"].dtype, row["cu_seqlens"].dtype) == (torch.int64, torch.int32)
    assert (row["text"], row["words"], row["ragged"]) == ("x", ["a"], [[1], [2, 3]])


def test_window_shift_0_on_token_shards_gives_labels_equal_to_the_ids(nanogpt_bin: str, stream: np.ndarray) -> None:
    ds = hr.open(nanogpt_bin).shuffle(seed=5, buffer_size=None).window(SEQ, shift=0).batch(8)
    windows = sorted(stream[s : s + SEQ].tolist() for s in range(0, len(stream) - SEQ + 1, SEQ))
    batches = list(IterableDataset(ds))
    for b in batches:
        assert torch.equal(b["labels"], b["input_ids"]) and b["labels"].data_ptr() != b["input_ids"].data_ptr()
    assert sorted(row for b in batches for row in b["input_ids"].tolist()) == windows  # every whole window, once


def test_window_shift_0_on_a_text_stream_gives_the_exact_ids_as_labels(
    parquet_dir: Path, bpe_path: str, stream: np.ndarray
) -> None:
    ds = hr.open(str(parquet_dir), columns=["text"]).tokenize(bpe_path).window(SEQ, shift=0).batch(4)
    first = next(iter(hr.Loader(ds)))
    expected = stream[: 4 * SEQ].reshape(4, SEQ)
    assert first["input_ids"].tolist() == expected.tolist()
    assert first["labels"].tolist() == expected.tolist()


def test_hf_causal_lm_on_window_shift_0_matches_the_shifted_loss(nanogpt_bin: str) -> None:
    """A GPT-2 (transformers) given ``window(shift=0)`` learns the next token: its loss is the cross-entropy of
    its own logits against the ids one place ahead, which ``window(shift=1)`` gives as labels."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=V, n_positions=SEQ, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    base = hr.open(nanogpt_bin).shuffle(seed=5, buffer_size=None)
    unshifted = next(iter(IterableDataset(base.window(SEQ, shift=0).batch(2))))
    shifted = next(iter(IterableDataset(base.window(SEQ - 1, stride=SEQ, shift=1).batch(2))))
    assert torch.equal(shifted["input_ids"], unshifted["input_ids"][:, :-1])
    assert torch.equal(shifted["labels"], unshifted["input_ids"][:, 1:])
    with torch.no_grad():
        out = model(input_ids=unshifted["input_ids"], labels=unshifted["labels"])
        mine = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), shifted["labels"].reshape(-1))
    assert torch.allclose(out.loss, mine)
