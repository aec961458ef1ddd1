"""Run the benchmark suite: every comparison with the peers on the same data and machine, then BENCHMARKS.md.

    python -m benchmarks                      # everything, full size (make bench): results in .bench/results
    python -m benchmarks --quick              # everything small, a few minutes: results in .bench/results-quick
    python -m benchmarks text windows         # some workloads only (names below)
    python -m benchmarks --list               # the workloads
    python -m benchmarks report               # rewrite BENCHMARKS.md from the results already there

Each workload is one script in ``benchmarks/``, run in its own process with ``--suite-out DIR`` (``--quick`` too
when asked); it writes ``DIR/<name>.json`` (``benchmarks/suite.py``). A workload that fails is reported and the
others still run; the exit status says whether all of them succeeded. The report (``benchmarks/report.py``) is
written from every result in the folder: ``BENCHMARKS.md`` for a full run, ``DIR/BENCHMARKS.md`` for a quick one
(``--report PATH`` to choose).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402 - benchmarks/report.py

# name -> (script, what it compares). The order is the order of BENCHMARKS.md.
WORKLOADS: dict[str, tuple[str, str]] = {
    "text": ("bench_text.py", "text -> tokenize -> pack -> batch: headrace, HF datasets streaming, tokenizer alone"),
    "windows": ("bench_windows.py", "token windows: headrace, nanoGPT memmap, litdata TokensLoader, MosaicML MDS"),
    "images": ("bench_images.py", "images from tar shards: headrace, WebDataset, litdata"),
    "order": ("bench_order.py", "resume time vs position, shuffle quality: headrace, HF datasets, MosaicML, litdata"),
    "startup": ("bench_startup.py", "time to first batch over 1,000 local shards: headrace, HF, MosaicML, litdata"),
    "remote": ("bench_remote.py", "S3 (SeaweedFS): throughput, faults, first batch over 1,000 shards: headrace, HF"),
    "memory": ("bench_memory.py", "peak RSS against dataset size: headrace, HF datasets, MosaicML, litdata"),
    "core": ("bench_core.py", "Parquet -> shuffle -> map -> batch, and resume in a file: headrace, HF datasets"),
    "loader": ("bench_loader.py", "loader overhead: data wait of a training loop, threads, processes, DataLoader"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"workloads to run (default: all): {', '.join(WORKLOADS)}; or 'report'")
    p.add_argument("--quick", action="store_true", help="small sizes, 1-2 repetitions: the whole suite in minutes")
    p.add_argument("--out", type=Path, default=None, help="results folder (default .bench/results[-quick])")
    p.add_argument("--report", type=Path, default=None, help="where to write the report (see above)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = p.parse_args(argv)
    only_report = args.names == ["report"]
    unknown = [n for n in args.names if n not in WORKLOADS] if not only_report else []
    if unknown:
        p.error(f"unknown workload {', '.join(unknown)}: choose from {', '.join(WORKLOADS)} (or 'report')")
    args.only_report = only_report
    args.names = [] if only_report else (args.names or list(WORKLOADS))
    args.out = args.out or ROOT / ".bench" / ("results-quick" if args.quick else "results")
    if args.report is None:
        args.report = args.out / "BENCHMARKS.md" if args.quick else ROOT / "BENCHMARKS.md"
    return args


def run_one(name: str, out: Path, quick: bool) -> tuple[bool, float]:
    """Run one workload's script in its own process; whether it wrote its result, and the seconds it took."""
    script, _ = WORKLOADS[name]
    cmd = [sys.executable, str(HERE / script), "--suite-out", str(out), *(["--quick"] if quick else [])]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    (out / f"{name}.json").unlink(missing_ok=True)  # a stale result must not pass for this run's
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    ok = done.returncode == 0 and (out / f"{name}.json").exists()
    if not ok:
        why = f"exit status {done.returncode}" if done.returncode else "no result written"
        (out / f"{name}.failed").write_text(f"{' '.join(cmd)}: {why}\n")
        print(f"=== {name} FAILED ({why}) after {seconds:.0f} s", flush=True)
    else:
        (out / f"{name}.failed").unlink(missing_ok=True)
        result = report.Result.read(out / f"{name}.json")
        print(f"=== {name}: done in {seconds:.0f} s; headrace/peer, median [spread over repetitions]:", flush=True)
        print("\n".join(report.ratio_lines(result)), flush=True)
    return ok, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (script, what) in WORKLOADS.items():
            print(f"{name:8s} {script:18s} {what}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.names:
        ok, _ = run_one(name, args.out, args.quick)
        if not ok:
            failed.append(name)
    path = report.write(args.out, args.report, order=list(WORKLOADS))
    print(f"\nreport: {path}" + (f"\nfailed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
