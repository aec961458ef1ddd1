"""``headrace bench``: throughput, first batch, peak memory and shuffle quality of a pipeline (:mod:`headrace.bench`).

On files, with the shuffle and loader as flags, or on a pipeline config with its own:

    $ headrace bench 'data/*.parquet' --shuffle global --batches 100
    $ headrace bench pipeline.yaml --workers 4 --step-time 0.05 --json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import headrace as hr
from headrace.cli.display import common_root, human_size
from headrace.cli.options import add_remote_options, non_negative, parse_columns, positive_count, remote_options
from headrace.core.redact import redact, redacted


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH|CONFIG",
                        help="files, globs or directories; or one pipeline config (.yaml) with its steps and "
                             "loader options")  # fmt: skip
    parser.add_argument("--format", help="the format, when file suffixes do not say")
    parser.add_argument("--columns", help="read only these columns (comma-separated)")
    parser.add_argument(
        "--shuffle",
        choices=("none", "buffer", "global"),
        default="none",
        help="none; a window shuffle of --buffer-size rows; or the global order (indexed sources)",
    )
    parser.add_argument(
        "--buffer-size", type=positive_count, default=10_000, help="rows in the buffer of --shuffle buffer"
    )
    parser.add_argument("--window", type=positive_count, default=16, help="row groups mixed by the global order")
    parser.add_argument("--seed", type=non_negative, default=0, help="the shuffle's seed")
    parser.add_argument("--batch-size", type=positive_count, default=256, help="paths only (a config batches)")
    parser.add_argument("--batches", type=positive_count, default=200, help="stop after this many batches")
    parser.add_argument(
        "--workers", type=non_negative, default=None, help="loader workers (default: 0, or the config's)"
    )
    parser.add_argument("--worker-type", choices=("thread", "process"), default=None,
                        help="loader worker kind (default: thread, or the config's)")  # fmt: skip
    parser.add_argument(
        "--prefetch", type=non_negative, default=None, help="batches prefetched (default: 2, or the config's)"
    )
    parser.add_argument("--step-time", type=float, default=0.0, metavar="SECONDS",
                        help="play a training loop of SECONDS per step: does the loader keep up?")  # fmt: skip
    parser.add_argument(
        "--quality",
        metavar="ID,GROUP",
        help="measure the order: the column with the original index and a column to group by",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")  # fmt: skip
    add_remote_options(parser)


def _bench_loader(args: argparse.Namespace) -> tuple[hr.Loader, str]:
    """The loader ``headrace bench`` measures, and what to call it."""
    overrides = {k: v for k, v in (("num_workers", args.workers), ("prefetch", args.prefetch),
                                   ("worker_type", args.worker_type)) if v is not None}  # fmt: skip
    if len(args.paths) == 1 and args.paths[0].lower().endswith((".yaml", ".yml")):
        pipeline = hr.Pipeline.from_yaml(args.paths[0])
        return pipeline.loader(**overrides), args.paths[0]
    ds = hr.open(args.paths, format=args.format, columns=parse_columns(args.columns), **remote_options(args))
    if args.shuffle == "buffer":
        ds = ds.shuffle(seed=args.seed, buffer_size=args.buffer_size)
    elif args.shuffle == "global":
        ds = ds.shuffle(seed=args.seed, buffer_size=None, window=args.window)
    return hr.Loader(ds.batch(args.batch_size), **overrides), common_root(args.paths)


def run_bench(args: argparse.Namespace) -> int:
    from headrace import bench

    if args.step_time < 0:
        raise ValueError(f"--step-time must be >= 0, got {args.step_time}")
    loader, name = _bench_loader(args)
    quality = None
    if args.quality:
        names = [n.strip() for n in args.quality.split(",")]
        if len(names) != 2 or not all(names):
            raise ValueError(f"--quality takes ID,GROUP (two column names), got {args.quality!r}")
        quality = (names[0], names[1])
    report = bench.run(loader, batches=args.batches, quality=quality, step_time=args.step_time)
    report["pipeline"] = loader.dataset.describe()
    if args.json:
        print(json.dumps(redacted(report), default=str))
        return 0
    _print_bench(report, name, loader)
    return 0


def _print_bench(report: dict[str, Any], name: str, loader: hr.Loader) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"headrace bench: {redact(name)}", show_header=False)
    size = loader.dataset.batch_size
    table.add_row("batches", f"{report['batches']} x {size} rows ({loader.num_workers} {loader.worker_type} workers)")
    table.add_row("rows/s", f"{report['rows_per_s']:,.0f}" if report["rows_per_s"] else "-")
    if report["tokens_per_s"]:
        table.add_row("tokens/s", f"{report['tokens_per_s']:,.0f}")
    table.add_row("first batch", f"{report['first_batch_s']:.3f} s" if report["first_batch_s"] else "-")
    table.add_row("peak memory", human_size(report["peak_rss_bytes"]))
    total = sum(s["seconds"] for s in report["stages"]) or 1.0
    for stage in report["stages"]:
        table.add_row(f"  stage {stage['stage']}", f"{stage['seconds']:.3f} s ({100 * stage['seconds'] / total:.0f}%)")
    if "data_wait" in report:
        verdict = "keeps up" if report["keeps_up"] else "the loader is the bottleneck"
        table.add_row(f"step {report['step_time']:g} s", f"data wait {100 * report['data_wait']:.1f}%: {verdict}")
    q = report["quality"]
    if q:
        table.add_row("batch mix distance", f"{q['batch_mix_distance']:.3f} (uniform shuffle: {q['noise_floor']:.3f})")
        table.add_row("rank correlation", f"{q['rank_correlation']:+.3f} (1: not shuffled, 0: well shuffled)")
    Console().print(table)
