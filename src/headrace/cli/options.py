"""Flags and argument types shared by the ``headrace`` subcommands.

Argument types raise ``argparse.ArgumentTypeError``, so argparse reports a bad value as bad usage
(exit code 2) with the message they give.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` ends each option's line with ``(default: VALUE)`` when it has one.

    Like ``argparse.ArgumentDefaultsHelpFormatter``, without its noise: options whose default is
    ``None``, ``False`` or empty (flags, "not given") show none, and a help text that already says
    its default in words (``(default: cuda when there is one)``) is left as it is.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == [] or default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            default = "on" if default else "off"
        return f"{text} (default: {default})".lstrip()


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    """``-o KEY=VALUE`` storage options and the disk cache, for the commands that read datasets."""
    parser.add_argument("-o", "--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option for remote URLs, repeatable; a dotted key nests "
                             "(-o client_kwargs.endpoint_url=http://127.0.0.1:8333); values are JSON when they "
                             "parse (true, 3), text otherwise")  # fmt: skip
    parser.add_argument("--cache-dir", help="keep remote shards in this local directory")
    parser.add_argument("--cache-limit", type=positive_count, default=None, metavar="BYTES",
                        help="at most this many bytes in --cache-dir (least recently used evicted)")  # fmt: skip


def remote_options(args: argparse.Namespace) -> dict[str, Any]:
    """``hr.open`` keyword arguments from :func:`add_remote_options`' flags.

    >>> args = argparse.Namespace(storage_option=["anon=true", "client_kwargs.region_name=eu"], cache_dir=None,
    ...                           cache_limit=None)
    >>> remote_options(args)["storage_options"]
    {'anon': True, 'client_kwargs': {'region_name': 'eu'}}
    """
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


def parse_columns(text: str | None) -> list[str] | None:
    """``--columns id,text`` as a list of names (None when the flag is not given).

    >>> parse_columns(" id, text ,"), parse_columns(None)
    (['id', 'text'], None)
    """
    if text is None:
        return None
    columns = [c.strip() for c in text.split(",") if c.strip()]
    if not columns:
        raise ValueError(f"--columns needs column names separated by commas, got {text!r}")
    return columns


def non_negative(text: str) -> int:
    """An argparse ``type``: an integer >= 0.

    >>> non_negative("0")
    0
    >>> non_negative("-1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: expected an integer >= 0, got '-1'
    """
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return n


def positive_count(text: str) -> int:
    """An argparse ``type``: ``"2048"``, ``"64k"``, ``"256M"``, ``"1G"`` (powers of 1000) as an integer >= 1.

    >>> positive_count("2048"), positive_count("64k"), positive_count("1G")
    (2048, 64000, 1000000000)
    """
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    digits = text[:-1] if scale > 1 else text
    try:
        n = int(digits) * scale
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (suffixes k, M, G allowed), got {text!r}")
    return n
