"""``headrace prepare``: text into token shards (Megatron ``.bin``/``.idx``) and a manifest (:mod:`headrace.prepare`).

The work is :func:`headrace.prepare.prepare`; this module maps its flags and prints the summary:

    $ headrace prepare 'data/*.parquet' tokens/ --tokenizer tokenizer.json --workers 8
"""

from __future__ import annotations

import argparse
import json
import sys

from headrace.cli.display import human_size, plural
from headrace.cli.options import positive_count
from headrace.core.redact import redact


def configure_prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IN", help="text files, directories or globs (quote globs)")
    parser.add_argument("out", metavar="OUT", help="output folder for the .bin/.idx shards and manifest.json")
    parser.add_argument("--tokenizer", required=True, metavar="T",
                        help="a tokenizer.json, a folder holding one, or tiktoken:NAME")  # fmt: skip
    parser.add_argument("--column", default="text", help="the text column (default: text)")
    parser.add_argument("--format", help="input format when the suffix does not say (parquet, jsonl, csv, text, ...)")
    parser.add_argument("--text-mode", choices=("line", "file"), default="line",
                        help="text files: a document per line or per file")  # fmt: skip
    parser.add_argument("--add-eos", action=argparse.BooleanOptionalAction, default=True,
                        help="append the tokenizer's end-of-text id to every document (default: on)")  # fmt: skip
    parser.add_argument("--add-bos", action=argparse.BooleanOptionalAction, default=False,
                        help="prepend the tokenizer's beginning-of-text id (default: off)")  # fmt: skip
    parser.add_argument("--dtype", choices=("auto", "uint16", "int32"), default="auto",
                        help="token dtype; auto: uint16 when the vocabulary fits, else int32")  # fmt: skip
    parser.add_argument("--tokens-per-shard", type=positive_count, default=None, metavar="N",
                        help="start a new shard at the first document boundary after N tokens, "
                        "suffixes k, M, G (default: 268M)")  # fmt: skip
    parser.add_argument("--unit-rows", type=positive_count, default=None, metavar="N",
                        help="rows of an indexed input (Parquet, Arrow) per unit of work (default: 100k)")  # fmt: skip
    parser.add_argument("--workers", type=positive_count, default=None, metavar="N",
                        help="worker processes (default: the cores); the output does not depend on it")  # fmt: skip
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local processes, or a Ray cluster through Ray Data (same output)")  # fmt: skip
    parser.add_argument("--ray-address", help="Ray cluster to connect to (default: RAY_ADDRESS, or a local Ray)")
    parser.add_argument("--errors", choices=("raise", "skip", "warn"), default="raise",
                        help="malformed records and null texts: stop (raise), or skip and count them")  # fmt: skip
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
        print(f"wrote {plural(totals['shards'], 'shard')} to {redact(args.out)}: {totals['tokens']:,} tokens "
              f"({result.manifest['dtype']}), {plural(totals['documents'], 'document')}, {human_size(totals['bytes'])} "
              f"in {result.seconds:.1f} s ({rate:,.0f} tokens/s{resumed})")  # fmt: skip
        if totals["skipped"]:
            print(f"skipped {plural(totals['skipped'], 'record')} (--errors {args.errors})")
    return 0
