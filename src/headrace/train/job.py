"""``headrace train``: stream a dataset into a small GPT and train it, resumable exactly.

The data is any source headrace opens (``--data``) or, without one, five Shakespeare plays shipped in
the package, tokenized on the fly (``--tokenizer``, or a byte-level BPE trained on the data at the
start and kept in ``--out``), packed into ``seq_len + 1`` tokens (inputs and next-token targets) and
batched; or a ``--config`` pipeline that yields ``input_ids``. Every ``--checkpoint-every`` steps the
model, the optimizer, the RNG and the loader state go to ``OUT/checkpoint.pt`` (written to a
temporary name and renamed: a kill never leaves half a checkpoint); ``--resume`` continues from it
and reproduces the uninterrupted run's losses exactly (CPU, same machine: no dropout, seeded init,
the data position restored by headrace). A GPU is used when there is one, with bf16 autocast.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

import headrace as hr
from headrace.tokenizer import EOS as EOS  # re-exported: the trainer's end-of-text token
from headrace.tokenizer import train_tokenizer  # torch-free, so the JAX and transformers examples use it too
from headrace.train.model import GPT, GPTConfig


@dataclass
class TrainOptions:
    """What ``headrace train`` is asked to do (its command-line flags)."""

    data: list[str] = field(default_factory=list)  # empty: the built-in corpus
    text_column: str = "text"
    tokenizer: str | None = None
    config: str | None = None
    seq_len: int = 128
    batch_size: int = 16
    max_steps: int = 500
    lr: float = 3e-3
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int = 2048  # of the tokenizer trained when none is given
    out: str = "headrace-train"
    resume: bool = False
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    workers: int = 0
    device: str | None = None  # None: cuda if available, else cpu
    metrics: str | None = None  # a JSON-lines file of every logged step
    live: bool = True  # the rich live display (when the output is a terminal)
    storage_options: dict[str, Any] | None = None


def corpus_files() -> list[str]:
    """The built-in corpus: five Shakespeare plays (Project Gutenberg, public domain), gzipped text."""
    folder = resources.files("headrace.train") / "corpus"
    return sorted(str(p) for p in folder.iterdir() if p.name.endswith(".txt.gz"))  # type: ignore[attr-defined]


def _source(o: TrainOptions) -> hr.Dataset:
    if o.data:
        return hr.open(o.data, columns=[o.text_column], storage_options=o.storage_options)
    return hr.open(corpus_files(), text_mode="line")


def dataset(o: TrainOptions, out: Path) -> tuple[hr.Dataset, str, int]:
    """The training pipeline, the tokenizer it uses, and the vocabulary size."""
    from headrace.tokenizer import load_tokenizer

    if o.config is not None:
        ds = hr.Pipeline.from_yaml(o.config).dataset
        if not ds.batched:
            raise ValueError(f"{o.config}: the pipeline must end with batch() and yield input_ids")
        tokenizer = o.tokenizer or "(the config's)"
        vocab = o.vocab_size
        return ds, tokenizer, vocab
    if o.tokenizer is not None:
        tokenizer = o.tokenizer
    else:
        path = out / "tokenizer.json"
        if not path.exists():
            texts = (row[o.text_column if o.data else "text"] for row in _source(o))
            train_tokenizer(texts, o.vocab_size, path)
        tokenizer = str(path)
    tok = load_tokenizer(tokenizer)
    column = o.text_column if o.data else "text"
    ds = (
        _source(o)
        .shuffle(seed=o.seed, buffer_size=2000)
        .tokenize(tokenizer, column=column, add_eos=True)
        .pack(seq_len=o.seq_len + 1)
        .batch(o.batch_size, drop_last=True)
    )
    return ds, tokenizer, int(tok.vocab_size)


def _device(o: TrainOptions) -> torch.device:
    if o.device:
        return torch.device(o.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def run(o: TrainOptions) -> dict[str, Any]:
    """Train; returns a summary (steps, first and last losses, tokens/s, data wait)."""
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    if o.resume and not checkpoint.exists():
        raise hr.SourceError(f"--resume: no checkpoint at {checkpoint}; run without --resume first")
    torch.manual_seed(o.seed)
    ds, tokenizer, vocab = dataset(o, out)
    device = _device(o)
    model = GPT(GPTConfig(vocab, o.seq_len, o.n_layer, o.n_head, o.n_embd)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=0.01)
    loader = hr.Loader(ds, num_workers=o.workers, prefetch=4)
    step = 0
    if o.resume:
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr(s, o.max_steps), last_epoch=step - 1)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    metrics = open(o.metrics, "a", encoding="utf-8") if o.metrics else None  # noqa: SIM115 - closed below
    display = _Display(o, model.num_parameters(), device, bf16) if o.live else None
    losses: list[tuple[int, float]] = []
    began, tokens = time.perf_counter(), 0
    try:
        while step < o.max_steps:
            for batch in loader:
                ids = torch.from_numpy(batch["input_ids"]).to(device, torch.long, non_blocking=True)
                x, y = ids[:, :-1], ids[:, 1:]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    _, loss = model(x, y)
                assert loss is not None
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                step += 1
                tokens += x.numel()
                if step % o.log_every == 0 or step == o.max_steps or step == 1:
                    value = float(loss.item())
                    losses.append((step, value))
                    stats = loader.stats()
                    line = {"step": step, "loss": value, "lr": schedule.get_last_lr()[0],
                            "tokens_per_s": tokens / (time.perf_counter() - began),
                            "data_wait": stats.data_wait}  # fmt: skip
                    if metrics is not None:
                        metrics.write(json.dumps(line) + "\n")
                        metrics.flush()
                    if display is not None:
                        display.update(line)
                if step % o.checkpoint_every == 0 or step == o.max_steps:
                    _save(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "loader": loader.state_dict(), "rng": torch.get_rng_state(), "step": step,
                                       "options": asdict(o), "tokenizer": tokenizer})  # fmt: skip
                if step >= o.max_steps:
                    break
    finally:
        if metrics is not None:
            metrics.close()
        if display is not None:
            display.close()
    elapsed = time.perf_counter() - began
    return {"steps": step, "losses": losses, "tokens_per_s": tokens / elapsed if elapsed else 0.0,
            "data_wait": loader.stats().data_wait, "parameters": model.num_parameters(), "device": str(device),
            "checkpoint": str(checkpoint), "tokenizer": tokenizer}  # fmt: skip


def _lr(step: int, max_steps: int) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10%."""
    warm = max(1, max_steps // 20)
    if step < warm:
        return (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, max_steps - warm))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class _Display:
    """Step, loss, tokens/s and data wait: a live progress bar in a terminal, a line per log step otherwise."""

    def __init__(self, o: TrainOptions, parameters: int, device: torch.device, bf16: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console()
        self.total = o.max_steps
        what = ", ".join(o.data) if o.data else "the built-in Shakespeare corpus"
        self.console.print(f"headrace train: {parameters / 1e6:.2f}M-parameter GPT on {device}"
                           f"{' (bf16)' if bf16 else ''}, data: {what}")  # fmt: skip
        self.progress: Any = None
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=self.console)  # fmt: skip
            self.task = self.progress.add_task("train", total=o.max_steps, info="")
            self.progress.start()

    def update(self, line: dict[str, Any]) -> None:
        info = (f"loss {line['loss']:.4f}  {line['tokens_per_s']:,.0f} tok/s  "
                f"data wait {100 * line['data_wait']:.1f}%")  # fmt: skip
        if self.progress is not None:
            self.progress.update(self.task, completed=line["step"], info=info)
        else:
            self.console.print(f"step {line['step']:>6}/{self.total}  {info}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
