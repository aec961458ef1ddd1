"""The bounded Jinja sandbox that chat templates run in: no Python internals, and no unbounded work.

Chat templates come with tokenizers from the Hub and are not trusted. ``jinja2``'s immutable sandbox
keeps them away from Python internals (``__class__``, ``__subclasses__``, mutating lists); this
module also bounds what one rendering may cost, deterministically (no clocks: the same template and
record always pass or always fail):

- no string the template builds (``*``, ``+``, ``~``, ``%``, ``format``, ``join``, ``replace``, ``center``,
  ``indent``, ``escape``, ...) may exceed ``max_chars`` characters, and this is checked *before* the string
  is allocated: ``'a' * 300000000`` is refused at once. ``%`` and ``|format`` add up the format's text,
  every width and precision (written or given by ``*``) and every value's text before formatting;
  ``str.format`` does so field by field, before each field is converted or formatted (nested ``{w}``
  widths included); ``join`` measures its items first (an iterator or generator is listed first, at
  most ``MAX_ITEMS`` items). Only widths and counts (``center``, ``ljust``, ``zfill``, ``indent``,
  ``wordwrap``, ``replace``'s count, ``batch``, format widths, ``*``) are held to ``max_chars`` one by
  one: a value formatted (``'%d' % 20000000``) is just text of its length;
- no list it builds may hold more than ``MAX_ITEMS`` items (``'a' * 10000000|list`` is refused before
  the list exists); a list, dict, dict view or namespace turned into text (output, ``~``, ``%``,
  filters) is measured first;
- the output of one rendering is at most ``max_chars`` characters;
- the values built add up to at most ``WORK_FACTOR * max_chars`` characters (quadratic string building
  in a loop stops early);
- all loops of one rendering together run at most ``MAX_ITERATIONS`` iterations, ``range()`` yields at
  most ``MAX_RANGE`` numbers, integers stay under ``MAX_INT_BITS`` bits and ``tojson`` indents at most
  ``MAX_INDENT``;
- ``lipsum()`` (random text) is not provided; recursion too deep is refused.

The sizes are measured by :mod:`headrace.stages.chat_sizes`. Every refusal is a ``jinja2.exceptions.SecurityError``
saying which limit; :mod:`headrace.stages.chat`
turns it into a ``RecordError`` naming the record.

>>> env = BoundedSandbox(max_chars=1000)
>>> env.from_string("{{ 'ab' * 3 }}").render()
'ababab'
>>> env.from_string("{{ 'a' * 300000000 }}").render()  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
jinja2.exceptions.SecurityError: the template builds a value of 300,000,000 characters; ... at most 1,000 ...
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import update_wrapper
from itertools import islice
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from headrace.stages.chat_sizes import (
    CONTAINERS,
    ESCAPE_FACTOR,
    MEASURED,
    escaped_size,
    percent_size,
    shown_size,
    size_of,
)

MAX_ITERATIONS = 200_000  # loop iterations per rendering, all loops together
MAX_ITEMS = 1_000_000  # items of a list, tuple or dict a template builds
MAX_RANGE = 100_000  # numbers one range() may yield (as jinja2's sandbox)
MAX_INT_BITS = 65_536  # integers a template computes (2 ** 65536 has 19,729 digits)
MAX_INDENT = 64  # tojson(indent=...)
WORK_FACTOR = 16  # the values one rendering builds add up to at most WORK_FACTOR * max_chars characters
# Filters the templates' loops, ~ and {{ output }} are rewritten to use (no template can name them: no underscore
# is needed, but the names are not jinja2's and a template defining a filter is impossible).
_LOOP, _CONCAT, _TEXT = "headrace_loop", "headrace_concat", "headrace_text"
# str methods whose result can be much longer than the string: an estimate of the result's length from the call
# (format and format_map are bounded field by field, by _BoundedFormatter).
_GROWING = {"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "translate"}
# Filters that turn their value into text: a list or dict given to them is measured first.
_TEXT_FILTERS = {"string", "tojson", "pprint", "e", "escape", "forceescape", "urlencode", "xmlattr", "safe", "urlize",
                 "wordcount", "truncate", "capitalize", "lower", "upper", "title", "trim", "striptags", "center",
                 "indent", "wordwrap", "replace", "format", "join"}  # fmt: skip
# Filters that make a list of their value's items (join: the items joined); a string's items are its characters.
_LISTING = {"list", "sort", "unique", "batch", "slice", "groupby", "dictsort", "join", "reverse"}


class _Rewrite(NodeTransformer):
    """Every ``for`` loop's iterable counted; every ``~`` and ``{{ output }}`` measured before it becomes text."""

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)  # in place
        node.nodes = [n if isinstance(n, nodes.TemplateData) else
                      nodes.Filter(n, _TEXT, [], [], None, None, lineno=n.lineno) for n in node.nodes]  # fmt: skip
        return node

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)  # in place
        node.iter = nodes.Filter(node.iter, _LOOP, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)  # in place
        items = nodes.List(list(node.nodes), lineno=node.lineno)
        return nodes.Filter(items, _CONCAT, [], [], None, None, lineno=node.lineno)


class _BoundedCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        _Rewrite().visit(node)
        super().visit_Template(node, frame)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """``ImmutableSandboxedEnvironment`` with every growing operation, loop and rendering bounded (see above)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, max_chars: int, **options: Any) -> None:
        super().__init__(**options)
        self.max_chars = max_chars
        self._budget = threading.local()  # per rendering; worker threads render at once
        self.globals.pop("lipsum", None)
        self.globals["range"] = self._range
        for name, fn in list(self.filters.items()):
            self.filters[name] = self._bounded_filter(name, fn)
        self.filters[_LOOP] = jinja2.pass_context(lambda _context, iterable: self._counted(iterable))
        self.filters[_CONCAT] = jinja2.pass_context(lambda _context, items: self._concat(items))
        self.filters[_TEXT] = jinja2.pass_context(lambda _context, value: self._text(value))

    # -- the budget of one rendering --------------------------------------------------------------

    def begin(self) -> None:
        """Start a rendering's budget (loops and work), in this thread."""
        self._budget.iterations = 0
        self._budget.work = 0

    def render_bounded(self, template: jinja2.Template, variables: dict[str, Any]) -> str:
        """``template.render(**variables)``, refused past ``max_chars`` characters of output or any other limit."""
        self.begin()
        out: list[str] = []
        total = 0
        try:
            for piece in template.generate(**variables):
                total += len(piece)
                if total > self.max_chars:
                    raise SecurityError(f"the template renders more than {self.max_chars:,} characters "
                                        "(max_rendered_chars)")  # fmt: skip
                out.append(piece)
        except RecursionError:
            raise SecurityError("the template recurses too deeply (a macro or recursive loop calling itself)") from None
        return "".join(out)

    def _check_size(self, size: int) -> None:
        """Refused if a value of ``size`` characters (``max_chars + 1``: more than ``max_chars``) would be too long."""
        if size > self.max_chars:
            what = f"{size:,}" if size != self.max_chars + 1 else f"more than {self.max_chars:,}"  # size_of stopped
            raise SecurityError(f"the template builds a value of {what} characters; chat templates may build at "
                                f"most {self.max_chars:,} (max_rendered_chars)")  # fmt: skip

    def _charge(self, size: int) -> None:
        """A value of ``size`` characters is built: checked, and counted in this rendering's work."""
        self._check_size(size)
        budget = self._budget
        budget.work = work = getattr(budget, "work", 0) + size
        if work > WORK_FACTOR * self.max_chars:
            raise SecurityError(f"the template builds more than {WORK_FACTOR * self.max_chars:,} characters in all "
                                f"({WORK_FACTOR} x max_rendered_chars): string building in a loop?")  # fmt: skip

    def _check_items(self, n: int) -> None:
        if n > MAX_ITEMS:
            raise SecurityError(f"the template builds a list of {n:,} items; chat templates may build at most "
                                f"{MAX_ITEMS:,}")  # fmt: skip

    def _items(self, n: int) -> None:
        self._check_items(n)
        self._charge(n)

    def _measure(self, value: Any) -> None:
        """Before a list, dict or namespace becomes text: its text would be at most ``max_chars`` characters."""
        if not isinstance(value, str) and isinstance(value, MEASURED):  # str first: most values are
            self._charge(size_of(value, self.max_chars))

    def _text(self, value: Any) -> Any:
        if not isinstance(value, str) and isinstance(value, MEASURED):
            self._measure(value)
        return value

    def _listed(self, value: Any, joined: bool = False) -> Any:
        """``value``, or its items in a list if it is an iterator or generator; refused past ``MAX_ITEMS`` items
        (``joined``: or once the items' text is over ``max_chars`` characters, before the next item is made)."""
        if isinstance(value, (str, *CONTAINERS, range)) or not hasattr(value, "__iter__"):
            return value  # sized (a template's containers hold at most MAX_ITEMS items), or not iterable: fn says
        if joined:
            items, size = [], 0
            for item in islice(value, MAX_ITEMS + 1):
                size += size_of(item, self.max_chars)
                self._check_size(min(size, self.max_chars + 1))
                items.append(item)
        else:
            items = list(islice(value, MAX_ITEMS + 1))
        if len(items) > MAX_ITEMS:
            raise SecurityError(f"the template builds a list of more than {MAX_ITEMS:,} items; chat templates may "
                                f"build at most {MAX_ITEMS:,}")  # fmt: skip
        return items

    def _joined_size(self, items: Any, sep: str) -> int:
        """The length of ``sep.join(map(str, items))`` (items: a string or a container, not an iterator)."""
        if isinstance(items, str):
            return len(items) + len(sep) * max(0, len(items) - 1)
        total, n = 0, 0
        for item in items:
            n += 1
            total += size_of(item, self.max_chars)
            if total > self.max_chars:
                return self.max_chars + 1
        return total + len(sep) * max(0, n - 1)

    def _counted(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = self._budget  # this thread's: a generator runs in the thread that renders
        for item in iterable:
            budget.iterations = n = getattr(budget, "iterations", 0) + 1
            if n > MAX_ITERATIONS:
                raise SecurityError(f"the template's loops run more than {MAX_ITERATIONS:,} iterations")
            yield item

    def _concat(self, items: list[Any]) -> str:
        for x in items:
            self._measure(x)
        parts = [str(x) for x in items]
        self._charge(sum(map(len, parts)))
        return "".join(parts)

    def _range(self, *args: int) -> range:
        numbers = range(*args)
        try:
            n = len(numbers)
        except OverflowError:  # more than sys.maxsize numbers
            n = MAX_RANGE + 1
        if n > MAX_RANGE:
            raise SecurityError(f"range() of more than {MAX_RANGE:,} numbers in a chat template")
        return numbers

    # -- operators, calls and filters, checked before they allocate -------------------------------------

    def call_binop(self, context: jinja2.runtime.Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "+" and type(left) is str and type(right) is str:  # the common case, first
            self._charge(len(left) + len(right))
            return left + right
        self._check_binop(operator_, left, right)
        result = self.binop_table[operator_](left, right)
        if operator_ == "%" and isinstance(result, str):
            self._charge(len(result))
        return result

    def _check_binop(self, op: str, left: Any, right: Any) -> None:
        ints = isinstance(left, int) and isinstance(right, int)
        if op == "**" and ints and right > 0 and abs(left) > 1 and abs(left).bit_length() * right > MAX_INT_BITS:
            raise SecurityError(f"{left} ** {right} has more than {MAX_INT_BITS:,} bits")
        if op == "*" and ints and abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS:
            raise SecurityError(f"a product of more than {MAX_INT_BITS:,} bits")
        if op == "*" and not ints:
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(n, int) and isinstance(seq, str):
                self._charge(len(seq) * max(n, 0))
            elif isinstance(n, int) and isinstance(seq, (list, tuple)):
                self._items(len(seq) * max(n, 0))
        if op == "+" and isinstance(left, str) and isinstance(right, str):  # Markup + str escapes the str
            self._charge(escaped_size(left) + escaped_size(right) if isinstance(left, Markup) or isinstance(
                right, Markup) else len(left) + len(right))  # fmt: skip
        elif op == "+" and isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            self._items(len(left) + len(right))
        if op == "%" and isinstance(left, str):
            self._check_size(
                percent_size(left, right, self.max_chars, self._check_width)
                * (ESCAPE_FACTOR if isinstance(left, Markup) else 1)
            )

    def _check_width(self, n: int, written: bool = False) -> int:
        """``n``, a width, precision or count: refused above ``max_chars`` (a value is never checked here)."""
        if abs(n) > self.max_chars:
            if written:
                raise SecurityError(f"a format width or precision of more than {self.max_chars:,} characters")
            raise SecurityError(f"a width or count of {n:,} (more than max_rendered_chars, {self.max_chars:,})")
        return abs(n)

    def _check_widths(self, *numbers: Any) -> None:
        for n in numbers:
            if isinstance(n, int) and not isinstance(n, bool):
                self._check_width(n)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map``, with each field's size checked before it is formatted."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        f_self: str = value.__self__
        formatter: SandboxedFormatter
        if isinstance(f_self, Markup):
            formatter = _BoundedEscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _BoundedFormatter(self)
        is_format_map = value.__name__ == "format_map"
        str_type = type(f_self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    return wrapped(*args, **kwargs)  # jinja2's TypeError
                return str_type(formatter.vformat(f_self, (), args[0]))
            return str_type(formatter.vformat(f_self, args, kwargs))

        return update_wrapper(wrapper, value)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, LoopContext) and args:  # loop(children) of a recursive loop: counted as loops are
            args = (__self._counted(args[0]), *args[1:])
        receiver = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(receiver, str) and name in _GROWING:
            if name == "join" and args:
                args = (__self._listed(args[0], joined=True), *args[1:])
            escapes = ESCAPE_FACTOR if isinstance(receiver, Markup) else 1  # Markup's methods escape their arguments
            __self._check_size(__self._estimate(receiver, name, args, kwargs) * escapes)
        result = super().call(__context, __obj, *args, **kwargs)
        __self._account(result)
        return result

    def _account(self, result: Any) -> None:
        """A value a call or filter returned: a string's length and a container's items count as work."""
        if isinstance(result, str):
            self._charge(len(result))
        elif isinstance(result, CONTAINERS):
            self._items(len(result))

    def _estimate(self, s: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """An upper bound of the length of ``s.name(*args, **kwargs)``, computed without building it."""
        if name in ("center", "ljust", "rjust", "zfill"):
            width = args[0] if args else kwargs.get("width", 0)
            self._check_widths(width)
            return max(len(s), width if isinstance(width, int) else 0)
        if name == "expandtabs":
            tab = args[0] if args else kwargs.get("tabsize", 8)
            self._check_widths(tab)
            return len(s) + s.count("\t") * (tab if isinstance(tab, int) else 8)
        if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            count = s.count(args[0]) if args[0] else len(s) + 1
            limit = args[2] if len(args) > 2 else kwargs.get("count", -1)
            self._check_widths(limit)
            if isinstance(limit, int) and limit >= 0:
                count = min(count, limit)
            return len(s) + count * max(0, len(args[1]) - len(args[0]))
        if name == "join" and args and isinstance(args[0], (str, *CONTAINERS)):
            return self._joined_size(args[0], s)
        if name == "translate" and args and isinstance(args[0], dict):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            return len(s) * max(1, longest)
        return len(s)

    def _bounded_filter(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its counts and widths bounded first and its result measured; the way it is passed kept."""
        pass_arg = getattr(fn, "jinja_pass_arg", None)  # how jinja2 marks a filter taking the context/environment
        env = self
        first = 1 if pass_arg is not None else 0  # the context or environment is not the template's

        def bounded(*args: Any, **kwargs: Any) -> Any:
            if len(args) > first:
                value = args[first]
                if name in _LISTING:
                    value = env._listed(value, joined=name == "join")
                    args = (*args[:first], value, *args[first + 1 :])
                if name in _TEXT_FILTERS:
                    env._measure(value)
                env._check_filter(name, value, args[first + 1 :], kwargs)
            result = fn(*args, **kwargs)
            env._account(result)
            return result

        if pass_arg is not None:
            bounded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
        return bounded

    def _check_filter(self, name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Before filter ``name`` runs on ``value``: its widths and counts, and the size of what it builds."""
        text = value if isinstance(value, str) else ""
        if name in _LISTING and isinstance(value, (str, *CONTAINERS, range)) and name not in ("join", "reverse"):
            self._check_items(len(value))  # a string's characters, or a user's list longer than a template's may be
        if name == "indent":
            width = args[0] if args else kwargs.get("width", 4)
            self._check_widths(width)
            per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            self._check_size(len(text) + (text.count("\n") + 1) * per_line)
        elif name == "center":
            self._check_size(self._estimate(text, "center", args, kwargs))
        elif name == "replace":
            self._check_size(self._estimate(text, "replace", args, kwargs))
        elif name == "format":
            if args and kwargs:
                return  # jinja2 refuses both
            self._check_size(
                percent_size(text, kwargs or args, self.max_chars, self._check_width)
                * (ESCAPE_FACTOR if isinstance(text, Markup) else 1)
            )
        elif name == "wordwrap":
            wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring", "\n")
            width = args[0] if args else kwargs.get("width", 79)
            self._check_widths(width)
            lines = len(text) // max(1, width if isinstance(width, int) else 79) + 1
            self._check_size(len(text) + lines * (len(wrap) if isinstance(wrap, str) else 1))
        elif name in ("e", "escape", "forceescape"):
            self._check_size(escaped_size(text))
        elif name == "urlencode":
            self._check_size(12 * len(text))  # a character: up to 4 bytes of %XX
        elif name in ("batch", "slice"):
            self._check_widths(args[0] if args else kwargs.get("linecount", kwargs.get("slices")))
        elif name == "join" and isinstance(value, (str, *CONTAINERS, range)):
            sep = args[0] if args else kwargs.get("d", "")
            self._check_size(self._joined_size(value, str(sep)))
        elif name == "tojson":
            indent = args[1] if len(args) > 1 else kwargs.get("indent")
            if (isinstance(indent, int) and indent > MAX_INDENT) or (isinstance(indent, str) and len(indent) > 64):
                raise SecurityError(f"tojson(indent=...) of more than {MAX_INDENT} in a chat template")


class _BoundedFormatterMixin:
    """``str.format``'s fields each measured before they are converted or formatted, and all added up."""

    _total = 0
    _factor = 1  # how much longer than the formatted field its escaped text may be

    @property
    def _sandbox(self) -> BoundedSandbox:
        return self._env  # type: ignore[attr-defined, no-any-return]  # SandboxedFormatter's

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._total = 0
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc, no-any-return]

    def parse(self, format_string: str) -> Iterator[tuple[str, str | None, str | None, str | None]]:
        for literal, *field in super().parse(format_string):  # type: ignore[misc]
            self._add(len(literal))  # the literal text (or a nested spec's: counted, though not output)
            yield (literal, *field)  # type: ignore[misc]

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion in ("r", "a", "s"):
            self._fits(shown_size(value, conversion, self._sandbox.max_chars) * self._factor)
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> str:
        env = self._sandbox
        widths = sum(env._check_width(int(n), written=True) for n in re.findall(r"\d+", str(format_spec)))
        shown = shown_size(value, "s", env.max_chars)
        if "," in str(format_spec) or "_" in str(format_spec):  # digits grouped
            shown *= 2
        self._add((widths + shown) * self._factor)
        return super().format_field(value, format_spec)  # type: ignore[misc, no-any-return]

    def _fits(self, size: int) -> None:
        total = self._total + size
        if total > self._sandbox.max_chars:
            self._sandbox._check_size(min(total, self._sandbox.max_chars + 1))

    def _add(self, size: int) -> None:
        self._fits(size)
        self._total += size


class _BoundedFormatter(_BoundedFormatterMixin, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_BoundedFormatterMixin, SandboxedEscapeFormatter):
    _factor = ESCAPE_FACTOR


def dict_fromkeys(env: BoundedSandbox, keys: Any, value: Any = None) -> dict[Any, Any]:
    """``dict.fromkeys`` for templates, of at most ``MAX_ITEMS`` keys."""
    env._items(len(keys) if isinstance(keys, (str, *CONTAINERS, range)) else 0)
    out = dict.fromkeys(keys, value)
    env._items(len(out))
    return out
