"""The core benchmark: headrace against Hugging Face ``datasets`` streaming, same run, same data, same machine.

Two measurements on real text (the paragraphs of ``corpora/``, repeated with fresh ids):

1. **Throughput** (rows/s): local Parquet -> shuffle(buffer 10,000) -> batched map adding a text-length
   column -> batches of 256, iterated to the end. headrace ``Loader`` with ``num_workers`` 0 and 2; HF
   ``load_dataset("parquet", streaming=True).shuffle(...).map(..., batched=True).iter(batch_size=256)``.
   The main workload gives both the same per-row Python function; a second one gives each library its
   columnar (Arrow) map with ``pyarrow.compute.utf8_length`` and Arrow batches out (headrace
   ``batch(256, batch_format="arrow")``, HF's Arrow tables). Repetitions are interleaved (A B A B ...)
   so that load from other processes hits every contender alike; the median is reported.
2. **Resume cost** (seconds to the first batch): Parquet -> batched map -> batches of 256 over a 10M-row
   epoch, checkpointed at 50%. Each library iterates to the checkpoint once, for real, and saves its own
   ``state_dict()`` as JSON. Then, timed: build a fresh pipeline, load the state, take the first batch,
   (a) in the same process and (b) in a fresh Python process, from launch (imports included). Each
   resumed batch is checked against the batch the uninterrupted run delivered next. The same epoch is
   written as 25 files and as 1 file: HF replays the current file up to the checkpoint, so its cost
   depends on where the checkpoint falls inside a file; headrace seeks to the row group.

Run: ``.venv/bin/python benchmarks/bench_core.py`` (``make bench``); ``--quick`` is a smoke run under a
minute. Data is generated into ``.bench/`` once and reused. Prints a table, then one JSON line; with
``--suite-out DIR`` it also writes ``DIR/core.json`` (``benchmarks/suite.py``: every repetition of every
contender, for ``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import headrace as hr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402 - benchmarks/suite.py: the suite's common result format
from peers import HF_ENV, hf_parquet  # noqa: E402
from suite import (  # noqa: E402
    DataSpec,
    Result,
    build_data,
    count_label,
    report_header,
    report_json,
    warm_page_cache,
    write_suite,
)

BATCH = 256
SHUFFLE_BUFFER = 10_000
Batches = Iterator[dict[str, Any]]


# -- the user functions, the same for both libraries ---------------------------------------------------
def add_len(batch: dict[str, Any]) -> dict[str, Any]:
    """Batched map with per-row Python: the number of characters of each text."""
    return {"n_chars": [len(t) for t in batch["text"]]}


def add_len_arrow(batch: dict[str, pa.Array]) -> dict[str, Any]:
    """headrace ``batch_format="arrow"``: the same column, computed by Arrow."""
    return {"n_chars": pc.utf8_length(batch["text"])}


def add_len_arrow_table(table: pa.Table) -> pa.Table:
    """HF ``with_format("arrow")``: the same column, computed by Arrow (HF wants a table back)."""
    return table.append_column("n_chars", pc.utf8_length(table["text"]))


# -- Hugging Face datasets ----------------------------------------------------------------------------
def hf_open(files: list[Path]) -> Any:
    return hf_parquet([str(p) for p in files])


# -- 1. throughput ------------------------------------------------------------------------------------
@dataclass
class Throughput:
    key: str
    name: str
    rows: int
    seconds: list[float] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / statistics.median(self.seconds)


def throughput(files: list[Path], rows: int, workers: list[int], repeat: int) -> dict[str, Throughput]:
    glob = str(files[0].parent / "part-*.parquet")

    def headrace(arrow: bool, num_workers: int, prefetch: int = 2) -> Callable[[], Batches]:
        def make() -> Batches:
            ds = hr.open(glob).shuffle(seed=0, buffer_size=SHUFFLE_BUFFER)
            fn = add_len_arrow if arrow else add_len
            ds = ds.map(fn, batched=True, batch_format="arrow" if arrow else "numpy")
            batches = ds.batch(BATCH, batch_format="arrow" if arrow else "numpy")  # Arrow in, Arrow out, as HF
            return iter(hr.Loader(batches, num_workers=num_workers, prefetch=prefetch))

        return make

    def hf_python() -> Batches:
        ds = hf_open(files).shuffle(seed=0, buffer_size=SHUFFLE_BUFFER).map(add_len, batched=True)
        return iter(ds.iter(batch_size=BATCH))

    def hf_arrow() -> Batches:
        ds = hf_open(files).with_format("arrow").shuffle(seed=0, buffer_size=SHUFFLE_BUFFER)
        return iter(ds.map(add_len_arrow_table, batched=True).iter(batch_size=BATCH))

    variants: list[tuple[str, str, Callable[[], Batches]]] = [("hf", "HF datasets streaming", hf_python)]
    variants += [(f"headrace_w{n}", f"headrace num_workers={n}", headrace(False, n)) for n in workers]
    variants += [("headrace_w0_p0", "headrace num_workers=0 prefetch=0", headrace(False, 0, 0))]
    variants += [("hf_arrow", "HF datasets streaming", hf_arrow)]
    variants += [(f"headrace_arrow_w{n}", f"headrace num_workers={n}", headrace(True, n)) for n in workers]
    variants += [("headrace_arrow_w0_p0", "headrace num_workers=0 prefetch=0", headrace(True, 0, 0))]
    results = {key: Throughput(key, name, rows) for key, name, _ in variants}
    for _, _, make in variants:  # untimed: imports, HF's module resolution, the first footers
        warm = make()
        next(warm)
        warm.close()  # type: ignore[attr-defined]
    for rep in range(repeat):
        for key, _, make in variants:
            gc.collect()
            t0 = time.perf_counter()
            n = 0
            for batch in make():
                n += len(batch["id"])
            results[key].seconds.append(time.perf_counter() - t0)
            if n != rows:
                raise RuntimeError(f"{key}: iterated {n} rows, expected {rows}")
        print(
            f"  repetition {rep + 1}/{repeat}: "
            + ", ".join(f"{k} {rows / r.seconds[-1]:,.0f}" for k, r in results.items()),
            flush=True,
        )
    return results


# -- 2. resume ----------------------------------------------------------------------------------------
@dataclass
class Resume:
    key: str
    name: str
    files: int
    at_batch: int  # batches delivered before the checkpoint
    produce_s: float  # iterating to the checkpoint once (not part of the resume cost)
    state_bytes: int  # the state as JSON
    resume_s: list[float] = field(default_factory=list)  # in process: build + load state + first batch
    cold_s: list[float] = field(default_factory=list)  # in process: build + first batch of the epoch
    fresh_resume_s: list[float] = field(default_factory=list)  # new process: launch -> first resumed batch
    fresh_cold_s: list[float] = field(default_factory=list)  # new process: launch -> first batch of the epoch
    exact: bool = True  # every resumed first batch was the batch the uninterrupted run delivered next

    def median(self, what: str) -> float:
        values: list[float] = getattr(self, what)
        return statistics.median(values) if values else float("nan")


def _first_batch_key(batch: dict[str, Any]) -> list[list[int]]:
    return [[int(i) for i in batch["id"]], [int(n) for n in batch["n_chars"]]]


# A fresh process that resumes (or starts) the resume pipeline and reports when its first batch arrived.
# Run with ``python -c``, so that it imports only the library it measures. The map function is defined
# in ``__main__`` as in this script, so that headrace's pipeline fingerprint matches the saved state.
_CHILD = r"""
import json, os, sys, time
cfg = json.loads(sys.argv[1])

def add_len(batch):
    return {"n_chars": [len(t) for t in batch["text"]]}

if cfg["lib"] == "headrace":
    import headrace as hr
    t_import = time.time()
    ds = hr.open(cfg["glob"]).map(add_len, batched=True).batch(cfg["batch"])
    loader = hr.Loader(ds, num_workers=cfg["workers"])
    if cfg["state"]:
        with open(cfg["state"]) as f:
            loader.load_state_dict(json.load(f))
    first = next(iter(loader))
else:
    os.environ.update(cfg["env"])
    import datasets
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    datasets.disable_progress_bars()
    t_import = time.time()
    ds = datasets.load_dataset("parquet", data_files=cfg["files"], split="train", streaming=True,
                               cache_dir=cfg["env"]["HF_HOME"]).map(add_len, batched=True)
    if cfg["state"]:
        with open(cfg["state"]) as f:
            ds.load_state_dict(json.load(f))
    first = next(iter(ds.iter(batch_size=cfg["batch"])))
t_first = time.time()
key = [[int(i) for i in first["id"]], [int(n) for n in first["n_chars"]]]
print(json.dumps({"import": t_import, "first": t_first, "key": key}), flush=True)
os._exit(0)
"""


def fresh_process(cfg: dict[str, Any]) -> tuple[float, list[list[int]]]:
    """Seconds from launching a new Python to its first batch, and that batch's key."""
    launch = time.time()
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"fresh-process run failed ({cfg['lib']}):\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["first"] - launch, report["key"]


def resume_one(lib: str, files: list[Path], at_batch: int, repeat: int, workers: int, tmp: Path) -> Resume:
    """Checkpoint ``lib`` after ``at_batch`` batches, then time restoring it, in process and in a new one."""
    glob = str(files[0].parent / "part-*.parquet")

    def start(state: dict[str, Any] | None) -> tuple[Batches, Callable[[], dict[str, Any]]]:
        if lib == "headrace":
            loader = hr.Loader(hr.open(glob).map(add_len, batched=True).batch(BATCH), num_workers=workers)
            if state is not None:
                loader.load_state_dict(state)
            return iter(loader), loader.state_dict
        ds = hf_open(files).map(add_len, batched=True)
        if state is not None:
            ds.load_state_dict(state)
        return iter(ds.iter(batch_size=BATCH)), ds.state_dict

    t0 = time.perf_counter()
    it, state_dict = start(None)
    for _ in range(at_batch):
        next(it)
    text = json.dumps(state_dict())  # what a checkpoint file holds; both states are plain JSON
    expected = _first_batch_key(next(it))
    it.close()  # type: ignore[attr-defined]
    name = "HF datasets streaming" if lib == "hf" else f"headrace num_workers={workers}"
    key = "hf" if lib == "hf" else f"headrace_w{workers}"
    out = Resume(key, name, len(files), at_batch, time.perf_counter() - t0, len(text.encode()))
    state_path = tmp / f"{key}-{len(files)}.json"
    state_path.write_text(text)
    cfg = {
        "lib": lib,
        "glob": glob,
        "files": [str(p) for p in files],
        "batch": BATCH,
        "workers": workers,
        "env": HF_ENV,
    }
    for _ in range(repeat):
        for resumed in (True, False):
            gc.collect()
            t0 = time.perf_counter()
            it, _ = start(json.loads(text) if resumed else None)
            first = _first_batch_key(next(it))
            (out.resume_s if resumed else out.cold_s).append(time.perf_counter() - t0)
            it.close()  # type: ignore[attr-defined]
            seconds, fresh_first = fresh_process({**cfg, "state": str(state_path) if resumed else None})
            (out.fresh_resume_s if resumed else out.fresh_cold_s).append(seconds)
            if resumed:
                out.exact = out.exact and first == expected and fresh_first == expected
    return out


def resume(files: list[Path], rows: int, at: float, repeat: int, workers: list[int]) -> list[Resume]:
    at_batch = int(rows * at) // BATCH
    per_file = rows / len(files)
    where = at_batch * BATCH
    print(
        f"  {len(files)} file(s): checkpoint after {at_batch:,} batches = row {where:,}, which is row "
        f"{where - int(where // per_file * per_file):,} of file {int(where // per_file)} "
        f"({per_file:,.0f} rows per file)",
        flush=True,
    )
    out = []
    with tempfile.TemporaryDirectory(prefix="headrace-bench-state-") as tmp:
        for lib, n in [("hf", 0)] + [("headrace", n) for n in workers]:
            r = resume_one(lib, files, at_batch, repeat, n, Path(tmp))
            print(
                f"    {r.name:<26} resume {r.median('resume_s'):.3f} s "
                f"(fresh process {r.median('fresh_resume_s'):.3f} s)  "
                f"cold {r.median('cold_s'):.3f} s (fresh process {r.median('fresh_cold_s'):.3f} s)  "
                f"exact={r.exact}  state {r.state_bytes:,} B  [checkpoint produced in {r.produce_s:.1f} s]",
                flush=True,
            )
            out.append(r)
    return out


# -- report -------------------------------------------------------------------------------------------
def print_summary(tp: dict[str, Throughput], rs: list[Resume], args: argparse.Namespace) -> None:
    print("\n" + "=" * 100)
    if tp:
        print(
            f"Throughput: {args.rows:,} rows, shuffle({SHUFFLE_BUFFER:,}) -> batched map -> batch({BATCH}); "
            f"rows/s, median of {args.repeat}"
        )
        print(f"  {'map':<8}{'loader':<38}{'rows/s':>14}{'vs HF':>10}")
        for kind, prefix, base in (("Python", "headrace_w", "hf"), ("Arrow", "headrace_arrow_w", "hf_arrow")):
            ref = tp[base].rows_per_s
            for t in [tp[base]] + [v for k, v in tp.items() if k.startswith(prefix)]:
                print(f"  {kind:<8}{t.name:<38}{t.rows_per_s:>14,.0f}{t.rows_per_s / ref:>9.2f}x")
    if rs:
        print(
            f"\nResume at {args.resume_at:.0%} of {args.resume_rows:,} rows: seconds to the first batch, median "
            f"of {args.repeat} (build pipeline + load state + first batch; 'fresh' = new process, imports included)"
        )
        print(
            f"  {'files':>5}  {'loader':<26}{'resume':>9}{'HF/this':>9}{'fresh':>9}{'HF/this':>9}"
            f"{'cold':>8}{'fresh cold':>12}{'exact':>7}{'state B':>9}"
        )
        for files in dict.fromkeys(r.files for r in rs):
            group = [r for r in rs if r.files == files]
            hf_r = next(r for r in group if r.key == "hf")
            for r in group:
                print(
                    f"  {files:>5}  {r.name:<26}{r.median('resume_s'):>9.3f}"
                    f"{hf_r.median('resume_s') / r.median('resume_s'):>8.1f}x{r.median('fresh_resume_s'):>9.3f}"
                    f"{hf_r.median('fresh_resume_s') / r.median('fresh_resume_s'):>8.1f}x"
                    f"{r.median('cold_s'):>8.3f}{r.median('fresh_cold_s'):>12.3f}"
                    f"{r.exact!s:>7}{r.state_bytes:>9,}"
                )
    print("=" * 100)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None, help="rows of the throughput data (default 1,000,000)")
    p.add_argument("--resume-rows", type=int, default=None, help="rows of the resume epoch (default 10,000,000)")
    p.add_argument(
        "--resume-files", default=None, help="comma-separated file counts to write the resume epoch as (default 25,1)"
    )
    p.add_argument("--resume-at", type=float, default=0.5, help="checkpoint position, a fraction of the epoch")
    p.add_argument("--workers", default="0,2", help="headrace num_workers values (comma-separated)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions, median reported (default 3)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run in under a minute")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="where generated Parquet goes")
    p.add_argument("--skip", choices=["throughput", "resume"], action="append", default=[], help="skip a part")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON results to this file")
    p.add_argument("--suite-out", type=Path, default=None, help="also write the suite's result DIR/core.json")
    args = p.parse_args(argv)
    args.rows = args.rows or (50_000 if args.quick else 1_000_000)
    args.resume_rows = args.resume_rows or (500_000 if args.quick else 10_000_000)
    args.resume_files = [int(n) for n in (args.resume_files or ("5" if args.quick else "25,1")).split(",")]
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if not 0 < args.resume_at < 1:
        p.error("--resume-at must be between 0 and 1")
    return args


# Why headrace trails HF on the Arrow map (written from a profile; added to the notes when it trails in the run).
ARROW_BEHIND = (
    "Arrow map, where headrace trails HF: a cProfile of headrace num_workers=0 prefetch=0 over the 1M rows (0.7 s, "
    "Arrow batches out) puts ~50% in Parquet decoding (formats/parquet.py _pieces: pyarrow's reader at its own "
    "speed, as HF's), ~15% in the shuffle's Arrow take and the rest in per-batch Python: ~50 us for each of the "
    "3,907 batches of 256 rows (the cursor's slices, the record batch, the loader's accounting), where HF takes "
    "5,000 rows at a time out of one table and slices it. Before this run, headrace collated every batch into "
    "numpy (strings into object arrays): batch_format='arrow' took the same pass from 0.83 to 0.62 s."
)


def suite_result(
    tp: dict[str, Throughput], rs: list[Resume], args: argparse.Namespace, notes: list[str], info: dict[str, Any]
) -> Result:
    """The run as the suite's ``Result`` "core": every repetition of every contender (``benchmarks/suite.py``)."""
    res = Result(
        "core",
        "Parquet → shuffle → map → batch, and resuming mid-epoch: headrace vs HF datasets streaming",
        quick=args.quick,
        notes=list(notes),
        machine=info,
    )
    for kind, prefix, base in (("Python", "headrace_w", "hf"), ("Arrow", "headrace_arrow_w", "hf_arrow")):
        if base not in tp:
            continue
        case = f"Parquet → shuffle {count_label(SHUFFLE_BUFFER)} → map ({kind}) → batch {BATCH}"
        for t in [tp[base]] + [v for k, v in tp.items() if k.startswith(prefix)]:
            role = "peer" if t.key.startswith("hf") else "headrace"
            res.add(case, t.name, "rows/s", [t.rows / s for s in t.seconds], role=role)
        best = max((v.rows_per_s for k, v in tp.items() if k.startswith(prefix)), default=0.0)
        if kind == "Arrow" and best < tp[base].rows_per_s:
            res.notes.append(ARROW_BEHIND)
    for r in rs:
        role = "peer" if r.key == "hf" else "headrace"
        where = f"{r.files} file{'s' if r.files > 1 else ''}"
        case = f"Resume at {args.resume_at:.0%} ({where}) → map (Python) → batch {BATCH}"
        res.add(case, r.name, "seconds to first batch, in process", r.resume_s, role=role, higher_is_better=False)
        res.add(
            case, r.name, "seconds to first batch, fresh process", r.fresh_resume_s, role=role, higher_is_better=False
        )
        res.add(case, r.name, "state bytes (JSON)", [r.state_bytes], role=role, higher_is_better=False)
        case = f"Start of epoch, no state ({where}) → map (Python) → batch {BATCH}"
        res.add(case, r.name, "seconds to first batch, in process", r.cold_s, role=role, higher_is_better=False)
        res.add(
            case, r.name, "seconds to first batch, fresh process", r.fresh_cold_s, role=role, higher_is_better=False
        )
    for files in dict.fromkeys(r.files for r in rs):
        group = [r for r in rs if r.files == files]
        exact = [r.name for r in group if r.exact]
        wrong = [r.name for r in group if not r.exact]
        line = f"Resume check, {files} file(s), checkpoint after {group[0].at_batch:,} batches: "
        if exact:
            line += "passed for " + ", ".join(exact) + " (the first resumed batch, in process and in a fresh "
            line += "process, equals the batch the uninterrupted run delivered next, in every repetition)"
        if wrong:
            line += ("; " if exact else "") + "FAILED for " + ", ".join(wrong) + " (a resumed batch differed)"
        res.notes.append(line)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    title = "headrace core benchmark: headrace vs Hugging Face datasets streaming (same run, same data)"
    results = report_header(title, suite.script_machine(), args)
    t_start = time.perf_counter()
    notes: list[str] = []  # for the suite's result: the data and the checks that passed
    suite_machine = suite.machine()  # the suite's machine record, with the load when the run started
    tp: dict[str, Throughput] = {}
    if "throughput" not in args.skip:
        spec = DataSpec(rows=args.rows, shards=10, row_group_size=10_000, max_chars=None)
        files = build_data(spec, args.data_dir)
        warm_page_cache(files)
        print(f"\n[1] throughput: {args.rows:,} rows in {len(files)} Parquet files", flush=True)
        tp = throughput(files, args.rows, args.workers, args.repeat)
        mb = sum(p.stat().st_size for p in files) / 1e6
        notes.append(
            f"Throughput data: {args.rows:,} rows of real paragraphs (tests/corpora.py, repeated with fresh ids) in "
            f"{len(files)} Parquet files ({mb:,.0f} MB, row groups of {spec.row_group_size:,}), in the page cache; "
            f"repetitions: {args.repeat}, interleaved. Check passed: every contender iterated exactly "
            f"{args.rows:,} rows in every repetition."
        )
        results["throughput"] = {
            "data": asdict(spec),
            "rows_per_s": {k: round(v.rows_per_s) for k, v in tp.items()},
            "ratio_vs_hf": {
                k: round(v.rows_per_s / tp["hf_arrow" if "arrow" in k else "hf"].rows_per_s, 3) for k, v in tp.items()
            },
            "seconds": {k: [round(s, 3) for s in v.seconds] for k, v in tp.items()},
        }
    rs: list[Resume] = []
    if "resume" not in args.skip:
        print(f"\n[2] resume: {args.resume_rows:,} rows (paragraphs cut to 100 characters), map -> batch({BATCH})")
        for n_files in args.resume_files:
            spec = DataSpec(args.resume_rows, n_files, row_group_size=20_000, max_chars=100)
            files = build_data(spec, args.data_dir)
            warm_page_cache(files)
            rs += resume(files, args.resume_rows, args.resume_at, args.repeat, args.workers)
            mb = sum(p.stat().st_size for p in files) / 1e6
            notes.append(
                f"Resume data: {args.resume_rows:,} rows (paragraphs cut to 100 characters) in {n_files} Parquet "
                f"file(s) ({mb:,.0f} MB, row groups of {spec.row_group_size:,}); checkpoint at "
                f"{args.resume_at:.0%} of the epoch; repetitions: {args.repeat}; 'fresh process' counts from the "
                "launch of a new Python, imports included."
            )
        results["resume"] = [
            {
                **asdict(r),
                **{
                    f"{w}_median": round(r.median(w), 4)
                    for w in ("resume_s", "cold_s", "fresh_resume_s", "fresh_cold_s")
                },
            }
            for r in rs
        ]
    results["load_after"] = round(os.getloadavg()[0], 2)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    print_summary(tp, rs, args)
    write_suite(suite_result(tp, rs, args, notes, suite_machine), args, t_start)
    return report_json(results, args)


if __name__ == "__main__":
    sys.exit(main())
