"""The bounded Jinja sandbox that chat templates run in: no Python internals, and no unbounded work.

Chat templates come with tokenizers from the Hub and are not trusted. ``jinja2``'s immutable sandbox
keeps them away from Python internals (``__class__``, ``__subclasses__``, mutating lists); this
module also bounds what one rendering may cost, deterministically (no clocks: the same template and
record always pass or always fail):

- no string the template builds (``*``, ``+``, ``~``, ``%``, ``format``, ``join``, ``replace``, ``center``,
  ``indent``, ...) may exceed ``max_chars`` characters, and this is checked *before* the string is
  allocated: ``'a' * 300000000`` is refused at once; no list it builds may hold more than
  ``MAX_ITEMS`` items; a list or dict turned into text (output, ``~``, ``%``, filters) is measured first;
- the output of one rendering is at most ``max_chars`` characters;
- the values built add up to at most ``WORK_FACTOR * max_chars`` characters (quadratic string building
  in a loop stops early);
- all loops of one rendering together run at most ``MAX_ITERATIONS`` iterations, ``range()`` yields at
  most ``MAX_RANGE`` numbers, integers stay under ``MAX_INT_BITS`` bits and ``tojson`` indents at most
  ``MAX_INDENT``;
- ``lipsum()`` (random text) is not provided; recursion too deep is refused.

Every refusal is a ``jinja2.exceptions.SecurityError`` saying which limit; :mod:`headrace.stages.chat`
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
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_ITERATIONS = 200_000  # loop iterations per rendering, all loops together
MAX_ITEMS = 1_000_000  # items of a list, tuple or dict a template builds
MAX_RANGE = 100_000  # numbers one range() may yield (as jinja2's sandbox)
MAX_INT_BITS = 65_536  # integers a template computes (2 ** 65536 has 19,729 digits)
MAX_INDENT = 64  # tojson(indent=...)
WORK_FACTOR = 16  # the values one rendering builds add up to at most WORK_FACTOR * max_chars characters
# Filters the templates' loops, ~ and {{ output }} are rewritten to use (no template can name them: no underscore
# is needed, but the names are not jinja2's and a template defining a filter is impossible).
_LOOP, _CONCAT, _TEXT = "headrace_loop", "headrace_concat", "headrace_text"
# str methods whose result can be much longer than the string: an estimate of the result's length from the call.
_GROWING = {"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "format", "format_map",
            "translate"}  # fmt: skip
# Filters that turn their value into text: a list or dict given to them is measured first.
_TEXT_FILTERS = {"string", "tojson", "pprint", "e", "escape", "forceescape", "urlencode", "xmlattr", "safe", "urlize",
                 "wordcount", "truncate", "capitalize", "lower", "upper", "title", "trim", "striptags", "center",
                 "indent", "wordwrap", "replace", "format", "join"}  # fmt: skip
_CONTAINERS = (list, tuple, dict, set, frozenset)
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?([-#0 +]*\d*(?:\.\d+)?)")  # the flags, width and precision of a % field
_FORMAT_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")  # the format spec of a {} field


def size_of(value: Any, limit: int) -> int:
    """The characters ``value``'s text takes, roughly (a container: its items' and one per item); at most ``limit + 1``.

    >>> size_of(["ab", {"c": "de"}], 100)  # 2 items, "ab", 1 item, "c", "de"
    8
    """
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, (list, tuple, dict, set, frozenset)):
        return 1
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            total += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            stack.extend(item)
        else:
            total += 1
    return min(total, limit + 1)


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

    def _charge(self, size: int) -> None:
        if size > self.max_chars:
            what = f"{size:,}" if size != self.max_chars + 1 else f"more than {self.max_chars:,}"  # size_of stopped
            raise SecurityError(f"the template builds a value of {what} characters; chat templates may build at "
                                f"most {self.max_chars:,} (max_rendered_chars)")  # fmt: skip
        budget = self._budget
        budget.work = work = getattr(budget, "work", 0) + size
        if work > WORK_FACTOR * self.max_chars:
            raise SecurityError(f"the template builds more than {WORK_FACTOR * self.max_chars:,} characters in all "
                                f"({WORK_FACTOR} x max_rendered_chars): string building in a loop?")  # fmt: skip

    def _items(self, n: int) -> None:
        if n > MAX_ITEMS:
            raise SecurityError(f"the template builds a list of {n:,} items; chat templates may build at most "
                                f"{MAX_ITEMS:,}")  # fmt: skip
        self._charge(n)

    def _measure(self, value: Any) -> None:
        """Before a list or dict becomes text: its text would be at most ``max_chars`` characters."""
        if isinstance(value, _CONTAINERS):
            self._charge(size_of(value, self.max_chars))

    def _text(self, value: Any) -> Any:
        if isinstance(value, _CONTAINERS):
            self._measure(value)
        return value

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
        return self.binop_table[operator_](left, right)

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
        if op == "+" and isinstance(left, str) and isinstance(right, str):
            self._charge(len(left) + len(right))
        elif op == "+" and isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            self._items(len(left) + len(right))
        if op == "%" and isinstance(left, str):
            self._check_percent(left, right)

    def _check_percent(self, fmt: str, args: Any) -> None:
        """``fmt % args``: no width or precision (written or from ``*``) above the limit."""
        self._check_numbers(fmt, "%")
        values = args if isinstance(args, tuple) else (args,)
        self._check_ints(values, {})
        self._charge(len(fmt) + sum(size_of(v, self.max_chars) for v in values))

    def _check_numbers(self, fmt: str, style: str) -> None:
        """No width or precision above ``max_chars`` in the fields of a ``%`` (style ``%``) or ``{}`` format."""
        fields = _PERCENT_FIELD if style == "%" else _FORMAT_SPEC
        escaped = ("%%",) if style == "%" else ("{{", "}}")
        for e in escaped:
            fmt = fmt.replace(e, "")
        for spec in fields.findall(fmt):
            if any(int(n) > self.max_chars for n in re.findall(r"\d+", spec)):
                raise SecurityError(f"a format width or precision of more than {self.max_chars:,} characters")

    def _check_ints(self, args: Iterable[Any], kwargs: dict[str, Any]) -> None:
        for v in (*args, *kwargs.values()):
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > self.max_chars:
                raise SecurityError(f"a width or count of {v:,} (more than max_rendered_chars, {self.max_chars:,})")

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, LoopContext) and args:  # loop(children) of a recursive loop: counted as loops are
            args = (__self._counted(args[0]), *args[1:])
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        receiver = getattr(target, "__self__", None)
        if isinstance(receiver, str) and getattr(target, "__name__", "") in _GROWING:
            __self._check_ints(args, kwargs)
            __self._charge(__self._estimate(receiver, target.__name__, args, kwargs))
        result = super().call(__context, __obj, *args, **kwargs)
        __self._account(result)
        return result

    def _account(self, result: Any) -> None:
        """A value a call or filter returned: a string's length and a container's items count as work."""
        if isinstance(result, str):
            self._charge(len(result))
        elif isinstance(result, _CONTAINERS):
            self._items(len(result))

    def _estimate(self, s: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """An upper bound of the length of ``s.name(*args, **kwargs)``, computed without building it."""
        limit = self.max_chars
        if name in ("center", "ljust", "rjust", "zfill"):
            width = args[0] if args else kwargs.get("width", 0)
            return max(len(s), width if isinstance(width, int) else 0)
        if name == "expandtabs":
            tab = args[0] if args else kwargs.get("tabsize", 8)
            return len(s) + s.count("\t") * (tab if isinstance(tab, int) else 8)
        if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            count = s.count(args[0]) if args[0] else len(s) + 1
            if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
                count = min(count, args[2])
            return len(s) + count * max(0, len(args[1]) - len(args[0]))
        if name == "join" and args:
            items = args[0] if isinstance(args[0], (list, tuple)) else []
            return size_of(list(items), limit) + len(s) * max(0, len(items) - 1)
        if name in ("format", "format_map"):
            self._check_numbers(s, "{")
            return len(s) + sum(size_of(v, limit) for v in (*args, *kwargs.values()))
        if name == "translate" and args and isinstance(args[0], dict):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            return len(s) * max(1, longest)
        return len(s)

    def _bounded_filter(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its counts and widths bounded first and its result measured; the way it is passed kept."""
        pass_arg = getattr(fn, "jinja_pass_arg", None)  # how jinja2 marks a filter taking the context/environment
        env = self

        def bounded(*args: Any, **kwargs: Any) -> Any:
            given = args[1:] if pass_arg is not None else args  # the context or environment is not the template's
            if given:
                if name in _TEXT_FILTERS:
                    env._measure(given[0])
                env._check_filter(name, given[0], given[1:], kwargs)
            result = fn(*args, **kwargs)
            env._account(result)
            return result

        if pass_arg is not None:
            bounded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
        return bounded

    def _check_filter(self, name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._check_ints(args, kwargs)
        text = value if isinstance(value, str) else ""
        if name == "indent":
            width = args[0] if args else kwargs.get("width", 4)
            per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            self._charge(len(text) + (text.count("\n") + 1) * per_line)
        elif name == "center":
            self._charge(self._estimate(text, "center", args, kwargs))
        elif name == "replace":
            self._charge(self._estimate(text, "replace", args, kwargs))
        elif name == "format":
            self._check_percent(text, args or tuple(kwargs.values()))
        elif name == "wordwrap":
            wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring", "\n")
            width = args[0] if args else kwargs.get("width", 79)
            lines = len(text) // max(1, width if isinstance(width, int) else 79) + 1
            self._charge(len(text) + lines * (len(wrap) if isinstance(wrap, str) else 1))
        elif name == "join":
            items = value if isinstance(value, (list, tuple)) else []
            sep = args[0] if args else kwargs.get("d", "")
            self._charge(size_of(list(items), self.max_chars) + len(str(sep)) * max(0, len(items) - 1))
        elif name == "tojson":
            indent = args[1] if len(args) > 1 else kwargs.get("indent")
            if (isinstance(indent, int) and indent > MAX_INDENT) or (isinstance(indent, str) and len(indent) > 64):
                raise SecurityError(f"tojson(indent=...) of more than {MAX_INDENT} in a chat template")


def dict_fromkeys(env: BoundedSandbox, keys: Any, value: Any = None) -> dict[Any, Any]:
    """``dict.fromkeys`` for templates, of at most ``MAX_ITEMS`` keys."""
    env._items(len(keys) if isinstance(keys, (str, *_CONTAINERS, range)) else 0)
    out = dict.fromkeys(keys, value)
    env._items(len(out))
    return out
