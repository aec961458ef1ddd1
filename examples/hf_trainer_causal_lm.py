"""Causal-LM training with the Hugging Face ``Trainer``, headrace streaming the data: the FlexAI job, as written.

What it shows: the job of FlexAI's ``code/causal-language-modeling/train.py`` (and transformers'
``run_clm.py``) with headrace as its data path. It takes the same command line, parsed by
``HfArgumentParser`` into the same dataclasses (``TrainingArguments`` included, booleans as ``true``/
``false``), so a user of that job changes the import of the data code, not the launch command::

    torchrun --nproc_per_node=8 examples/hf_trainer_causal_lm.py --dataset_streaming true --do_train \\
        --eval_strategy no --dataset_name HuggingFaceFW/fineweb --dataset_config_name CC-MAIN-2024-10 \\
        --dataset_group_text true --dataloader_num_workers 8 --max_steps 2500 \\
        --model_name_or_path openai-community/gpt2 --output_dir /output-checkpoint \\
        --per_device_train_batch_size 8 --logging_steps 50 --save_steps 1000

The text is opened with ``hr.open``, shuffled, tokenized (an end-of-text token after each document) and,
with ``--dataset_group_text true``, packed end to end into rows of the block size (HF's ``group_texts``),
as a stream; each rank reads its own part (``for_trainer``), ``--dataloader_num_workers`` become
headrace's worker threads, and the data position of every rank goes into every checkpoint, so
``--resume_from_checkpoint OUT/checkpoint-N`` trains on exactly the rows the uninterrupted run would
have used next, on the same number of ranks.

Where the data comes from, ``--dataset_name`` (and ``--dataset_config_name``, a subfolder):

- a local folder or file glob: ``--dataset_name /data/fineweb --dataset_config_name CC-MAIN-2024-10``
  reads ``/data/fineweb/CC-MAIN-2024-10`` (or ``/data/fineweb/data/CC-MAIN-2024-10``, the Hub's layout);
- a URL: ``s3://bucket/fineweb``, ``gs://...``, ``hf://datasets/HuggingFaceFW/fineweb`` (same subfolders);
- a Hub name ``org/name`` that is not a local path: read as ``hf://datasets/org/name`` (needs the network).

Within it, files whose path names the split (``train-00000.parquet``, ``train/``, ``test-*.parquet``;
``--dataset_train_split``/``--dataset_test_split``) form the splits; without split names every file is
training data. Parquet, JSONL(.zst/.gz), CSV, Arrow, text: whatever ``hr.open`` reads.

The model: ``--model_name_or_path`` (a folder saved with ``save_pretrained``, or a Hub name with network),
or ``--config_name`` (a config, trained from scratch; ``--config_overrides "n_layer=2,n_embd=64"``), with
``--tokenizer_name`` or the model's tokenizer; ``--torch_dtype`` (``auto``, ``bfloat16``, ``float16``,
``float32``). With neither, a small GPT-2 is built and a byte-level BPE trained on the data (a demo,
nothing downloaded; without ``--dataset_name`` the data is two Shakespeare plays from ``corpora/``)::

    python examples/hf_trainer_causal_lm.py --output_dir /tmp/clm --do_train --max_steps 40 --save_steps 20
    python examples/hf_trainer_causal_lm.py --output_dir /tmp/clm --do_train --max_steps 40 \\
        --resume_from_checkpoint /tmp/clm/checkpoint-20          # steps 21..40 again, the same losses

``--do_eval`` evaluates on the test split (``--max_eval_samples`` rows; the same rows every evaluation)
after training, or every ``--eval_steps`` with ``--eval_strategy steps``, and reports the perplexity.
``--max_train_samples`` caps the training rows (of all ranks together) per epoch.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _plays import write_plays

import headrace as hr

DEMO_PLAYS = "hamlet_gut,macbeth_gut"
SPLITS = ("train", "test", "validation", "valid", "dev")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".zst", ".gz", ".csv", ".arrow", ".txt", ".bin", ".npy", ".tar")


@dataclass
class DatasetArguments:
    """FlexAI's ``DatasetArguments``: the same names and defaults."""

    dataset_name: str | None = field(default=None, metadata={"help": "a local folder or glob, a URL (s3://, "
                                     "hf://datasets/org/name, ...) or a Hub name (org/name)"})  # fmt: skip
    dataset_config_name: str | None = field(default=None, metadata={"help": "a subfolder of the dataset: NAME/CONFIG "
                                            "or NAME/data/CONFIG"})  # fmt: skip
    dataset_train_split: str = field(default="train", metadata={"help": "files whose path names it are for training"})
    dataset_test_split: str = field(default="test", metadata={"help": "files whose path names it are for evaluation"})
    dataset_text_field: str = field(default="text", metadata={"help": "the column holding the text"})
    dataset_max_seq_length: int | None = field(default=None, metadata={"help": "cut each document to this many "
                                               "tokens first"})  # fmt: skip
    dataset_num_proc: int = field(default=1, metadata={"help": "accepted; tokenizing runs in headrace's worker "
                                  "threads (--dataloader_num_workers)"})  # fmt: skip
    dataset_group_text: bool = field(default=False, metadata={"help": "pack documents end to end into rows of the "
                                     "block size; else one document per row, cut to it"})  # fmt: skip
    dataset_group_text_validation: bool = field(default=True, metadata={"help": "group the evaluation rows too"})
    dataset_block_size: int | None = field(default=None, metadata={"help": "tokens per row (default: the model's "
                                           "context, at most 8192)"})  # fmt: skip
    dataset_streaming: bool = field(default=False, metadata={"help": "accepted; headrace always streams"})
    dataset_shuffle_buffer: int = field(default=10_000, metadata={"help": "documents in the shuffle window (0: in "
                                        "the files' order)"})  # fmt: skip


@dataclass
class ModelArguments:
    """FlexAI's ``ModelArguments`` and run_clm's ``--config_name``/``--tokenizer_name``/``--config_overrides``."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "a pretrained model: folder or Hub name"})
    config_name: str | None = field(default=None, metadata={"help": "a config (folder or Hub name): from scratch"})
    config_overrides: str | None = field(default=None, metadata={"help": "with --config_name: 'n_layer=2,n_embd=64'"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "default: the model's or config's folder"})
    torch_dtype: str | None = field(default=None, metadata={"help": "the model's dtype",
                                    "choices": ["auto", "bfloat16", "float16", "float32"]})  # fmt: skip
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2"})


@dataclass
class AdditionalArguments:
    """FlexAI's ``AdditionalArguments``."""

    max_train_samples: int | None = field(default=None, metadata={"help": "training rows per epoch, all ranks"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "evaluation rows"})


def parse_args(argv: list[str] | None = None) -> tuple[DatasetArguments, ModelArguments, Any, AdditionalArguments]:
    from transformers import HfArgumentParser, TrainingArguments

    parser = HfArgumentParser((DatasetArguments, ModelArguments, TrainingArguments, AdditionalArguments))
    data, model, training, extra = parser.parse_args_into_dataclasses(args=argv)
    return data, model, training, extra


# -- data ------------------------------------------------------------------------------------------


def dataset_root(data: DatasetArguments, output_dir: str) -> str:
    """The folder, glob or URL ``--dataset_name``/``--dataset_config_name`` name (see the module's docstring)."""
    name = data.dataset_name
    if name is None:
        return write_plays(DEMO_PLAYS, Path(output_dir) / "data", "--dataset_name").rsplit("/", 1)[0]
    if "://" not in name and not Path(name).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        name = f"hf://datasets/{name}"  # a Hub name
    if data.dataset_config_name is None:
        return name
    import fsspec

    fs, path = fsspec.core.url_to_fs(name)
    for sub in (data.dataset_config_name, f"data/{data.dataset_config_name}"):
        if fs.isdir(f"{path.rstrip('/')}/{sub}"):
            return f"{name.rstrip('/')}/{sub}"
    sys.exit(f"--dataset_config_name {data.dataset_config_name}: no folder {data.dataset_config_name} or "
             f"data/{data.dataset_config_name} in {name}")  # fmt: skip


def split_files(root: str, split: str) -> list[str]:
    """The data files under ``root`` (a file, glob, folder or URL) for ``split``: those whose path below ``root``
    names it, or all of them if no path names any split (then only the train split has files)."""
    import fsspec

    hub = " (a Hub name is read as hf://datasets/NAME: that needs the network)" if "hf://" in root else ""
    fs, path = fsspec.core.url_to_fs(root)
    path = path.rstrip("/")
    try:
        if fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.endswith(DATA_SUFFIXES))
        elif any(c in path for c in "*?["):
            found = sorted(fs.glob(path))
        else:
            found = [path] if fs.exists(path) else []
    except Exception as e:  # a store that cannot be reached, or denies the listing
        sys.exit(f"--dataset_name {root}: cannot list it{hub}: {type(e).__name__}: {e}")
    if not found:
        sys.exit(f"--dataset_name {root}: no data files there{hub}")
    protocol = root.split("://", 1)[0] + "://" if "://" in root else ""

    def names(file: str, name: str) -> bool:
        below = file[len(path) :] if file.startswith(path) else file.rsplit("/", 1)[-1]
        return any(part == name or part.startswith((f"{name}-", f"{name}_", f"{name}.")) for part in below.split("/"))

    named = [f for f in found if any(names(f, s) for s in SPLITS)]
    chosen = (found if split == "train" else []) if not named else [f for f in named if names(f, split)]
    return [f if not protocol or "://" in f else protocol + f for f in chosen]


def rows(files: list[str], tokenizer: Any, block_size: int, data: DatasetArguments, group: bool, seed: int,
         shuffle: bool) -> hr.Dataset:  # fmt: skip
    """Documents (shuffled), tokenized with an end-of-text token after each, then packed into rows of
    ``block_size`` tokens (``group``) or cut to it."""
    ds = hr.open(files, columns=[data.dataset_text_field])
    if shuffle and data.dataset_shuffle_buffer > 0:
        ds = ds.shuffle(seed=seed, buffer_size=data.dataset_shuffle_buffer)
    cut = data.dataset_max_seq_length if group else min(block_size, data.dataset_max_seq_length or block_size)
    ds = ds.tokenize(tokenizer.backend_tokenizer, column=data.dataset_text_field, add_eos=True,
                     eos_id=tokenizer.eos_token_id, truncation=cut is not None, max_length=cut)  # fmt: skip
    return ds.pack(block_size) if group else ds


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


# -- model -----------------------------------------------------------------------------------------


def load_model(model: ModelArguments, files: list[str], data: DatasetArguments, output_dir: str) -> tuple[Any, Any]:
    """``(model, tokenizer)``: pretrained, from a config, or (neither given) a small GPT-2 and a BPE trained on
    the data."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config, PreTrainedTokenizerFast

    dtype = model.torch_dtype if model.torch_dtype in ("auto", None) else getattr(torch, model.torch_dtype)
    extra = {"attn_implementation": model.attn_implementation} if model.attn_implementation else {}
    source = model.model_name_or_path or model.config_name
    if source is None:
        from headrace.tokenizer import train_tokenizer

        file = Path(output_dir) / "tokenizer" / "tokenizer.json"
        if not file.exists():
            column = data.dataset_text_field
            train_tokenizer((row[column] for row in hr.open(files, columns=[column]).take(20_000)), 2048, file)
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(file), eos_token="<|endoftext|>")
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        return AutoModelForCausalLM.from_config(config, dtype=dtype, **extra), _with_pad(tokenizer)
    tokenizer = _with_pad(AutoTokenizer.from_pretrained(model.tokenizer_name or source))
    if model.model_name_or_path is not None:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra), tokenizer
    config = AutoConfig.from_pretrained(source)
    if model.config_overrides:
        config.update_from_string(model.config_overrides)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, **extra), tokenizer


def _with_pad(tokenizer: Any) -> Any:
    if tokenizer.eos_token_id is None:
        sys.exit(f"the tokenizer {tokenizer.name_or_path!r} has no end-of-text token to separate documents")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def block_size_of(data: DatasetArguments, model: Any, tokenizer: Any) -> int:
    """``--dataset_block_size``, else the model's context (at most 8192), as FlexAI's ``_get_block_size``."""
    config = model.config
    context = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 8192)
    limit = min(context, 8192, tokenizer.model_max_length)
    return min(data.dataset_block_size, limit) if data.dataset_block_size else limit


# -- training --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train (``--do_train``) and evaluate (``--do_eval``); returns the evaluation metrics (perplexity)."""
    data, model_args, training_args, extra = parse_args(argv)
    if not (training_args.do_train or training_args.do_eval):
        sys.exit("nothing to do: pass --do_train and/or --do_eval (as the FlexAI job and run_clm.py)")
    from transformers import Trainer, set_seed

    from headrace.integrations.transformers import for_eval, for_trainer

    root = dataset_root(data, training_args.output_dir)
    train_files = split_files(root, data.dataset_train_split)
    if not train_files:
        sys.exit(f"--dataset_name {root}: no data files for split {data.dataset_train_split!r}")
    set_seed(training_args.seed)  # the initial weights of a model built from a config
    model, tokenizer = load_model(model_args, train_files, data, training_args.output_dir)
    block_size = block_size_of(data, model, tokenizer)

    train_rows = rows(train_files, tokenizer, block_size, data, data.dataset_group_text, training_args.seed, True)
    if extra.max_train_samples is not None:  # all ranks together: each rank takes its share
        train_rows = train_rows.take(max(1, extra.max_train_samples // training_args.world_size))
    train_dataset, data_callback = for_trainer(train_rows, training_args)  # each rank its part; workers -> threads

    eval_dataset = None
    if training_args.do_eval:
        eval_files = split_files(root, data.dataset_test_split)
        if not eval_files:
            sys.exit(f"--do_eval: no files for split {data.dataset_test_split!r} in {root} (name them "
                     f"{data.dataset_test_split}-*.parquet or pass --dataset_test_split)")  # fmt: skip
        group = data.dataset_group_text and data.dataset_group_text_validation
        eval_rows = rows(eval_files, tokenizer, block_size, data, group, training_args.seed, False)
        eval_dataset = for_eval(eval_rows.take(extra.max_eval_samples) if extra.max_eval_samples else eval_rows)

    trainer = Trainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                      processing_class=tokenizer, data_collator=Collator(tokenizer.pad_token_id),
                      callbacks=[data_callback])  # fmt: skip
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # the final model and tokenizer in OUTPUT_DIR
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    metrics: dict[str, float] = {}
    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset) if eval_dataset is not None else 0
        metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 700 else float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return metrics


if __name__ == "__main__":
    main()
