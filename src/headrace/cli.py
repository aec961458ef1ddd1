"""The ``headrace`` command line.

Each subcommand is one :class:`Command`: a function that adds its arguments to its parser and a
function that runs it and returns the exit code; adding ``prepare``, ``bench`` or ``train`` is one
more entry in :data:`COMMANDS`. Human output uses ``rich``, imported only when printing, so the core
package never needs it; ``--json`` prints one machine-readable document on stdout instead.

Errors that headrace raises on purpose (and bad option values) end the command with one line on
stderr, ``headrace: error: ...``, and exit code 2, as argparse does for bad usage — no traceback.

    $ headrace inspect 'data/*.parquet' -n 3
    $ headrace inspect data/ --count --json | jq .totals
    $ headrace prepare 'data/*.parquet' tokens/ --tokenizer tokenizer.json --workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import headrace as hr
from headrace.core.redact import redact
from headrace.formats import format_named

EXIT_ERROR = 2  # the code argparse uses for bad usage; a user's mistake either way
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
SHOWN_SHARDS = 20  # rich output lists this many shards, then "... N more"; --json lists all
CELL_CHARS = 80  # sample values longer than this are cut in rich output
COUNT_THREADS = 8  # row counts are footer reads (indexed) or whole-file reads (--count): I/O bound


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one line of help, how to add its arguments, and how to run it."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- inspect -----------------------------------------------------------------------------------------


def configure_inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or globs (quote globs)")
    parser.add_argument("--format", help="file format when the suffix does not say (parquet, jsonl, csv, ...)")
    parser.add_argument("--columns", help="comma-separated columns to read, e.g. --columns id,text")
    parser.add_argument(
        "--text-mode", choices=("line", "file"), default="line", help="text files: a row per line or per file"
    )
    parser.add_argument(
        "-n", "--rows", type=_non_negative, default=5, metavar="N", help="sample rows to show (default 5; 0: none)"
    )
    parser.add_argument(
        "--count", action="store_true", help="count the rows of sequential formats (jsonl, csv, text): reads every file"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    add_remote_options(parser)


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    """``-o KEY=VALUE`` storage options and the disk cache, for the commands that read datasets."""
    parser.add_argument("-o", "--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option for remote URLs, repeatable; a dotted key nests "
                             "(-o client_kwargs.endpoint_url=http://127.0.0.1:8333); values are JSON when they "
                             "parse (true, 3), text otherwise")  # fmt: skip
    parser.add_argument("--cache-dir", help="keep remote shards in this local directory")
    parser.add_argument("--cache-limit", type=_positive_count, default=None, metavar="BYTES",
                        help="at most this many bytes in --cache-dir (least recently used evicted)")  # fmt: skip


def remote_options(args: argparse.Namespace) -> dict[str, Any]:
    """``hr.open`` keyword arguments from :func:`add_remote_options`' flags."""
    options: dict[str, Any] = {}
    for item in args.storage_option:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"-o {item!r}: expected KEY=VALUE, e.g. -o anon=true")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *parents, leaf = key.split(".")
        target = options
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return {"storage_options": options or None, "cache_dir": args.cache_dir, "cache_limit": args.cache_limit}


def run_inspect(args: argparse.Namespace) -> int:
    ds = hr.open(args.paths, format=args.format, columns=_columns(args.columns), text_mode=args.text_mode,
                 **remote_options(args))  # fmt: skip
    report = inspect_dataset(ds, rows=args.rows, count=args.count)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        _print_inspect(report)
    return 0


def inspect_dataset(ds: hr.Dataset, rows: int = 5, count: bool = False) -> dict[str, Any]:
    """The ``inspect`` report of an opened dataset, as the JSON document ``--json`` prints.

    Keys: ``shards`` (path, format, compression, bytes, rows, indexed — one per file), ``totals``,
    ``schema`` (name, type, nullable) and ``sample`` (the first ``rows`` rows as dicts). Row counts of
    sequential formats are ``None`` unless ``count`` (which reads those files).
    """
    src = ds.source

    def rows_of(i: int) -> int | None:
        shard = src.shards[i]
        fmt = format_named(shard.format)
        return fmt.count(src.fs, shard, src.opts) if fmt.indexed or count else None

    with ThreadPoolExecutor(max_workers=max(1, min(COUNT_THREADS, len(src.shards)))) as pool:
        counts = list(pool.map(rows_of, range(len(src.shards))))
    shards = [
        {
            "path": redact(s.url),
            "format": s.format,
            "compression": s.compression,
            "bytes": s.size,
            "rows": n,
            "indexed": format_named(s.format).indexed,
        }
        for s, n in zip(src.shards, counts, strict=True)
    ]
    totals = {
        "shards": len(shards),
        "bytes": sum(s.size for s in src.shards),
        "rows": sum(n for n in counts if n is not None) if all(n is not None for n in counts) else None,
        "indexed": all(s["indexed"] for s in shards),
        "formats": sorted({s.format for s in src.shards}),
    }
    schema = [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in ds.schema]
    sample = list(ds.take(rows)) if rows > 0 else []
    return {"shards": shards, "totals": totals, "schema": schema, "sample": sample}


def _print_inspect(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    shards, totals = report["shards"], report["totals"]
    root = _common_root([s["path"] for s in shards])
    heading = _plural(totals["shards"], "shard") + (f" in {root}" if root else "")
    console.print(Text(heading, style="bold"))
    table = Table(show_footer=True)
    table.add_column("#", justify="right", footer="total")
    table.add_column("file", overflow="fold", footer=_plural(totals["shards"], "file"))
    table.add_column("format", footer=", ".join(totals["formats"]))
    table.add_column("codec")
    table.add_column("bytes", justify="right", footer=f"{totals['bytes']:,}")
    table.add_column("rows", justify="right", footer=_rows(totals["rows"]))
    for i, s in enumerate(shards[:SHOWN_SHARDS]):
        name = s["path"][len(root) + 1 :] if root else s["path"]
        table.add_row(str(i), Text(name), s["format"], s["compression"] or "-", f"{s['bytes']:,}", _rows(s["rows"]))
    if len(shards) > SHOWN_SHARDS:
        table.add_row("", Text(f"... {len(shards) - SHOWN_SHARDS:,} more", style="dim"), "", "", "", "")
    console.print(table)

    rows = "unknown rows" if totals["rows"] is None else _plural(totals["rows"], "row")
    kind = "indexed (row counts from metadata)" if totals["indexed"] else "sequential (row counts need a full read)"
    console.print(Text(f"{_plural(totals['shards'], 'shard')}, {_size(totals['bytes'])}, {rows}; {kind}"))
    if totals["rows"] is None:
        console.print(Text("pass --count to count the rows of sequential shards (reads every file)", style="dim"))

    console.print(Text("schema", style="bold"))
    schema = Table()
    schema.add_column("column")
    schema.add_column("type")
    for f in report["schema"]:
        schema.add_row(Text(f["name"]), Text(f["type"]))
    console.print(schema)

    if report["sample"]:
        console.print(Text(f"first {_plural(len(report['sample']), 'row')}", style="bold"))
        sample = Table(show_lines=True)
        names = [f["name"] for f in report["schema"]]
        for name in names:
            sample.add_column(Text(name), overflow="fold")
        for row in report["sample"]:
            sample.add_row(*(_cell(row.get(name)) for name in names))
        console.print(sample)


def _columns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    columns = [c.strip() for c in text.split(",") if c.strip()]
    if not columns:
        raise ValueError(f"--columns needs column names separated by commas, got {text!r}")
    return columns


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return n


def _common_root(paths: Sequence[str]) -> str:
    """The deepest folder holding every path (``""`` if none), so the table can show short names."""
    folders = [p.split("/")[:-1] for p in paths]
    if not folders:
        return ""
    common = folders[0]
    for parts in folders[1:]:
        n = 0
        while n < min(len(common), len(parts)) and common[n] == parts[n]:
            n += 1
        common = common[:n]
    root = "/".join(common)
    return root if root and not root.endswith(("/", ":")) else ""  # "s3:/" or "/": show full paths


def _cell(value: Any) -> Any:
    from rich.text import Text

    if value is None:
        return Text("null", style="dim")
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bool, int, float)):
        text = str(value)
    elif isinstance(value, bytes):
        text = repr(value)
    else:
        text = json.dumps(value, default=str)
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return Text(text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…")


def _rows(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# -- prepare -----------------------------------------------------------------------------------------


def configure_prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN", help="text files, directories or globs (quote globs)")
    parser.add_argument("out", metavar="OUT", help="output folder for the .bin/.idx shards and manifest.json")
    parser.add_argument("--tokenizer", required=True, metavar="T",
                        help="a tokenizer.json, a folder holding one, or tiktoken:NAME")  # fmt: skip
    parser.add_argument("--column", default="text", help="the text column (default: text)")
    parser.add_argument("--format", help="input format when the suffix does not say (parquet, jsonl, csv, text, ...)")
    parser.add_argument("--text-mode", choices=("line", "file"), default="line",
                        help="text files: a document per line (default) or per file")  # fmt: skip
    parser.add_argument("--add-eos", action=argparse.BooleanOptionalAction, default=True,
                        help="append the tokenizer's end-of-text id to every document (default: on)")  # fmt: skip
    parser.add_argument("--add-bos", action=argparse.BooleanOptionalAction, default=False,
                        help="prepend the tokenizer's beginning-of-text id (default: off)")  # fmt: skip
    parser.add_argument("--dtype", choices=("auto", "uint16", "int32"), default="auto",
                        help="token dtype; auto: uint16 when the vocabulary fits, else int32")  # fmt: skip
    parser.add_argument("--tokens-per-shard", type=_positive_count, default=None, metavar="N",
                        help="start a new shard at the first document boundary after N tokens "
                        "(default 268M; suffixes k, M, G)")  # fmt: skip
    parser.add_argument("--unit-rows", type=_positive_count, default=None, metavar="N",
                        help="rows of an indexed input (Parquet, Arrow) per unit of work (default 100k)")  # fmt: skip
    parser.add_argument("--workers", type=_positive_count, default=None, metavar="N",
                        help="worker processes (default: the cores); the output does not depend on it")  # fmt: skip
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local processes, or a Ray cluster through Ray Data (same output)")  # fmt: skip
    parser.add_argument("--ray-address", help="Ray cluster to connect to (default: RAY_ADDRESS, or a local Ray)")
    parser.add_argument("--errors", choices=("raise", "skip", "warn"), default="raise",
                        help="malformed records and null texts: stop (default), or skip and count them")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: delete what an earlier run left in OUT (default: resume it)")  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    parser.add_argument("--json", action="store_true", help="print the manifest's totals and the run as JSON")


def run_prepare(args: argparse.Namespace) -> int:
    from headrace.prepare import DEFAULT_TOKENS_PER_SHARD, DEFAULT_UNIT_ROWS, prepare

    result = prepare(
        args.inputs, args.out, args.tokenizer, column=args.column, format=args.format, text_mode=args.text_mode,
        errors=args.errors, add_eos=args.add_eos, add_bos=args.add_bos, dtype=args.dtype,
        tokens_per_shard=args.tokens_per_shard or DEFAULT_TOKENS_PER_SHARD,
        unit_rows=args.unit_rows or DEFAULT_UNIT_ROWS, workers=args.workers, engine=args.engine,
        quiet=args.quiet or args.json, overwrite=args.overwrite, ray_address=args.ray_address,
    )  # fmt: skip
    totals = result.manifest["totals"]
    if args.json:
        run = {"manifest": result.path, "units": result.units, "resumed_units": result.resumed_units,
               "new_tokens": result.new_tokens, "seconds": round(result.seconds, 3)}  # fmt: skip
        sys.stdout.write(json.dumps({"totals": totals, "run": run}, indent=2) + "\n")
    elif not args.quiet:
        rate = result.new_tokens / max(result.seconds, 1e-9)
        resumed = f"; {result.resumed_units} of {result.units} units were done before" if result.resumed_units else ""
        print(f"wrote {_plural(totals['shards'], 'shard')} to {args.out}: {totals['tokens']:,} tokens "
              f"({result.manifest['dtype']}), {_plural(totals['documents'], 'document')}, {_size(totals['bytes'])} "
              f"in {result.seconds:.1f} s ({rate:,.0f} tokens/s{resumed})")  # fmt: skip
        if totals["skipped"]:
            print(f"skipped {_plural(totals['skipped'], 'record')} (--errors {args.errors})")
    return 0


def _positive_count(text: str) -> int:
    """``"2048"``, ``"64k"``, ``"256M"``, ``"1G"`` (powers of 1000) as an integer >= 1."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale > 1 else text
    try:
        n = int(digits) * scale
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (suffixes k, M, G allowed), got {text!r}")
    return n


# -- bench ------------------------------------------------------------------------------------------


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
    parser.add_argument("--buffer-size", type=_positive_count, default=10_000)
    parser.add_argument("--window", type=_positive_count, default=16, help="row groups mixed by the global order")
    parser.add_argument("--seed", type=_non_negative, default=0)
    parser.add_argument("--batch-size", type=_positive_count, default=256, help="paths only (a config batches)")
    parser.add_argument("--batches", type=_positive_count, default=200, help="stop after this many batches")
    parser.add_argument(
        "--workers", type=_non_negative, default=None, help="loader workers (default: 0, or the config's)"
    )
    parser.add_argument("--worker-type", choices=("thread", "process"), default=None)
    parser.add_argument("--prefetch", type=_non_negative, default=None, help="default: 2, or the config's")
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
    ds = hr.open(args.paths, format=args.format, columns=_columns(args.columns), **remote_options(args))
    if args.shuffle == "buffer":
        ds = ds.shuffle(seed=args.seed, buffer_size=args.buffer_size)
    elif args.shuffle == "global":
        ds = ds.shuffle(seed=args.seed, buffer_size=None, window=args.window)
    return hr.Loader(ds.batch(args.batch_size), **overrides), _common_root(args.paths)


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
        print(json.dumps(report, default=str))
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
    table.add_row("peak memory", _size(report["peak_rss_bytes"]))
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


# -- train ------------------------------------------------------------------------------------------


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", default=[], metavar="URL",
                        help="any source headrace opens (default: five Shakespeare plays in the package)")  # fmt: skip
    parser.add_argument("--text-column", default="text", help="the text column of --data (default: text)")
    parser.add_argument("--tokenizer", help="tokenizer.json, a transformers folder or a tiktoken encoding "
                        "(default: a byte-level BPE trained on the data, kept in --out)")  # fmt: skip
    parser.add_argument("--config", help="a pipeline config (.yaml) whose batches hold input_ids")
    parser.add_argument("--seq-len", type=_positive_count, default=128)
    parser.add_argument("--batch-size", type=_positive_count, default=16)
    parser.add_argument("--max-steps", type=_positive_count, default=500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--layers", type=_positive_count, default=2)
    parser.add_argument("--heads", type=_positive_count, default=4)
    parser.add_argument("--embd", type=_positive_count, default=128)
    parser.add_argument("--out", default="headrace-train", help="checkpoints and the trained tokenizer go here")
    parser.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt")
    parser.add_argument("--checkpoint-every", type=_positive_count, default=100, metavar="N")
    parser.add_argument("--log-every", type=_positive_count, default=10, metavar="N")
    parser.add_argument("--seed", type=_non_negative, default=0)
    parser.add_argument("--workers", type=_non_negative, default=0, help="loader worker threads")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when there is one)")
    parser.add_argument("--metrics", help="append a JSON line per logged step to this file")
    parser.add_argument("-o", "--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option for a remote --data (repeatable)")  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    try:
        from headrace.train import TrainOptions, run
    except ImportError as e:
        raise ValueError(f"headrace train needs PyTorch and tokenizers ({e}): pip install torch tokenizers") from None
    if args.embd % args.heads:
        raise ValueError(f"--embd ({args.embd}) must be a multiple of --heads ({args.heads})")
    options = TrainOptions(
        data=args.data, text_column=args.text_column, tokenizer=args.tokenizer, config=args.config,
        seq_len=args.seq_len, batch_size=args.batch_size, max_steps=args.max_steps, lr=args.lr,
        n_layer=args.layers, n_head=args.heads, n_embd=args.embd, out=args.out, resume=args.resume,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed, workers=args.workers,
        device=args.device, metrics=args.metrics,
        storage_options=remote_options(argparse.Namespace(storage_option=args.storage_option, cache_dir=None,
                                                          cache_limit=None))["storage_options"],
    )  # fmt: skip
    summary = run(options)
    first, last = summary["losses"][0], summary["losses"][-1]
    print(f"trained {summary['steps']} steps: loss {first[1]:.3f} (step {first[0]}) -> {last[1]:.3f} "
          f"(step {last[0]}), {summary['tokens_per_s']:,.0f} tok/s, data wait {100 * summary['data_wait']:.1f}%; "
          f"checkpoint {summary['checkpoint']}")  # fmt: skip
    return 0


# -- the command -------------------------------------------------------------------------------------

COMMANDS: tuple[Command, ...] = (
    Command("inspect", "shards, format, schema, rows, bytes and a few sample rows", configure_inspect, run_inspect),
    Command(
        "prepare",
        "tokenize text into token shards (Megatron .bin/.idx) with a manifest; parallel, resumable",
        configure_prepare,
        run_prepare,
    ),
    Command(
        "bench",
        "throughput, time to first batch, peak memory and shuffle quality of a pipeline",
        configure_bench,
        run_bench,
    ),
    Command(
        "train",
        "the main job: stream data into a small GPT and train it (loss, tokens/s, data wait); resumable",
        configure_train,
        run_train,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headrace", description="Stream training data into ML training loops.")
    parser.add_argument("--version", action="version", version=f"headrace {hr.__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.configure(child)
        child.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``headrace`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    >>> main(["--version"])
    headrace 0.1.0
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version or bad usage: argparse has printed what to say
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    try:
        return int(args.run(args))
    except (hr.HeadraceError, ValueError) as e:
        message = redact(" ".join(str(e).split())) or type(e).__name__
        print(f"headrace: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("headrace: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as other Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


__all__ = ["COMMANDS", "Command", "build_parser", "inspect_dataset", "main"]
