"""transformers.Trainer: a headrace stream as train_dataset, checkpointed and resumed exactly (tiny GPT-2, CPU)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import headrace as hr  # noqa: E402
from headrace.integrations.transformers import STATE_KEY, TrainerDataset, for_eval, for_trainer  # noqa: E402
from trainer_job import SEQ, RecordingTrainer, collate, losses, model  # noqa: E402  (tests/ is on sys.path)
from trainer_job import trainer as configured_trainer  # noqa: E402

BATCH = 4


def lm_rows(parquet_dir: Path, bpe_path: str) -> hr.Dataset:
    """Rows of 32 tokens: the documents end to end."""
    return hr.open(str(parquet_dir), columns=["text"]).tokenize(bpe_path).pack(SEQ)


def trainer(ds: hr.Dataset, out: Path, max_steps: int, **options: Any) -> RecordingTrainer:
    """A Trainer set up by the callback alone: ``for_trainer(ds)``, then ``Trainer(callbacks=[callback])``."""
    train_dataset, callback = for_trainer(ds)
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=BATCH, learning_rate=1e-3,
        logging_steps=1, save_strategy="steps", save_steps=options.pop("save_steps", max_steps), report_to=[],
        use_cpu=True, seed=0, disable_tqdm=True, **options,
    )  # fmt: skip
    return RecordingTrainer(model=model(), args=args, train_dataset=train_dataset, data_collator=collate,
                            callbacks=[callback])  # fmt: skip


def test_trains_on_the_first_rows_of_the_stream_in_order(parquet_dir: Path, bpe_path: str, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(bpe_path).get_vocab_size() == 4096  # what model() is built for
    ds = lm_rows(parquet_dir, bpe_path)
    t = trainer(ds, tmp_path, max_steps=5)
    t.train()
    assert t.state.global_step == 5
    expected = [list(row["input_ids"]) for row in itertools.islice(hr.Loader(ds), 5 * BATCH)]
    assert [row for batch in t.trained for row in batch] == expected


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_trains_on_exactly_the_batches_of_the_uninterrupted_run(
    parquet_dir: Path, bpe_path: str, tmp_path: Path, accumulation: int
) -> None:
    ds = lm_rows(parquet_dir, bpe_path)
    a = trainer(ds, tmp_path / "a", max_steps=12, save_steps=6, gradient_accumulation_steps=accumulation)
    a.train()
    assert sorted(os.listdir(tmp_path / "a")) == ["checkpoint-12", "checkpoint-6"]
    b = trainer(ds, tmp_path / "b", max_steps=12, save_steps=6, gradient_accumulation_steps=accumulation)
    b.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-6"))
    half = 6 * accumulation
    assert b.trained == a.trained[half:]
    got, want = losses(b), losses(a)
    assert [got[s] for s in range(7, 13)] == [want[s] for s in range(7, 13)]  # same data, same dropout masks
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    saved = json.loads((tmp_path / "a" / "checkpoint-6" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"][STATE_KEY]["step"] == 6


@pytest.mark.parametrize("rows", [10, 12])  # 12: checkpoint-3 falls right after the last row of epoch 0
def test_the_stream_goes_on_into_the_next_epoch_and_resumes_across_it(
    parquet_dir: Path, bpe_path: str, tmp_path: Path, rows: int
) -> None:
    text = hr.open(str(parquet_dir), columns=["text"]).shuffle(seed=3, buffer_size=64)  # each epoch its own order
    ds = text.tokenize(bpe_path).pack(SEQ).take(rows)
    a = trainer(ds, tmp_path / "a", max_steps=8, save_steps=3)
    a.train()
    loader, epochs = hr.Loader(ds), []
    while len(epochs) < 8 * BATCH:
        epochs += [list(row["input_ids"]) for row in loader]
    assert [row for batch in a.trained for row in batch] == epochs[: 8 * BATCH]
    assert epochs[:rows] != epochs[rows : 2 * rows]
    b = trainer(ds, tmp_path / "b", max_steps=8, save_steps=3)
    b.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert b.trained == a.trained[3:]
    assert b.state.stateful_callbacks[STATE_KEY]["ranks"][0]["epoch"] == 8 * BATCH // rows


def test_dataloader_workers_become_headrace_threads_same_rows_exact_resume(
    parquet_dir: Path, bpe_path: str, tmp_path: Path
) -> None:
    ds = lm_rows(parquet_dir, bpe_path)
    a = trainer(ds, tmp_path / "a", max_steps=6, save_steps=3)
    a.train()
    workers = {"dataloader_num_workers": 2, "dataloader_prefetch_factor": 4, "dataloader_pin_memory": True}
    w = trainer(ds, tmp_path / "w", max_steps=6, save_steps=3, **workers)
    assert (w.args.dataloader_num_workers, w.args.dataloader_prefetch_factor) == (0, None)  # the DataLoader's
    assert (w.train_dataset.threads, w.train_dataset.prefetch) == (2, 4 * 2 * BATCH)  # become headrace's
    w.train()
    assert w.train_dataset.loader.num_workers == 2
    assert w.trained == a.trained and losses(w) == losses(a)  # the rows never depend on the worker count
    b = trainer(ds, tmp_path / "b", max_steps=6, **workers)  # a checkpoint made without workers, resumed with
    b.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert b.trained == a.trained[3:]
    assert [losses(b)[s] for s in (4, 5, 6)] == [losses(a)[s] for s in (4, 5, 6)]


def test_evaluation_ends_repeats_its_rows_and_leaves_training_as_without_it(
    parquet_dir: Path, bpe_path: str, tmp_path: Path
) -> None:
    ds = lm_rows(parquet_dir, bpe_path)
    evaluation = ds.take(6)
    every2 = {"eval_strategy": "steps", "eval_steps": 2, "save_steps": 3}
    e = configured_trainer(ds, str(tmp_path / "e"), 6, eval_ds=evaluation, **every2)
    e.train()
    rows = [list(row["input_ids"]) for row in hr.Loader(evaluation)]
    assert len(rows) == 6
    assert e.evaluated == [[rows[:4], rows[4:]]] * 3  # 3 evaluations, each the same 6 rows in batches of 4, ended
    n = configured_trainer(ds, str(tmp_path / "n"), 6, save_steps=3)  # no evaluation
    n.train()
    assert e.trained == n.trained and losses(e) == losses(n)  # same rows, and the same dropout masks
    r = configured_trainer(ds, str(tmp_path / "r"), 6, eval_ds=evaluation, **every2)
    r.train(resume_from_checkpoint=str(tmp_path / "e" / "checkpoint-3"))
    assert r.trained == e.trained[3:] and r.evaluated == [[rows[:4], rows[4:]]] * 2  # at steps 4 and 6
    assert [losses(r)[s] for s in (4, 5, 6)] == [losses(n)[s] for s in (4, 5, 6)]


def test_a_training_stream_as_eval_dataset_is_refused_saying_what_to_do(
    parquet_dir: Path, bpe_path: str, tmp_path: Path
) -> None:
    ds = lm_rows(parquet_dir, bpe_path)
    endless, _ = for_trainer(ds.take(8))  # its callback is not the Trainer's: it would never end
    t = trainer(ds, tmp_path / "a", max_steps=2)
    with pytest.raises(ValueError, match=r"iterated before training began.*for eval_dataset use for_eval\(ds\)"):
        t.evaluate(eval_dataset=endless)
    train_dataset, callback = for_trainer(ds)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "b"), max_steps=2, eval_strategy="steps",
                                          eval_steps=1, report_to=[], use_cpu=True)  # fmt: skip
    same = transformers.Trainer(model(), args, train_dataset=train_dataset, eval_dataset=train_dataset,
                                data_collator=collate, callbacks=[callback])  # fmt: skip  # the stream trained on
    with pytest.raises(ValueError, match=r"already being iterated.*for_eval\(ds\)"):
        same.train()


def test_a_training_stream_has_no_len_and_says_what_to_count(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir), columns=["id"])
    train_dataset, _ = for_trainer(ds)
    with pytest.raises(TypeError, match=r"no len\(\).*max_steps × per_device_train_batch_size"):
        len(train_dataset)
    assert not transformers.trainer_utils.has_length(train_dataset)  # the Trainer asks, and goes by max_steps
    assert len(for_eval(ds.take(5))) == 5  # an evaluation set has a length: one pass counts it


def test_the_trainer_must_not_skip_batches_itself(parquet_dir: Path, bpe_path: str, tmp_path: Path) -> None:
    train_dataset, callback = for_trainer(lm_rows(parquet_dir, bpe_path))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    t = transformers.Trainer(model=model(), args=args, train_dataset=train_dataset, data_collator=collate)
    t.add_callback(callback)  # after __init__: the callback could not set ignore_data_skip
    with pytest.raises(ValueError, match="ignore_data_skip=True"):
        t.train()


def test_the_callback_must_belong_to_the_train_dataset(parquet_dir: Path, bpe_path: str, tmp_path: Path) -> None:
    ds = lm_rows(parquet_dir, bpe_path)
    (other, _), (_, callback) = for_trainer(ds), for_trainer(ds)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    t = transformers.Trainer(model(), args, train_dataset=other, data_collator=collate, callbacks=[callback])
    with pytest.raises(ValueError, match="not this callback's stream"):
        t.train()


def test_a_checkpoint_without_a_data_position_is_refused(parquet_dir: Path, bpe_path: str, tmp_path: Path) -> None:
    ds = lm_rows(parquet_dir, bpe_path)
    trainer(ds, tmp_path / "a", max_steps=2).train()
    path = tmp_path / "a" / "checkpoint-2" / "trainer_state.json"
    saved = json.loads(path.read_text())
    del saved["stateful_callbacks"][STATE_KEY]  # as a Trainer without HeadraceCallback saves it
    path.write_text(json.dumps(saved))
    with pytest.raises(hr.StateError, match="checkpoint of step 2 has no headrace data position"):
        trainer(ds, tmp_path / "b", max_steps=4).train(resume_from_checkpoint=str(path.parent))


def test_a_batched_dataset_is_refused(parquet_dir: Path) -> None:
    with pytest.raises(ValueError, match="remove the batch"):
        for_trainer(hr.open(str(parquet_dir)).batch(4))


def test_a_state_after_the_last_row_of_an_epoch_leads_into_the_next(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir), columns=["id"]).take(5)
    stream = TrainerDataset(ds)
    stream.restart()
    rows = iter(stream)
    assert [next(rows)["id"] for _ in range(6)] == [0, 1, 2, 3, 4, 0]
    again = TrainerDataset(ds)
    again.restart(stream.state_at(5))  # taken before the loader knew the epoch was over
    assert [row["id"] for row in itertools.islice(again, 3)] == [0, 1, 2]
    assert again.loader.epoch == 1


def test_an_empty_dataset_ends_the_stream(parquet_dir: Path) -> None:
    stream = TrainerDataset(hr.open(str(parquet_dir), columns=["id"]).take(0))
    stream.restart()
    assert list(stream) == []


def test_trainer_rows_keep_image_pixels_uint8(tmp_path: Path) -> None:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    path = tmp_path / "images.parquet"
    ids = pa.array([[5, 6], [7, 8]], pa.list_(pa.int32()))
    pq.write_table(
        pa.table({"png": [png.getvalue()] * 2, "input_ids": ids, "label": pa.array([3, 4], pa.int32())}), path
    )
    stream, _ = for_trainer(hr.open(str(path)).decode_images("png"))
    stream.restart()  # what the callback does when training begins
    for row in (next(iter(stream)), next(iter(for_eval(hr.open(str(path)).decode_images("png"))))):
        assert row["image"].dtype == torch.uint8 and row["image"].tolist() == pixels.tolist()  # 1 byte a pixel
        assert row["input_ids"] == [5, 6] and row["label"] == 3  # lists and numbers: the collator makes tensors
