"""What HF ``datasets`` users reach for, under HF's names: column_names, features, map(batch_size=...),
batch_format="python" for tokenizers, remove/select/rename columns, take/skip, train_test_split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from headrace.testing import check_resume

ROWS = 23


@pytest.fixture
def path(tmp_path: Path) -> str:
    """23 rows: id (int64), text (string), label (int32)."""
    table = pa.table({
        "id": pa.array(range(ROWS), pa.int64()),
        "text": [f"row {i}" for i in range(ROWS)],
        "label": pa.array([i % 3 for i in range(ROWS)], pa.int32()),
    })  # fmt: skip
    out = tmp_path / "rows.parquet"
    pq.write_table(table, out, row_group_size=10)
    return str(out)


def column(ds: hr.Dataset, name: str) -> list[Any]:
    return [row[name] for row in ds]


def test_column_names_and_features_follow_the_description(path: str) -> None:
    ds = hr.open(path)
    assert ds.column_names == ["id", "text", "label"]
    assert ds.features == {"id": pa.int64(), "text": pa.string(), "label": pa.int32()}
    kept = ds.shuffle(seed=1, buffer_size=8).filter(lambda r: r["id"] > 2).skip(1).take(5)
    assert kept.split({"a": 0.5, "b": 0.5})["a"].column_names == ["id", "text", "label"]
    renamed = ds.rename_column("text", "body").select_columns(["body", "id"])
    assert renamed.features == {"body": pa.string(), "id": pa.int64()}
    assert ds.remove_columns("label").column_names == ["id", "text"]
    assert ds.map(lambda r: {"n": 1}).column_names is None  # as HF: a map's output is known by running it
    assert ds.map(lambda r: {"n": 1}).features is None


def test_an_hf_dataset_gives_its_own_column_names_and_features() -> None:
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict({"a": [1, 2], "b": ["x", "y"]}).to_iterable_dataset()
    ds = hr.from_hf(hf)
    assert ds.column_names == ["a", "b"]
    assert ds.features == {"a": datasets.Value("int64"), "b": datasets.Value("string")}
    assert list(ds.rename_column("b", "c")) == [{"a": 1, "c": "x"}, {"a": 2, "c": "y"}]


def test_remove_select_and_rename_columns_give_exact_rows(path: str) -> None:
    ds = hr.open(path).take(2)
    assert list(ds.remove_columns(["text"])) == [{"id": 0, "label": 0}, {"id": 1, "label": 1}]
    assert [list(r) for r in ds.select_columns(["text", "id"])] == [["text", "id"]] * 2
    assert list(ds.select_columns("text")) == [{"text": "row 0"}, {"text": "row 1"}]
    assert list(ds.rename_column("text", "body")) == [
        {"id": 0, "body": "row 0", "label": 0}, {"id": 1, "body": "row 1", "label": 1},
    ]  # fmt: skip
    assert list(ds.rename_columns({"id": "label", "label": "id"}))[1] == {"label": 1, "text": "row 1", "id": 1}
    with pytest.raises(ValueError, match=r"no column\(s\) \['nope'\]; the columns are \['id', 'text', 'label'\]"):
        ds.remove_columns("nope")
    with pytest.raises(ValueError, match=r"a column is already named \['id'\]"):
        ds.rename_column("text", "id")
    after_map = ds.map(lambda r: {"n": 1}, remove_columns=["text"]).remove_columns("text")  # known only by running
    with pytest.raises(ValueError, match=r"no column\(s\) \['text'\] .*/rows\.parquet \(record 0\)"):
        list(after_map)


def test_column_stages_resume_exactly_and_stay_elastic(path: str) -> None:
    ds = hr.open(path, block_rows=4).rename_column("text", "body").select_columns(["body", "id"])
    report = check_resume(ds.shuffle(seed=2, buffer_size=6).batch(5))
    assert report.steps == 5
    assert hr.open(path).shuffle(buffer_size=None).remove_columns("text").batch(4).elastic() is None


def test_map_batch_size_calls_the_function_on_exactly_n_rows(path: str) -> None:
    ds = hr.open(path, block_rows=5)  # blocks of 5 rows: batches of 7 cross their boundaries

    def size(batch: dict[str, Any]) -> dict[str, Any]:
        return {"n": np.full(len(batch["id"]), len(batch["id"]))}

    assert column(ds.map(size, batched=True), "n") == [5] * 20 + [3] * 3
    sized = ds.map(size, batched=True, batch_size=7)
    assert column(sized, "n") == [7] * 21 + [2] * 2
    assert column(sized, "id") == list(range(ROWS))
    assert check_resume(sized.batch(3)).steps == 8
    firsts = ds.filter(lambda b: np.arange(len(b["id"])) == 0, batched=True, batch_size=10)
    assert column(firsts, "id") == [0, 10, 20]
    assert ds.map(size, batched=True, batch_size=7).describe()[1] == {"stage": "rebatch", "size": 7}
    with pytest.raises(ValueError, match="pass batched=True too"):
        ds.map(size, batch_size=7)
    with pytest.raises(ValueError, match="must be a positive integer"):
        ds.map(size, batched=True, batch_size=0)


def test_an_hf_tokenizer_in_a_batched_map(bert_dir: str, jsonl_dir: Path, corpus: pa.Table) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_dir)
    ds = hr.open(str(jsonl_dir)).take(50)
    numpy_in = ds.map(lambda b: tok(b["text"]), batched=True)  # numpy arrays: the tokenizer refuses them
    with pytest.raises(ValueError, match=r"batch_format='python'") as caught:
        list(numpy_in)
    message = str(caught.value)
    assert message.startswith("map(test_an_hf_tokenizer_in_a_batched_map.<locals>.<lambda>): text input must be")
    assert "text columns: ['doc', 'text']" in message

    def encode(batch: dict[str, Any]) -> Any:
        return tok(batch["text"], truncation=True, max_length=32)

    encoded = ds.map(encode, batched=True, batch_size=16, batch_format="python", remove_columns=ds.column_names)
    rows = list(encoded)
    want = tok(corpus.column("text").to_pylist()[:50], truncation=True, max_length=32)
    assert [list(r) for r in rows[:1]] == [["input_ids", "token_type_ids", "attention_mask"]]
    assert [r["input_ids"] for r in rows] == want["input_ids"]
    assert [r["attention_mask"] for r in rows] == want["attention_mask"]


def test_take_skip_and_train_test_split(path: str) -> None:
    ds = hr.open(path)
    assert column(ds.skip(3).take(4), "id") == [3, 4, 5, 6]
    parts = ds.train_test_split(test_size=0.3, seed=3)
    assert list(parts) == ["train", "test"]
    same = ds.split({"train": 0.7, "test": 0.3}, seed=3)
    train, test = column(parts["train"], "id"), column(parts["test"], "id")
    assert (train, test) == (column(same["train"], "id"), column(same["test"], "id"))
    assert sorted(train + test) == list(range(ROWS)) and 0 < len(test) < ROWS
    assert column(ds.train_test_split(train_size=0.7, seed=3)["test"], "id") == test
    default = ds.train_test_split(seed=3)
    assert column(default["test"], "id") == column(ds.split({"train": 0.75, "test": 0.25}, seed=3)["test"], "id")
    with pytest.raises(ValueError, match=r"give a proportion in \(0, 1\), e\.g\. 0\.1; for an exact number"):
        ds.train_test_split(test_size=10)
