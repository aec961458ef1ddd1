"""``headrace train``: stream a dataset into a small GPT and train it, resumable exactly.

The data is any source headrace opens (``--data``) or, without one, five Shakespeare plays shipped in
the package, tokenized on the fly (``--tokenizer``, or a byte-level BPE trained on the data at the
start and kept in ``--out``), packed into ``seq_len + 1`` tokens (inputs and next-token targets) and
batched; or a ``--config`` pipeline that yields ``input_ids``. Every ``--checkpoint-every`` steps the
model, the optimizer, the RNG and the loader state go to ``OUT/checkpoint.pt`` (written to a
temporary name and renamed: a kill never leaves half a checkpoint); ``--resume`` continues from it
and reproduces the uninterrupted run's losses exactly (CPU, same machine: no dropout, seeded init,
the data position restored by headrace). A GPU is used when there is one, with bf16 autocast.

A checkpoint holds only tensors, dicts, lists, strings and numbers, and is read with
``torch.load(weights_only=True)``: a file holding anything else (a crafted pickle that would run code)
is refused, naming it, before anything in it runs. An existing checkpoint is never overwritten unless
``--overwrite`` says so, and ``--resume`` with other model or data flags than the checkpoint's is
refused naming the flags that differ.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

import headrace as hr
from headrace.core.redact import redact
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
    overwrite: bool = False  # start afresh over an existing OUT/checkpoint.pt
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
    """Write under a temporary name, flushed to disk, then rename: a kill or a power cut leaves the old one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# The flags a resumed run must share with the checkpoint's: they shape the model or the data's order.
SAME_ON_RESUME = {"data": "--data", "text_column": "--text-column", "tokenizer": "--tokenizer", "config": "--config",
                  "seq_len": "--seq-len", "batch_size": "--batch-size", "n_layer": "--layers", "n_head": "--heads",
                  "n_embd": "--embd", "seed": "--seed"}  # fmt: skip
CHECKPOINT_KEYS = ("model", "optimizer", "loader", "rng", "step", "options")  # and model_config (newer ones)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint's contents, read with ``weights_only=True``: tensors, dicts, lists, strings, numbers only.

    Anything else (a pickle that would build other objects or call functions), a damaged file, or a
    checkpoint without the fields :func:`run` writes is a :class:`~headrace.StateError` naming the file.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise hr.StateError(f"{path}: refused: not a checkpoint of tensors, dicts, lists, strings and numbers only "
                            f"(torch.load weights_only=True: {_unpickling_reason(e)}); headrace never loads a "
                            "checkpoint that could run code: delete it, or start afresh with --overwrite"
                            ) from None  # fmt: skip
    except torch.OutOfMemoryError:
        raise  # the device's trouble, not the file's
    except OSError as e:  # permissions, a vanished mount: the file may well be fine
        raise hr.StateError(f"{path}: cannot read the checkpoint ({e})") from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError) as e:  # a damaged or truncated file
        raise hr.StateError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); delete it, or start "
                            "afresh with --overwrite") from None  # fmt: skip
    if not isinstance(state, dict):
        raise hr.StateError(f"{path}: not a headrace train checkpoint (it holds a {type(state).__name__})")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise hr.StateError(f"{path}: not a headrace train checkpoint of this version (no {', '.join(missing)}); "
                            "start afresh with --overwrite")  # fmt: skip
    if not isinstance(state["options"], dict) or not isinstance(state.get("model_config", {}), dict):
        raise hr.StateError(f"{path}: malformed checkpoint (options and model_config must be dicts)")
    return state


def _unpickling_reason(e: Exception) -> str:
    """What torch's weights-only refusal says was refused (its message also advises turning weights_only off)."""
    paragraphs = [" ".join(p.split()) for p in str(e).split("\n\n") if p.strip()]
    return paragraphs[-2] if len(paragraphs) >= 3 else type(e).__name__


def _check_same_flags(path: Path, saved: dict[str, Any], o: TrainOptions) -> None:
    """Refuse, naming them, the flags in which this run differs from the checkpoint's."""
    now = _public_options(o)
    differ = [f"{flag} {_flag_value(saved.get(k))} (this run: {_flag_value(now[k])})"
              for k, flag in SAME_ON_RESUME.items() if saved.get(k) != now[k]]  # fmt: skip
    if differ:
        raise hr.StateError(f"{path} was trained with " + ", ".join(differ) + ": resume with the same flags, or "
                            "start afresh with --overwrite")  # fmt: skip


def _public_options(o: TrainOptions) -> dict[str, Any]:
    """The flags as a checkpoint keeps them: no storage options, URLs without their credentials."""

    def public(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value)
        return [public(v) for v in value] if isinstance(value, list) else value

    return {k: public(v) for k, v in asdict(o).items() if k != "storage_options"}


def _flag_value(value: Any) -> str:
    if value is None or value == []:
        return "(not given)"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def run(o: TrainOptions) -> dict[str, Any]:
    """Train; returns a summary (steps, first and last losses, tokens/s, data wait)."""
    if o.resume and o.overwrite:
        raise ValueError("--resume continues OUT/checkpoint.pt, --overwrite starts afresh over it: pass one")
    out = Path(o.out)
    checkpoint = out / "checkpoint.pt"
    if o.resume and not checkpoint.exists():
        raise hr.SourceError(f"--resume: no checkpoint at {checkpoint}; run without --resume first")
    if checkpoint.exists() and not (o.resume or o.overwrite):
        raise hr.StateError(f"{checkpoint} exists: pass --resume to continue it or --overwrite to start afresh "
                            "(which replaces it)")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    device = _device(o)
    state: dict[str, Any] | None = None
    if o.resume:  # read and checked before anything is built: a refused checkpoint costs nothing
        state = load_checkpoint(checkpoint, device)
        _check_same_flags(checkpoint, state["options"], o)
    elif o.overwrite:  # the old checkpoint goes first: a kill before the first save leaves none to resume
        checkpoint.unlink(missing_ok=True)
        if o.tokenizer is None and o.config is None:
            (out / "tokenizer.json").unlink(missing_ok=True)  # afresh: trained again, on this run's data
    torch.manual_seed(o.seed)
    ds, tokenizer, vocab = dataset(o, out)
    config = GPTConfig(vocab, o.seq_len, o.n_layer, o.n_head, o.n_embd)
    model = GPT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=0.01)
    loader = hr.Loader(ds, num_workers=o.workers, prefetch=4)
    step = 0
    if state is not None:
        if state.get("model_config", asdict(config)) != asdict(config):
            raise hr.StateError(f"{checkpoint} holds a model of {_describe(state['model_config'])}, this run builds "
                                f"one of {_describe(asdict(config))}: resume with the checkpoint's tokenizer "
                                f"({state.get('tokenizer')})")  # fmt: skip
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            step = int(state["step"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            reason = " ".join(str(e).split())[:300]
            raise hr.StateError(f"{checkpoint}: malformed checkpoint ({type(e).__name__}: {reason}); start afresh "
                                "with --overwrite") from None  # fmt: skip
        try:
            loader.load_state_dict(state["loader"])
        except hr.StateError as e:
            raise hr.StateError(f"{checkpoint}: {e}") from None
    saved_options = _public_options(o)  # a checkpoint is copied and shared: no credentials in it
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
                                       "options": saved_options, "model_config": asdict(config),
                                       "tokenizer": tokenizer})  # fmt: skip
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


def _describe(config: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in config.items())


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
