"""The ``headrace`` command: one parser with a subcommand per :class:`Command`, and error handling.

Errors that headrace raises on purpose (and bad option values) end the command with one line on
stderr, ``headrace: error: ...``, and exit code 2, as argparse does for bad usage — no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import headrace as hr
from headrace.cli.bench import configure_bench, run_bench
from headrace.cli.inspect import configure_inspect, run_inspect
from headrace.cli.options import DefaultsHelpFormatter
from headrace.cli.prepare import configure_prepare, run_prepare
from headrace.cli.train import configure_train, run_train
from headrace.core.redact import redact

EXIT_ERROR = 2  # the code argparse uses for bad usage; a user's mistake either way
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one line of help, how to add its arguments, and how to run it."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


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
        child = sub.add_parser(command.name, help=command.help, description=command.help,
                               formatter_class=DefaultsHelpFormatter)  # fmt: skip
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
        for note in getattr(e, "__notes__", None) or []:  # where it happened (a user function's block)
            print(f"  {redact(str(note))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("headrace: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as other Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as e:  # a bug or a user function's error: its traceback, as Python prints it, redacted
        sys.stderr.write(redact("".join(traceback.format_exception(e))))
        return 1
