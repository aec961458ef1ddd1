"""Data-parallel training under ``torchrun``: one ``hr.Loader`` per rank, equal steps, exact checkpoints.

What it shows: multi-process training with PyTorch ``DistributedDataParallel`` (gloo on CPU, NCCL on
GPUs) fed by headrace. Each rank builds the same pipeline (shuffled text, tokenized, packed into rows
of ``--seq_len + 1`` tokens, batched) and an ``hr.Loader``, which detects its rank and world size from
``torch.distributed`` and reads its own part of the data. Packing changes the row count, so the ranks'
epochs end a few batches apart: training counts *steps* and each rank's loader goes on into its next
epoch, so every rank takes exactly ``--max_steps`` steps (a rank that stopped early would leave the
others waiting in the all-reduce). Every ``--save_every`` steps a checkpoint holds the model and
optimizer (rank 0), each rank's loader state (plain JSON, a few hundred bytes) and each rank's RNG
state (dropout); ``--resume`` continues from it exactly: the same batches and the same losses as a run
that was never stopped. A resume needs the same number of processes (packed streams are not elastic).

Run it (CPU, 2 processes, a few seconds; data: Shakespeare plays from ``corpora/`` converted
to Parquet under ``--out``, or any ``--data`` that ``hr.open`` reads)::

    python -m torch.distributed.run --nproc_per_node=2 examples/ddp_torchrun.py --out /tmp/ddp --max_steps 40
    python -m torch.distributed.run --nproc_per_node=2 examples/ddp_torchrun.py --out /tmp/ddp --max_steps 80 \\
        --resume                     # from the latest checkpoint in /tmp/ddp/checkpoints, on to step 80
    python -m torch.distributed.run --nproc_per_node=2 examples/ddp_torchrun.py --out /tmp/ddp2 --max_steps 40 \\
        --resume /tmp/ddp/checkpoints/step-000020      # steps 21..40 again: the same losses

(``torchrun`` is the same command; on one machine add ``--master_addr=127.0.0.1 --master_port=PORT`` if
the default port is taken.) Each rank prints its step count at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _plays import write_plays

DEFAULT_PLAYS = "hamlet_gut,macbeth_gut,othello_gut"
SAME_ON_RESUME = ("seq_len", "batch_size", "dim", "layers", "heads", "dropout", "seed", "text_column")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="checkpoints (OUT/checkpoints) and converted data")
    p.add_argument("--data", help="a path, glob or URL for hr.open (default: --plays converted to Parquet, or on "
                   "--resume the checkpoint's data)")  # fmt: skip
    p.add_argument("--text_column", default="text")
    p.add_argument("--plays", default=DEFAULT_PLAYS, help=f"Shakespeare plays to convert (default: {DEFAULT_PLAYS})")
    p.add_argument("--tokenizer", help="a tokenizer.json (default: train a byte-level BPE on the data; on --resume "
                   "the checkpoint's)")  # fmt: skip
    p.add_argument("--vocab_size", type=int, default=512, help="BPE size when training one (default: 512)")
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=8, help="rows per rank and step")
    p.add_argument("--max_steps", type=int, default=40)
    p.add_argument("--save_every", type=int, default=20, help="checkpoint every N steps (0: never)")
    p.add_argument("--resume", nargs="?", const="latest", help="a checkpoint folder, or without a value the latest "
                   "in OUT/checkpoints (none there: start afresh)")  # fmt: skip
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="headrace worker threads per rank")
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--backend", default=None, help="gloo or nccl (default: nccl with CUDA, else gloo)")
    p.add_argument("--metrics", type=Path, help="rank 0 appends one JSON line per logged step (every rank's loss "
                   "and a digest of its batch) and a final line with every rank's step count")  # fmt: skip
    return p.parse_args(argv)


# -- model -----------------------------------------------------------------------------------------


def build_model(vocab: int, args: argparse.Namespace) -> Any:
    import torch
    from torch import nn

    class TinyGPT(nn.Module):
        """Token and position embeddings, pre-LayerNorm causal transformer layers, a tied output layer."""

        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(vocab, args.dim)
            self.positions = nn.Embedding(args.seq_len, args.dim)
            layer = nn.TransformerEncoderLayer(args.dim, args.heads, 4 * args.dim, args.dropout, batch_first=True,
                                               norm_first=True)  # fmt: skip
            self.blocks = nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False)
            self.ln = nn.LayerNorm(args.dim)
            self.head = nn.Linear(args.dim, vocab, bias=False)
            self.head.weight = self.tokens.weight
            for table in (self.tokens, self.positions):  # small embeddings, as GPT-2: N(0, 1) would start the
                nn.init.normal_(table.weight, std=0.02)  # tied output layer with huge logits

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            n = ids.shape[1]
            x = self.tokens(ids) + self.positions(torch.arange(n, device=ids.device))
            causal = nn.Transformer.generate_square_subsequent_mask(n, device=ids.device)
            return self.head(self.ln(self.blocks(x, mask=causal, is_causal=True)))  # type: ignore[no-any-return]

    return TinyGPT()


# -- checkpoints -----------------------------------------------------------------------------------


def find_checkpoint(resume: str | None, out: Path) -> Path | None:
    if resume is None:
        return None
    if resume != "latest":
        path = Path(resume)
        if not (path / "model.pt").exists():
            sys.exit(f"--resume {resume}: not a checkpoint folder (no model.pt)")
        return path
    done = sorted((out / "checkpoints").glob("step-[0-9][0-9][0-9][0-9][0-9][0-9]"))
    return done[-1] if done else None


def save_checkpoint(folder: Path, step: int, rank: int, model: Any, opt: Any, loader: Any, meta: dict[str, Any],
                    tokenizer: Path) -> None:  # fmt: skip
    """Every rank writes its loader and RNG state, rank 0 the weights; the folder appears complete or not at all."""
    import torch
    import torch.distributed as dist

    final = folder / f"step-{step:06d}"
    tmp = folder / f".step-{step:06d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    (tmp / f"loader-rank{rank}.json").write_text(json.dumps(loader.state_dict()))
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    torch.save(rng, tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        torch.save({"model": model.module.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp / "model.pt")
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=1))
    dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        print(f"checkpoint {final}", flush=True)
    dist.barrier()


def digest(ids: Any) -> str:
    return hashlib.sha256(ids.tobytes()).hexdigest()[:16]


def log_step(step: int, every: list[dict[str, Any]], seconds: float, metrics: Any) -> None:
    """Rank 0: print the mean loss of a step and append every rank's loss, batch digest and epoch to --metrics."""
    losses, epochs = [e["loss"] for e in every], [e["epoch"] for e in every]
    print(f"step {step:5d}  loss {sum(losses) / len(losses):.4f}  epochs {epochs}  {seconds:.1f}s", flush=True)
    if metrics is not None:
        record = {"step": step, "losses": losses, "batches": [e["batch"] for e in every], "epochs": epochs}
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import headrace as hr
    from headrace.integrations.torch import to_tensors
    from headrace.tokenizer import train_tokenizer

    cuda = torch.cuda.is_available()
    dist.init_process_group(args.backend or ("nccl" if cuda else "gloo"))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    checkpoint = find_checkpoint(args.resume, args.out)
    saved = json.loads((checkpoint / "meta.json").read_text()) if checkpoint else {}
    if checkpoint is not None:
        if saved["world_size"] != world:
            sys.exit(f"{checkpoint} was taken on {saved['world_size']} processes, this run has {world}: packed "
                     "streams resume on the same number of ranks")  # fmt: skip
        differ = [f"--{k} {saved['args'][k]} (now {getattr(args, k)})" for k in SAME_ON_RESUME
                  if saved["args"][k] != getattr(args, k)]  # fmt: skip
        if differ:
            sys.exit(f"{checkpoint} was trained with " + ", ".join(differ) + ": resume with the same settings")

    # Data and tokenizer: rank 0 prepares them, the others wait. A resume takes the checkpoint's.
    data = args.data or saved.get("data") or str(args.out / "data" / "*.parquet")
    tokenizer_file = Path(args.tokenizer) if args.tokenizer else (checkpoint or args.out) / "tokenizer.json"
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        if not args.data and not saved:
            write_plays(args.plays, args.out / "data")
        if not tokenizer_file.exists():  # a byte-level BPE trained on (up to 20,000 rows of) the data: no download
            texts = (row[args.text_column] for row in hr.open(data, columns=[args.text_column]).take(20_000))
            train_tokenizer(texts, args.vocab_size, tokenizer_file)
    dist.barrier()
    from tokenizers import Tokenizer

    # The tokenizer object, not its path: the pipeline's fingerprint then stays the same wherever the file lies.
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    vocab = tokenizer.get_vocab_size()

    ds = (
        hr.open(data, columns=[args.text_column])
        .shuffle(seed=args.seed, buffer_size=1000)
        .tokenize(tokenizer, column=args.text_column, add_eos=True)
        .pack(args.seq_len + 1)  # input: the first seq_len tokens, targets: the last seq_len
        .batch(args.batch_size, drop_last=True)
    )
    loader = hr.Loader(ds, num_workers=args.threads, prefetch=4)  # rank and world size from torch.distributed

    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = torch.nn.parallel.DistributedDataParallel(build_model(vocab, args).to(device),
                                                      device_ids=[device.index] if cuda else None)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    torch.manual_seed(args.seed * 1000 + rank + 1)  # each rank its own dropout masks
    step = 0
    if checkpoint is not None:
        state = torch.load(checkpoint / "model.pt", map_location=device, weights_only=True)
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        loader.load_state_dict(json.loads((checkpoint / f"loader-rank{rank}.json").read_text()))
        rng = torch.load(checkpoint / f"rng-rank{rank}.pt", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if cuda and rng["cuda"] is not None:
            torch.cuda.set_rng_state(rng["cuda"])
        if rank == 0:
            print(f"resumed from {checkpoint} at step {step}", flush=True)

    meta = {"world_size": world, "data": data, "args": {k: getattr(args, k) for k in SAME_ON_RESUME}}
    metrics = args.metrics.open("a") if args.metrics is not None and rank == 0 else None
    if rank == 0:
        n = sum(p.numel() for p in model.parameters())
        print(f"{world} ranks ({dist.get_backend()}), model {n / 1e6:.2f}M parameters, data {data}", flush=True)
    start, taken, empty = time.perf_counter(), 0, 0
    last: dict[str, Any] | None = None  # this rank's loss, batch digest and epoch at the last step
    model.train()
    while step < args.max_steps:
        before = taken
        for batch in loader:  # this rank's part; iterating again goes on into the next epoch
            ids = to_tensors(batch)["input_ids"].to(device, non_blocking=True)  # int64, as the loss wants
            logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP all-reduces the gradients here: every rank must take every step
            opt.step()
            step, taken = step + 1, taken + 1
            if step == args.max_steps:  # the last step's line goes through files with the final counts (below)
                last = {"loss": loss.item(), "batch": digest(batch["input_ids"]), "epoch": loader.epoch}
            elif step % args.log_every == 0:
                mine = {"loss": loss.item(), "batch": digest(batch["input_ids"]), "epoch": loader.epoch}
                every: list[Any] = [None] * world
                dist.all_gather_object(every, mine)
                if rank == 0:
                    log_step(step, every, time.perf_counter() - start, metrics)
            if args.save_every and step % args.save_every == 0:
                save_checkpoint(args.out / "checkpoints", step, rank, model, opt, loader, meta, tokenizer_file)
            if step == args.max_steps:
                break
        # A pass may be empty once: a state saved after the last batch of an epoch, before the loader saw the
        # epoch end, resumes with the (empty) rest of that epoch. Two empty passes in a row: no data.
        empty = empty + 1 if taken == before else 0
        if empty == 2:
            raise RuntimeError(f"rank {rank}: an epoch without a single batch of {args.batch_size} rows of "
                               f"{args.seq_len + 1} tokens: too little data for {world} ranks")  # fmt: skip

    print(f"rank {rank}: {taken} steps in this run (global step {step}), loader epoch {loader.epoch}", flush=True)
    # The final exchange goes through files, not a collective: gloo's worker thread frees the Python tensors of a
    # collective (all_gather_object's) after handing over its result, and when that happens while the interpreter
    # shuts down the process aborts ("terminate called without an active exception", a torch bug). So the job
    # ends with barriers only, and rank 0 reads every rank's last step and step count from OUT/.ranks.
    ranks = args.out / ".ranks"
    if rank == 0:
        shutil.rmtree(ranks, ignore_errors=True)
        ranks.mkdir(parents=True)
    dist.barrier()
    final = {"last": last, "count": {"rank": rank, "steps": taken, "step": step, "epoch": loader.epoch}}
    (ranks / f"rank{rank}.json").write_text(json.dumps(final))
    dist.barrier()
    if rank == 0:
        reports = [json.loads((ranks / f"rank{r}.json").read_text()) for r in range(world)]
        if all(r["last"] is not None for r in reports):
            log_step(step, [r["last"] for r in reports], time.perf_counter() - start, metrics)
        if metrics is not None:
            metrics.write(json.dumps({"event": "done", "ranks": [r["count"] for r in reports]}) + "\n")
            metrics.close()
        shutil.rmtree(ranks)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
