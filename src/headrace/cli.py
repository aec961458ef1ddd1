"""The ``headrace`` command line.

Each subcommand is one :class:`Command`: a function that adds its arguments to its parser and a
function that runs it and returns the exit code; adding ``prepare``, ``bench`` or ``train`` is one
more entry in :data:`COMMANDS`. Human output uses ``rich``, imported only when printing, so the core
package never needs it; ``--json`` prints one machine-readable document on stdout instead.

Errors that headrace raises on purpose (and bad option values) end the command with one line on
stderr, ``headrace: error: ...``, and exit code 2, as argparse does for bad usage — no traceback.

    $ headrace inspect 'data/*.parquet' -n 3
    $ headrace inspect data/ --count --json | jq .totals
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


def run_inspect(args: argparse.Namespace) -> int:
    ds = hr.open(args.paths, format=args.format, columns=_columns(args.columns), text_mode=args.text_mode)
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
            "path": s.url,
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


# -- the command -------------------------------------------------------------------------------------

COMMANDS: tuple[Command, ...] = (
    Command("inspect", "shards, format, schema, rows, bytes and a few sample rows", configure_inspect, run_inspect),
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
        message = " ".join(str(e).split()) or type(e).__name__
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
