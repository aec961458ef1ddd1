"""Causal-LM pre-training with the Hugging Face ``Trainer``, headrace streaming the data, resumed exactly.

What it shows: the job transformers' ``examples/pytorch/language-modeling/run_clm.py`` runs, with
headrace as the data path. Text is opened with ``hr.open`` (any local path, glob or folder, or a
remote URL), shuffled, tokenized and packed into ``--block_size`` token rows (HF's ``group_texts``) as
a stream, and handed to the ``Trainer`` through ``headrace.integrations.transformers.for_trainer``. The
data position goes into every checkpoint, so ``--resume_from_checkpoint`` trains on exactly the rows
the uninterrupted run would have used next (same losses, bit for bit). The model is a small GPT-2
built from ``GPT2Config`` (random weights; nothing is downloaded); without ``--tokenizer`` a small
byte-level BPE is trained on the data first and saved with every checkpoint.

Run it (CPU, a few seconds; the data defaults to two Shakespeare plays from ``corpora/``,
converted to Parquet under ``OUTPUT_DIR/data``)::

    python examples/hf_trainer_causal_lm.py --output_dir /tmp/clm --max_steps 40 --save_steps 20
    python examples/hf_trainer_causal_lm.py --output_dir /tmp/clm2 --max_steps 40 \\
        --resume_from_checkpoint /tmp/clm/checkpoint-20          # steps 21..40 again, same losses

Your own data: ``--dataset_name "data/*.parquet"`` (or ``.jsonl.zst``, ``.txt``, ``s3://...``, ...) or
``--data_files a.jsonl b.jsonl``, with ``--text_column``. Hub dataset *names* (``org/name``) need the
network and the ``datasets`` library; with network, pass the Hub's files directly instead:
``--dataset_name "hf://datasets/org/name/data/*.parquet"``. ``--dataset_streaming`` is accepted for
run_clm compatibility: headrace always streams.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from _plays import write_plays

import headrace as hr
from headrace.tokenizer import EOS, train_tokenizer

DEFAULT_PLAYS = "hamlet_gut,macbeth_gut"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data (run_clm.py's names)")
    data.add_argument("--dataset_name", help="a local path, glob or folder, or a URL (s3://, https://, hf://...), "
                      "opened with hr.open; Hub dataset names need the network (see above)")  # fmt: skip
    data.add_argument("--data_files", nargs="+", help="files or globs, in this order (instead of --dataset_name)")
    data.add_argument("--text_column", default="text", help="the column holding the text (default: text)")
    data.add_argument("--dataset_streaming", action="store_true", help="accepted; headrace always streams")
    data.add_argument("--dataset_group_text", action=argparse.BooleanOptionalAction, default=True,
                      help="pack documents end to end into rows of --block_size tokens (default); with "
                      "--no-dataset_group_text each document is one row, cut to --block_size and padded")  # fmt: skip
    data.add_argument("--block_size", type=int, default=64, help="tokens per training row (default: 64)")
    data.add_argument("--shuffle_buffer", type=int, default=1000, help="rows in the shuffle window (default: 1000)")
    data.add_argument("--preprocessing_num_workers", type=int, default=0,
                      help="headrace worker threads reading and tokenizing (default: 0, in the loop)")  # fmt: skip
    data.add_argument("--plays", default=DEFAULT_PLAYS, help="without --dataset_name/--data_files: Shakespeare "
                      f"plays from the repository's corpora/ to convert (default: {DEFAULT_PLAYS})")  # fmt: skip
    tok = p.add_argument_group("tokenizer and model")
    tok.add_argument("--tokenizer", help="a tokenizer.json or a folder holding one (default: train a byte-level "
                     "BPE on the data, or take the one saved in --resume_from_checkpoint)")  # fmt: skip
    tok.add_argument("--vocab_size", type=int, default=2048, help="BPE size when training one (default: 2048)")
    tok.add_argument("--n_layer", type=int, default=2)
    tok.add_argument("--n_head", type=int, default=2)
    tok.add_argument("--n_embd", type=int, default=64)
    train = p.add_argument_group("training (TrainingArguments' names)")
    train.add_argument("--output_dir", required=True)
    train.add_argument("--overwrite_output_dir", action="store_true",
                       help="start afresh even if OUTPUT_DIR has checkpoints (else the last is resumed)")  # fmt: skip
    train.add_argument("--resume_from_checkpoint", help="a checkpoint folder (OUTPUT_DIR/checkpoint-N)")
    train.add_argument("--max_steps", type=int, default=100)
    train.add_argument("--per_device_train_batch_size", type=int, default=8)
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=3e-3)
    train.add_argument("--logging_steps", type=int, default=10)
    train.add_argument("--save_steps", type=int, default=50)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--disable_tqdm", action="store_true")
    train.add_argument("--metrics", type=Path, help="append one JSON line per log (step, loss, ...) to this file")
    return p.parse_args(argv)


# -- data ------------------------------------------------------------------------------------------


def data_urls(args: argparse.Namespace) -> str | list[str]:
    if args.dataset_name and args.data_files:
        sys.exit("pass --dataset_name or --data_files, not both")
    if args.data_files:
        return list(args.data_files)
    if args.dataset_name:
        name = args.dataset_name
        if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not Path(name).exists():
            sys.exit(f"--dataset_name {name}: not a local path. Hub dataset names need the network; with it, pass "
                     f"the files: --dataset_name 'hf://datasets/{name}/<path>/*.parquet'")  # fmt: skip
        return str(name)
    return write_plays(args.plays, Path(args.output_dir) / "data", "--dataset_name")


def load_tokenizer(path: str | Path) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``tokenizer.json`` (a file or a folder holding one)."""
    from transformers import PreTrainedTokenizerFast

    from headrace.tokenizer import load_tokenizer as headrace_tokenizer

    file = Path(path)
    file = file / "tokenizer.json" if file.is_dir() else file
    if not file.exists():
        sys.exit(f"--tokenizer {path}: no tokenizer.json there")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(file))
    eos = headrace_tokenizer(str(file)).eos_id if tokenizer.eos_token is None else tokenizer.eos_token_id
    if eos is None:
        sys.exit(f"{file}: no end-of-text token ({EOS}, </s>, ...) to separate documents")
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def rows(urls: str | list[str], tokenizer: Any, args: argparse.Namespace) -> hr.Dataset:
    """The training rows: shuffled documents, tokenized (end-of-text after each), packed or cut."""
    # The tokenizer object, not its path: headrace's state fingerprint names a tokenizer file by its folder,
    # and a resumed run reads the same tokenizer.json from the checkpoint folder.
    ds = (
        hr.open(urls, columns=[args.text_column])
        .shuffle(seed=args.seed, buffer_size=args.shuffle_buffer)
        .tokenize(tokenizer.backend_tokenizer, column=args.text_column, add_eos=True, eos_id=tokenizer.eos_token_id)
    )
    if args.dataset_group_text:
        return ds.pack(args.block_size)  # {"input_ids": block_size tokens}, documents end to end
    size = args.block_size
    return ds.map(lambda row: {"input_ids": row["input_ids"][:size]})  # one document per row, cut


class Collator:
    """Rows to a batch: padded to the longest row, ``labels`` = ``input_ids`` (-100 on padding; the model
    shifts them). End-of-text tokens keep their labels, unlike ``DataCollatorForLanguageModeling`` with
    ``pad_token = eos_token``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(row["input_ids"]) for row in batch)
        ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, row in enumerate(batch):
            n = len(row["input_ids"])
            ids[i, :n], mask[i, :n] = torch.as_tensor(row["input_ids"]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


# -- training --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    urls = data_urls(args)
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from headrace.integrations.transformers import for_trainer

    output = Path(args.output_dir)
    resume = args.resume_from_checkpoint
    if resume is None and output.is_dir() and not args.overwrite_output_dir:
        resume = get_last_checkpoint(str(output))  # as run_clm.py: go on where the last run stopped
        if resume is not None:
            print(f"checkpoint found, resuming from {resume} (--overwrite_output_dir to start afresh)")

    if args.tokenizer:
        tokenizer_file = Path(args.tokenizer)
    elif resume is not None and (Path(resume) / "tokenizer.json").exists():
        tokenizer_file = Path(resume) / "tokenizer.json"  # the one the checkpoint was trained with
    else:
        tokenizer_file = output / "tokenizer" / "tokenizer.json"  # a byte-level BPE trained on the data: no download
        texts = (row[args.text_column] for row in hr.open(urls, columns=[args.text_column]).take(20_000))
        train_tokenizer(texts, args.vocab_size, tokenizer_file)
    tokenizer = load_tokenizer(tokenizer_file)

    set_seed(args.seed)  # the initial weights (a resumed run loads the checkpoint's)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.block_size, n_embd=args.n_embd,
                        n_layer=args.n_layer, n_head=args.n_head, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = GPT2LMHeadModel(config)
    print(f"GPT-2: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")

    train_dataset, data_callback = for_trainer(rows(urls, tokenizer, args),
                                               threads=args.preprocessing_num_workers)  # fmt: skip
    training_args = TrainingArguments(
        output_dir=str(output), max_steps=args.max_steps, per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        logging_steps=args.logging_steps, save_strategy="steps", save_steps=args.save_steps, seed=args.seed,
        data_seed=args.seed, report_to=[], use_cpu=not torch.cuda.is_available(), disable_tqdm=args.disable_tqdm,
        dataloader_num_workers=0,  # headrace reads in this process (threads: --preprocessing_num_workers)
    )  # fmt: skip

    metrics_file = args.metrics

    class Metrics(TrainerCallback):
        """Each log as a JSON line in --metrics (what the tests read)."""

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logs = kwargs.get("logs")
            if metrics_file is not None and logs:
                with metrics_file.open("a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
                      data_collator=Collator(tokenizer.pad_token_id), callbacks=[data_callback, Metrics()])  # fmt: skip
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()  # the final model and tokenizer in OUTPUT_DIR
    trainer.log_metrics("train", result.metrics)
    trainer.save_state()


if __name__ == "__main__":
    main()
