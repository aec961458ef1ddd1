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

One module per job: :mod:`~headrace.cli.dispatch` (the parser, :func:`main`, exit codes), one module
per subcommand (:mod:`~headrace.cli.inspect`, :mod:`~headrace.cli.prepare`, :mod:`~headrace.cli.bench`,
:mod:`~headrace.cli.train`), and what they share: :mod:`~headrace.cli.options` (flags and argument
types) and :mod:`~headrace.cli.display` (numbers and paths for people).
"""

from headrace.cli.dispatch import COMMANDS, Command, build_parser, main
from headrace.cli.inspect import SHOWN_SHARDS, inspect_dataset

__all__ = ["COMMANDS", "SHOWN_SHARDS", "Command", "build_parser", "inspect_dataset", "main"]
