"""``headrace inspect``: the shards, format, schema, row counts, bytes and first rows of a dataset.

Row counts of sequential formats (JSONL, CSV, text) need ``--count``, which reads every file:

    $ headrace inspect 'data/*.parquet' -n 3
    $ headrace inspect data/ --count --json | jq .totals
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import headrace as hr
from headrace.cli.display import common_root, human_size, plural
from headrace.cli.options import add_remote_options, non_negative, parse_columns, remote_options
from headrace.core.redact import redact
from headrace.formats import format_named

SHOWN_SHARDS = 20  # rich output lists this many shards, then "... N more"; --json lists all
CELL_CHARS = 80  # sample values longer than this are cut in rich output
COUNT_THREADS = 8  # row counts are footer reads (indexed) or whole-file reads (--count): I/O bound


def configure_inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files, directories or globs (quote globs)")
    parser.add_argument("--format", help="file format when the suffix does not say (parquet, jsonl, csv, ...)")
    parser.add_argument("--columns", help="comma-separated columns to read, e.g. --columns id,text")
    parser.add_argument(
        "--text-mode", choices=("line", "file"), default="line", help="text files: a row per line or per file"
    )
    parser.add_argument("-n", "--rows", type=non_negative, default=5, metavar="N", help="sample rows to show (0: none)")
    parser.add_argument(
        "--count", action="store_true", help="count the rows of sequential formats (jsonl, csv, text): reads every file"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    add_remote_options(parser)


def run_inspect(args: argparse.Namespace) -> int:
    ds = hr.open(args.paths, format=args.format, columns=parse_columns(args.columns), text_mode=args.text_mode,
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
    root = common_root([s["path"] for s in shards])
    heading = plural(totals["shards"], "shard") + (f" in {root}" if root else "")
    console.print(Text(heading, style="bold"))
    table = Table(show_footer=True)
    table.add_column("#", justify="right", footer="total")
    table.add_column("file", overflow="fold", footer=plural(totals["shards"], "file"))
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

    rows = "unknown rows" if totals["rows"] is None else plural(totals["rows"], "row")
    kind = "indexed (row counts from metadata)" if totals["indexed"] else "sequential (row counts need a full read)"
    console.print(Text(f"{plural(totals['shards'], 'shard')}, {human_size(totals['bytes'])}, {rows}; {kind}"))
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
        console.print(Text(f"first {plural(len(report['sample']), 'row')}", style="bold"))
        sample = Table(show_lines=True)
        names = [f["name"] for f in report["schema"]]
        for name in names:
            sample.add_column(Text(name), overflow="fold")
        for row in report["sample"]:
            sample.add_row(*(_cell(row.get(name)) for name in names))
        console.print(sample)


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
