"""A transformers.Trainer job on headrace streams, for the Trainer tests: run in the test process, or on several
ranks under ``python -m torch.distributed.run --nproc_per_node=N tests/trainer_job.py CONFIG.json`` (gloo, CPU).

It trains a tiny GPT-2 (1 layer, 32 wide, dropout on) and writes, per run and rank, ``OUT/NAME.RANK.json``: the
input_ids of every micro-batch trained on (not those the DataLoader read ahead), of every evaluation batch,
the logged losses and the data position saved in the last checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import transformers

import headrace as hr
from headrace.integrations.transformers import for_eval, for_trainer

SEQ = 32


class RecordingTrainer(transformers.Trainer):
    """Keeps the input_ids of every micro-batch it trains on, and of every evaluation batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trained: list[list[list[int]]] = []
        self.evaluated: list[list[list[int]]] = []  # one list of batches per evaluation

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.trained.append(inputs["input_ids"].tolist())
        return super().training_step(model, inputs, *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self.evaluated.append([])
        return super().evaluate(*args, **kwargs)

    def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.evaluated[-1].append(inputs["input_ids"].tolist())
        return super().prediction_step(model, inputs, *args, **kwargs)


def pipeline(kind: str, parquet: str, bpe: str) -> hr.Dataset:
    """``pack``: documents end to end in rows of SEQ tokens (ranks' epochs differ in length); ``short``: the
    same over 12 documents per rank; ``global``: one
    document per row, cut to SEQ tokens, in a global order (elastic: resumes on another number of ranks)."""
    text = hr.open(parquet, columns=["text"])
    if kind == "pack":
        return text.shuffle(seed=3, buffer_size=64).tokenize(bpe).pack(SEQ)
    if kind == "short":  # a few documents per rank: epochs of a few rows, of different lengths on each rank
        return text.take(12).tokenize(bpe).pack(SEQ)
    if kind == "global":
        return text.shuffle(seed=3, buffer_size=None).tokenize(bpe, truncation=True, max_length=SEQ)
    raise ValueError(f"pipeline kind {kind!r}")


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Causal-LM batches padded to SEQ: labels = input_ids (the model shifts them), -100 on padding."""
    ids = torch.zeros((len(rows), SEQ), dtype=torch.long)
    mask = torch.zeros((len(rows), SEQ), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n], mask[i, :n] = torch.as_tensor(row["input_ids"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def model(vocab_size: int = 4096) -> Any:
    """A tiny GPT-2 (dropout on), the same initial weights every time; 4096: the bpe_path fixture's vocabulary."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=vocab_size, n_positions=SEQ,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def trainer(ds: hr.Dataset, out: str, max_steps: int, *, eval_ds: hr.Dataset | None = None, configure: bool = True,
            **options: Any) -> RecordingTrainer:  # fmt: skip
    """A Trainer on ``ds`` (and ``eval_ds``), set up as a user would: ``for_trainer(ds, args)`` (``configure``)
    or ``for_trainer(ds)``."""
    batch = options.pop("batch", 4)
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=max_steps, per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        learning_rate=1e-3, logging_steps=1, save_strategy="steps", save_steps=options.pop("save_steps", max_steps),
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True, **options,
    )  # fmt: skip
    train_dataset, callback = for_trainer(ds, args) if configure else for_trainer(ds)
    eval_dataset = for_eval(eval_ds) if eval_ds is not None else None
    return RecordingTrainer(model=model(), args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            data_collator=collate, callbacks=[callback])  # fmt: skip


def losses(t: transformers.Trainer) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in t.state.log_history if "loss" in e}


def run(config: dict[str, Any]) -> None:
    """Each of ``config["runs"]`` in turn, on its ``pipeline`` (see :func:`pipeline`). A run that sets
    ``"error": true`` expects a ValueError from the Trainer's construction and writes its message."""
    for spec in config["runs"]:
        spec = dict(spec)
        name, resume, kind = spec.pop("name"), spec.pop("resume", None), spec.pop("pipeline")
        ds = pipeline(kind, config["parquet"], config["bpe"])
        eval_rows = spec.pop("eval_rows", None)
        out = Path(config["out"])
        if spec.pop("error", False):
            try:
                trainer(ds, str(out / name), **spec)
            except ValueError as e:
                (out / f"{name}.{torch.distributed.get_rank()}.json").write_text(json.dumps({"error": str(e)}))
            continue
        t = trainer(ds, str(out / name), eval_ds=ds.take(eval_rows) if eval_rows else None, **spec)
        t.train(resume_from_checkpoint=resume)
        record = {"trained": t.trained, "evaluated": t.evaluated, "losses": losses(t),
                  "position": t.state.stateful_callbacks["headrace"],
                  "type": str(t.accelerator.distributed_type)}  # fmt: skip
        rank = t.args.process_index
        (out / f"{name}.{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
