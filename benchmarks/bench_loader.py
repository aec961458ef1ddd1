"""Loader overhead: does the training loop wait for data?

A training loop with a fixed synthetic step time (``time.sleep``, which frees the CPU the way a GPU step
does) consumes batches of 16 × 512 tokens — tokenized on the fly from the corpus' Parquet files and
packed — from each feeder in turn, in the same run on the same data:

- ``in memory``: the same batches prepared beforehand (the floor: zero data work during the loop);
- ``headrace threads`` / ``headrace processes``: ``hr.Loader(num_workers=2, worker_type=...)``;
- ``torch DataLoader + headrace``: the ``IterableDataset`` view under ``DataLoader(num_workers=2)``;
- ``torch DataLoader + HF datasets``: HF ``datasets`` streaming the same Parquet with a batched ``map``
  tokenizing with the same tokenizer (fast ``tokenizers`` encoder) and ``run_clm.py``'s ``group_texts``
  (cut into 512-token rows), under ``DataLoader(num_workers=2)``.

Every feeder's batches are checked to be 16 × 512 ``input_ids``.

For each: the data-wait fraction (time blocked in ``next()`` / loop time; also after the first batch is
in hand, which leaves out the start-up), the step rate against the in-memory floor, and the time to the
first batch. Steps of 5 ms (a loader-bound loop) and 50 ms.

    .venv/bin/python benchmarks/bench_loader.py            # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/bench_loader.py --quick    # seconds

Prints a line per feeder, a table, then one JSON line; with ``--suite-out DIR`` it also writes
``DIR/loader.json`` (``benchmarks/suite.py``: every repetition of every feeder, for ``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
import headrace as hr
import suite
from peers import group_texts, hf
from suite import Result, build_parquet, build_tokenizer, eos_id, report_header, report_json, write_suite

ROOT = Path(__file__).resolve().parent.parent / ".bench"
SEQ, BATCH = 512, 16


def headrace_dataset(files: list[Path], tok: Path) -> hr.Dataset:
    return (
        hr.open(str(files[0].parent / "part-*.parquet"), columns=["text"])
        .tokenize(str(tok), column="text", add_eos=True)
        .pack(seq_len=SEQ)
        .batch(BATCH, drop_last=True)
    )


def hf_loader(files: list[Path], tok_path: Path, workers: int) -> Iterable[Any]:
    import torch
    from tokenizers import Tokenizer

    datasets = hf()
    tok = Tokenizer.from_file(str(tok_path))
    eos = eos_id(tok)

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return {"input_ids": [[*e.ids, eos] for e in tok.encode_batch_fast(batch["text"], add_special_tokens=False)]}

    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in files], split="train", streaming=True)
    ds = ds.map(encode, batched=True, remove_columns=["text", "id", "doc"])
    ds = ds.map(functools.partial(group_texts, seq_len=SEQ), batched=True)  # the same 512-token rows as the others
    return torch.utils.data.DataLoader(ds.with_format("torch"), batch_size=BATCH, num_workers=workers, drop_last=True)


def feeders(files: list[Path], tok: Path, workers: int, memory: list[Any]) -> dict[str, Callable[[], Iterable[Any]]]:
    import torch

    from headrace.integrations.torch import IterableDataset

    ds = headrace_dataset(files, tok)
    return {
        "in memory": lambda: iter(memory),
        "headrace threads": lambda: hr.Loader(ds, num_workers=workers, prefetch=8),
        "headrace processes": lambda: hr.Loader(ds, num_workers=workers, prefetch=8, worker_type="process"),
        "torch DataLoader + headrace": lambda: torch.utils.data.DataLoader(
            IterableDataset(ds, prefetch=8), batch_size=None, num_workers=workers
        ),
        "torch DataLoader + HF datasets": lambda: hf_loader(files, tok, workers),
    }


def train(batches: Iterable[Any], steps: int, step_s: float) -> dict[str, float]:
    """Run ``steps`` steps of ``step_s`` seconds: the wait for each batch, and the whole loop's time."""
    began = time.perf_counter()
    it: Iterator[Any] = iter(batches)
    wait, first, n = 0.0, None, 0
    while n < steps:
        asked = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        got = time.perf_counter()
        wait += got - asked
        first = got - began if first is None else first
        assert tuple(batch["input_ids"].shape) == (BATCH, SEQ), f"a batch of {tuple(batch['input_ids'].shape)}"
        time.sleep(step_s)
        n += 1
    total = time.perf_counter() - began
    close = getattr(it, "close", None)
    if close is not None:
        close()
    first = first or 0.0
    steady = (wait - first) / (total - first) if total > first else 0.0  # after the first batch is in hand
    return {"steps": n, "wait": wait, "total": total, "first": first, "steady": max(0.0, steady)}


# The suite's role of each feeder: the floor, the peer, and headrace under its three loaders.
ROLES: dict[str, suite.Role] = {"in memory": "reference", "torch DataLoader + HF datasets": "peer"}
# The suite's metrics: (name, its value in one ``train`` run, higher is better)
METRICS: list[tuple[str, Callable[[dict[str, float]], float], bool]] = [
    ("data-wait fraction", lambda r: r["wait"] / r["total"], False),
    ("data-wait fraction after the first batch", lambda r: r["steady"], False),
    ("steps/s", lambda r: r["steps"] / r["total"], True),
    ("seconds to first batch", lambda r: r["first"], False),
]


def suite_result(
    runs: dict[tuple[float, str], list[dict[str, float]]],
    steps: int,
    repeat: int,
    workers: int,
    rows: int,
    info: dict[str, Any],
    quick: bool,
) -> Result:
    """The run as the suite's ``Result`` "loader": every repetition of every feeder (``benchmarks/suite.py``)."""
    res = Result(
        "loader",
        "Loader overhead: the data wait of a training loop (headrace threads, processes, torch DataLoader; HF)",
        quick=quick,
        machine=info,
    )
    for (ms, name), rs in runs.items():
        case = f"Parquet → tokenize → pack {SEQ} → batch {BATCH}, {ms:g} ms step, {workers} workers"
        for metric, value, higher in METRICS:
            res.add(
                case, name, metric, [value(r) for r in rs], role=ROLES.get(name, "headrace"), higher_is_better=higher
            )
    fewest = {f"{name} ({ms:g} ms)": min(int(r["steps"]) for r in rs) for (ms, name), rs in runs.items()}
    short = [f"{k}: {n}" for k, n in fewest.items() if n < steps]
    took = f"every run took all {steps} steps." if not short else "runs that ran out of data first: " + "; ".join(short)
    res.notes += [
        f"Data: {rows:,} real paragraphs (tests/corpora.py) in Parquet, tokenized on the fly (byte-level BPE 16k, "
        f"EOS after every document) and packed into {BATCH} × {SEQ} batches; the step is a time.sleep, which frees "
        f"the CPU as a GPU step does; {steps} steps per run; 'in memory' holds the first {steps} batches of "
        "headrace's pipeline, prepared beforehand.",
        f"Repetitions: {repeat}; a feeder's repetitions run back to back (feeder after feeder, not interleaved); a "
        "fresh loader (and worker pool) for every run, so 'seconds to first batch' includes start-up.",
        f"Check passed: every batch of every feeder had {BATCH} × {SEQ} input_ids; {took}",
    ]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small run, for tests")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--step-ms", default=None, help="comma-separated step times in ms (default 5,50)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--suite-out", type=Path, default=None, help="also write the suite's result DIR/loader.json")
    args = p.parse_args(argv)
    steps = args.steps or (20 if args.quick else 200)
    repeat = args.repeat or (1 if args.quick else 3)
    step_ms = [float(s) for s in (args.step_ms or ("5" if args.quick else "5,50")).split(",")]
    info = suite.script_machine()
    results = report_header("headrace benchmark: loader overhead against a synthetic training step", info, args)
    started, suite_machine = time.perf_counter(), suite.machine()
    files = build_parquet(ROOT, 20_000 if args.quick else None)
    tok = build_tokenizer(ROOT)
    memory = [{k: np.array(v) for k, v in b.items()} for b in islice(hr.Loader(headrace_dataset(files, tok)), steps)]
    rows: list[dict[str, Any]] = []
    raw: dict[tuple[float, str], list[dict[str, float]]] = {}  # every run, for the suite's result
    for ms in step_ms:
        for name, make in feeders(files, tok, args.workers, memory).items():
            runs = [train(make(), steps, ms / 1000) for _ in range(repeat)]
            raw[(ms, name)] = runs
            ran = min(r["steps"] for r in runs)
            waits = [r["wait"] / r["total"] for r in runs]
            rates = [r["steps"] / r["total"] for r in runs]
            rows.append({
                "step_ms": ms, "feeder": name, "steps": ran, "data_wait": statistics.median(waits),
                "data_wait_min": min(waits), "data_wait_max": max(waits), "steps_per_s": statistics.median(rates),
                "first_batch_s": statistics.median(r["first"] for r in runs),
                "data_wait_steady": statistics.median(r["steady"] for r in runs),
            })  # fmt: skip
            print(f"  step {ms:g} ms  {name:32s} data wait {100 * rows[-1]['data_wait']:5.1f}% "
                  f"[{100 * min(waits):.1f}-{100 * max(waits):.1f}]  {rows[-1]['steps_per_s']:6.1f} steps/s  "
                  f"first batch {rows[-1]['first_batch_s']:.2f} s", flush=True)  # fmt: skip
    print()
    print(f"{'step':>6} {'feeder':32} {'data wait':>10} {'after 1st':>10} {'steps/s':>8} {'vs memory':>10} "
          f"{'first batch':>12}")  # fmt: skip
    for ms in step_ms:
        floor = next(r for r in rows if r["step_ms"] == ms and r["feeder"] == "in memory")["steps_per_s"]
        for r in (r for r in rows if r["step_ms"] == ms):
            r["vs_memory"] = r["steps_per_s"] / floor
            print(f"{ms:>4g}ms {r['feeder']:32} {100 * r['data_wait']:>9.1f}% {100 * r['data_wait_steady']:>9.1f}% "
                  f"{r['steps_per_s']:>8.1f} "
                  f"{r['vs_memory']:>9.2f}x {r['first_batch_s']:>11.2f}s")  # fmt: skip
    results.update(rows=rows, steps=steps, repeat=repeat, workers=args.workers, seq=SEQ, batch=BATCH)
    n_rows = sum(pq.read_metadata(f).num_rows for f in files)
    write_suite(suite_result(raw, steps, repeat, args.workers, n_rows, suite_machine, args.quick), args, started)
    return report_json(results, args)


if __name__ == "__main__":
    raise SystemExit(main())
