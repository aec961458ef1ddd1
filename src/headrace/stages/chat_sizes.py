"""How many characters a value takes as text, measured without building the text (for the chat sandbox).

The bounded sandbox (:mod:`headrace.stages.chat_sandbox`) checks every string a template builds against its
limit *before* building it; these are its measures. Each stops counting a little past ``limit``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, ItemsView, KeysView, Mapping, ValuesView
from typing import Any

from jinja2.utils import Namespace
from markupsafe import Markup

VIEWS = (KeysView, ValuesView, ItemsView)  # dict.keys(), .values(), .items()
CONTAINERS = (list, tuple, dict, set, frozenset, *VIEWS)
MEASURED = (*CONTAINERS, Namespace)  # values whose text holds their items' text: measured before they become text
ESCAPE_FACTOR = 6  # markupsafe escapes a character to at most 5 (&#39;)
# a % field: mapping key, flags, width, precision, length modifier, conversion
PERCENT_FIELD = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.?)", re.DOTALL)
FLOAT_CHARS = 330  # the most characters a float takes before its width and precision: f"{1e308:f}" has 316
REPR_CHUNK = 65_536  # a long string's repr is measured this many characters at a time


def repr_size(s: str, limit: int) -> int:
    """The length of ``repr(s)``, or more (quotes and backslashes counted as escaped); past ``limit``: some length over.

    >>> repr_size("it's", 100), repr_size("a\\nb", 100), repr_size("\\x00", 100)
    (7, 6, 6)
    """
    if s.isprintable():
        return len(s) + 2 + s.count("\\") + s.count("'")
    total = 2 + s.count("'")  # non-printable characters' escapes (up to 10 characters each), a slice at a time
    for at in range(0, len(s), REPR_CHUNK):
        total += len(repr(s[at : at + REPR_CHUNK])) - 2
        if total > limit:
            break
    return total


def size_of(value: Any, limit: int) -> int:
    """The characters ``str(value)`` takes, roughly; at most ``limit + 1`` (a container's strings: their repr).

    A container counts one character per item (its separators) and its items' reprs; a number, its digits.

    >>> size_of(["ab", {"c": "de"}], 100)  # 2 items, 'ab', 1 item, 'c', 'de'
    14
    >>> size_of("ab", 100), size_of(2**64, 100), size_of({"a": 1}.values(), 100)
    (2, 68, 5)
    """
    if isinstance(value, str):
        return len(value)
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += repr_size(item, limit)
        elif isinstance(item, dict):
            total += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, CONTAINERS):
            total += len(item)
            stack.extend(item)
        elif isinstance(item, Namespace):  # <Namespace {...}>
            attrs = item._Namespace__attrs  # type: ignore[attr-defined]
            total += 13 + len(attrs)
            stack.extend(attrs.keys())
            stack.extend(attrs.values())
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):  # binary digits: at least as many as any base's
            total += item.bit_length() + 3
        elif isinstance(item, float):
            total += 24  # repr(-1.2345678901234567e-308)
        else:
            total += 1
    return min(total, limit + 1)


def escaped_size(s: str) -> int:
    """The length of ``markupsafe.escape(s)``.

    >>> escaped_size("a<b & 'c'")
    24
    """
    if isinstance(s, Markup):
        return len(s)
    return len(s) + 4 * (s.count("&") + s.count('"') + s.count("'")) + 3 * (s.count("<") + s.count(">"))


def percent_size(fmt: str, args: Any, limit: int, check_width: Callable[..., int]) -> int:
    """An upper bound of ``len(fmt % args)``: the format's text, every width and precision, every value's text.

    Only widths and precisions (written, or given by ``*``) are held to a limit one by one, by
    ``check_width(n, written=...)``; the values formatted are measured, whatever they are (``'%d' % 20000000`` is 8
    characters). More than ``limit``: ``limit + 1``.
    """
    positional = args if isinstance(args, tuple) else (args,)
    at, total = 0, len(fmt)
    for field in PERCENT_FIELD.finditer(fmt):
        key, width, precision, conversion = field.groups()
        for number in (width, precision):
            if number == "*":
                given = positional[at] if at < len(positional) else None
                at += 1
                if isinstance(given, int):
                    total += check_width(given)
            elif number:
                total += check_width(int(number), written=True)
        if conversion in ("%", ""):
            continue
        if key is not None:
            value = args.get(key) if isinstance(args, Mapping) else None  # not a mapping: Python raises
        else:
            value = positional[at] if at < len(positional) else None
            at += 1
        total += shown_size(value, conversion, limit)
        if total > limit:
            return limit + 1  # more than the limit, whatever the fields after
    return total


def shown_size(value: Any, conversion: str, limit: int) -> int:
    """The characters ``value`` takes converted with ``conversion`` (``%``'s, or ``s`` for ``format()``)."""
    if isinstance(value, str):
        if conversion == "r" or (conversion == "a" and value.isascii()):
            return repr_size(value, limit)
        return 10 * len(value) + 2 if conversion == "a" else len(value)  # ascii(): \U0001f600
    if isinstance(value, float):
        return FLOAT_CHARS
    return size_of(value, limit)
