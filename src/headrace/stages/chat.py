"""``chat``: message lists rendered with a Jinja chat template, tokenized, with labels on assistant turns only.

Rendering matches ``transformers``' ``apply_chat_template(..., tokenize=False)``: the same sandboxed
Jinja environment (``trim_blocks``, ``lstrip_blocks``, ``raise_exception``, the ``tojson`` filter),
the variables ``messages``, ``tools=None``, ``documents=None``, ``add_generation_prompt=False`` and
the tokenizer's ``bos_token``/``eos_token``/``pad_token``/``mask_token``, and message keys whose
value is null dropped (Arrow fills a key missing from one message with null). ``strftime_now`` is
not provided: a template's date would make the data depend on the day it was read.

Which characters belong to an assistant turn:

- a template with ``{% generation %}`` … ``{% endgeneration %}`` markers: exactly what they enclose
  (as ``return_assistant_tokens_mask``);
- any other template: from the start of the message's content to the end of that message's
  rendering — the end-of-turn text after the content (``<|im_end|>\\n``) is included, because the
  model must learn to emit it; the role header before it (``<|im_start|>assistant\\n``) is not. The
  message's rendering ends where rendering ``messages[:i+1]`` stops agreeing with the whole
  conversation (so text a template adds only after the final message, such as an EOS, belongs to
  the final turn only); where the content starts is found by rendering the turn once with a
  placeholder content. A turn without string content (a tool call) is labelled from the start of
  its rendering. A template that renders an assistant turn's content differently once later
  messages follow (one that drops earlier reasoning) is refused, naming the record: mark the
  assistant text with ``{% generation %}`` instead.

A token is labelled (``labels`` = its id; -100 elsewhere) when any of its characters lies inside an
assistant span: a token straddling the boundary is trained on, as ``transformers`` marks tokens from
the one holding the span's first character to the one holding its last.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.block import Block, arrow_numbers, to_pylist
from headrace.core.errors import RecordError, SchemaError
from headrace.tokenizer import Tokenizer, TokenizerError

try:
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols

    from headrace.stages.chat_sandbox import BoundedSandbox, dict_fromkeys
except ImportError as e:  # pragma: no cover - jinja2 ships with transformers, but is not a core dependency
    raise ImportError("chat() renders Jinja chat templates: pip install 'jinja2>=3.1.6'") from e

IGNORE = -100
# The most characters one rendering of a conversation may produce (and any value a template builds may hold): 16 Mi,
# about 4 M tokens. chat(max_rendered_chars=...) changes it; the other bounds are in headrace.stages.chat_sandbox.
MAX_RENDERED_CHARS = 16 * 2**20
# Unicode noncharacters, reserved for a program's internal use: they mark spans inside a rendering.
OPEN, CLOSE, PLACEHOLDER = "\ufdd0", "\ufdd1", "\ufdd2"
_RESERVED = re.compile("[\ufdd0\ufdd1\ufdd2]")
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


class _Generation(Extension):
    """``{% generation %}…{% endgeneration %}``: wraps what it renders in markers (stateless, thread-safe)."""

    tags = {"generation"}  # noqa: RUF012 - jinja2's own class attribute

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller: Callable[[], str]) -> str:
        return OPEN + caller() + CLOSE


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore attributes (as transformers' sandbox hardening)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


class _Dict:
    """``dict()`` and ``dict.fromkeys()`` for templates, without the type itself (as transformers), sizes bounded."""

    def __init__(self, env: BoundedSandbox) -> None:
        self._env = env  # underscore: out of the template's reach (it could reset its own budget)

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Any, value: Any = None) -> dict[Any, Any]:
        return dict_fromkeys(self._env, keys, value)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # jinja2's own tojson escapes HTML characters; transformers overrides it the same way
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source: str, max_rendered_chars: int = MAX_RENDERED_CHARS) -> jinja2.Template:
    """A chat template compiled in the sandbox ``transformers`` uses, bounded (:mod:`~headrace.stages.chat_sandbox`).

    A syntax error is a ``TokenizerError``.

    >>> compile_template("{% for m in messages %}{{ m['role'] }}:{{ m['content'] }};{% endfor %}").render(
    ...     messages=[{"role": "user", "content": "hi"}])
    'user:hi;'
    """
    env = BoundedSandbox(max_rendered_chars, trim_blocks=True, lstrip_blocks=True,
                         extensions=[_Generation, loopcontrols])  # fmt: skip
    env.filters["tojson"] = env._bounded_filter("tojson", _tojson)
    env.globals.update(raise_exception=_raise_exception, dict=_Dict(env), namespace=_Namespace)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(f"the chat template does not compile: {e.message} (template line {e.lineno})") from None
    except (RecursionError, SyntaxError):  # jinja2's parser recurses; Python limits the nesting of the code it makes
        raise TokenizerError("the chat template does not compile: it nests too deeply (brackets, blocks, loops or "
                             "operators)") from None  # fmt: skip


class ChatRenderer:
    """Renders one conversation into text and the character spans of its assistant turns.

    >>> r = ChatRenderer("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</>{% endfor %}", {})
    >>> text, spans = r.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    >>> text, [text[a:b] for a, b in spans]
    ('<user>Hi</><assistant>Yo</>', ['Yo</>'])
    """

    def __init__(self, template: str, variables: dict[str, Any], max_rendered_chars: int = MAX_RENDERED_CHARS) -> None:
        self.template = compile_template(template, max_rendered_chars)
        self.marked = _GENERATION.search(template) is not None
        self.variables = {"tools": None, "documents": None, **variables, "add_generation_prompt": False}

    def _render(self, messages: list[dict[str, Any]]) -> str:
        env = self.template.environment
        assert isinstance(env, BoundedSandbox)
        return env.render_bounded(self.template, {"messages": messages, **self.variables})

    def text(self, messages: list[dict[str, Any]]) -> str:
        """The rendering alone, as ``apply_chat_template(messages, tokenize=False)`` (one render, no spans).

        >>> ChatRenderer("{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %};"
        ...              "{% endfor %}", {}).text([{"role": "assistant", "content": "Yo"}])
        'Yo;'
        """
        full = self._render(messages)
        return _unmark(full)[0] if self.marked else full

    def render(self, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
        """``(text, spans)``; raises ``ValueError`` (template prefixes inconsistent) or Jinja errors."""
        full = self._render(messages)
        if self.marked:
            return _unmark(full)
        spans = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            upto = full if i == len(messages) - 1 else self._render(messages[: i + 1])
            start = self._content_start(messages, i, upto)
            end = len(upto) if full.startswith(upto) else _common_prefix(upto, full)
            content = messages[i].get("content")
            lost = end <= start or (isinstance(content, str) and content.strip() not in full[start:end])
            if end < len(upto) and lost:
                raise ValueError(
                    f"the template renders message {i} (assistant) differently once later messages "
                    "follow, so its span is unknown; mark the assistant text with {% generation %}"
                )
            spans.append((start, end))
        return full, spans

    def _content_start(self, messages: list[dict[str, Any]], i: int, upto: str) -> int:
        """Where message ``i``'s content starts in ``upto`` (the rendering of ``messages[:i+1]``)."""
        if isinstance(messages[i].get("content"), str):
            try:
                probe = self._render([*messages[:i], {**messages[i], "content": PLACEHOLDER}])
            except jinja2.exceptions.SecurityError:
                raise
            except jinja2.TemplateError:  # a template that checks the content itself: use the fallback
                probe = ""
            at = probe.find(PLACEHOLDER)
            if at >= 0 and upto.startswith(probe[:at]):
                return at
        try:
            before = self._render(messages[:i]) if i else ""
        except jinja2.exceptions.SecurityError:
            raise
        except jinja2.TemplateError:  # a template may index messages[0]; an empty prefix renders nothing
            before = ""
        if not upto.startswith(before):
            raise ValueError(f"the template renders the messages before {i} (assistant) differently once it "
                             "follows, so its span is unknown; mark assistant text with {% generation %}")  # fmt: skip
        return len(before)


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix (a binary search over C-speed comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _unmark(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The text without ``{% generation %}`` markers, and the spans they enclosed."""
    parts = re.split("([\ufdd0\ufdd1])", text)
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    at, start = 0, -1
    for part in parts:
        if part == OPEN:
            if start >= 0:
                raise ValueError("nested {% generation %} blocks")
            start = at
        elif part == CLOSE:
            if start < 0:
                raise ValueError("{% endgeneration %} without {% generation %}")
            spans.append((start, at))
            start = -1
        else:
            out.append(part)
            at += len(part)
    return "".join(out), spans


def _messages(value: Any, where: str, column: str) -> list[dict[str, Any]]:
    """A conversation checked and normalised as ``transformers`` does (null-valued keys dropped)."""
    if isinstance(value, np.ndarray):
        value = list(value)
    if not isinstance(value, list) or not value:
        got = "null" if value is None else ("an empty list" if value == [] else type(value).__name__)
        raise RecordError(f"chat(column={column!r}): {where} holds {got}, not a list of messages "
                          '({"role": ..., "content": ...} dicts)')  # fmt: skip
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RecordError(f"chat(column={column!r}): {where}, message {k} is {_short(m)}, not a dict with a "
                              'string "role" (and "content")')  # fmt: skip
        msg = {key: v for key, v in m.items() if v is not None}
        if any(isinstance(v, str) and _RESERVED.search(v) for v in msg.values()):
            raise RecordError(f"chat: {where}, message {k} holds U+FDD0..U+FDD2, Unicode noncharacters headrace "
                              "reserves to mark spans; remove them with a map()")  # fmt: skip
        out.append(msg)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _labels(ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    """Each token's id where any of its characters lies in a span, -100 elsewhere."""
    out = np.asarray(ids, dtype=np.int64)
    if not len(out):
        return out
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    start, end = off[:, 0], np.maximum(off[:, 1], off[:, 0] + 1)  # a zero-width token holds part of its character
    keep = np.zeros(len(out), dtype=bool)
    for a, b in spans:
        if b > a:
            keep |= (start < b) & (end > a)
    return np.where(keep, out, IGNORE)


def template_variables(tokenizer: Tokenizer) -> dict[str, Any]:
    """``bos_token``, ``eos_token``, ``pad_token``, ``mask_token``: the tokenizer's, where it has one."""
    out = {}
    for name in ("bos", "eos", "pad", "mask"):
        i = getattr(tokenizer, f"{name}_id", None)
        if i is not None:
            try:
                out[f"{name}_token"] = tokenizer.decode([int(i)])
            except Exception:  # a tokenizer that cannot decode its own id: leave the variable undefined
                continue
    return out


def chat_fn(
    tokenizer: Tokenizer,
    *,
    template: str | None,
    column: str,
    lineage: Callable[[int, int], str],
    max_rendered_chars: int | None = None,
    tokenize: bool = True,
    text_column: str | None = None,
) -> Callable[[Block], Block]:
    """A block function: ``column`` (message lists) into ``input_ids`` and ``labels`` (``list<int32>``).

    ``template`` (Jinja) defaults to the tokenizer's ``chat_template``; it is compiled once, here. A
    rendering longer than ``max_rendered_chars`` (None: :data:`MAX_RENDERED_CHARS`), or a template past
    any other bound of the sandbox, is a ``RecordError`` naming the record. ``text_column`` also keeps
    the rendered conversation (a string column); with ``tokenize=False`` it is the only output.

    >>> from tokenizers import Tokenizer as HF, models, pre_tokenizers
    >>> from headrace.tokenizer import load_tokenizer
    >>> hf = HF(models.WordLevel({"[UNK]": 0, "user": 1, "assistant": 2, ":": 3, "hi": 4, "yo": 5, ";": 6},
    ...                          unk_token="[UNK]"))
    >>> hf.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> fn = chat_fn(load_tokenizer(hf), template="{% for m in messages %}{{ m.role }}: {{ m.content }} ; "
    ...              "{% endfor %}", column="messages", lineage=lambda s, r: f"row {r}", text_column="text")
    >>> out = fn(Block.from_pydict({"messages": [[{"role": "user", "content": "hi"},
    ...                                           {"role": "assistant", "content": "yo"}]]}))
    >>> out.columns["input_ids"].to_pylist(), out.columns["labels"].to_pylist()
    ([[1, 3, 4, 6, 2, 3, 5, 6]], [[-100, -100, -100, -100, -100, -100, 5, 6]])
    >>> out.columns["text"].to_pylist()
    ['user: hi ; assistant: yo ; ']
    """
    source = template if template is not None else tokenizer.chat_template
    if source is None:
        raise TokenizerError(f"{tokenizer.name}: no chat template; pass chat(template=...) with a Jinja chat "
                             "template (as transformers' tokenizer.chat_template)")  # fmt: skip
    if not tokenize and text_column is None:
        raise ValueError("chat(tokenize=False) renders text only: name its column with text_column=")
    renderer = ChatRenderer(source, template_variables(tokenizer), max_rendered_chars or MAX_RENDERED_CHARS)
    dtype = np.int32 if tokenizer.vocab_size < 2**31 else np.int64
    outputs = ("input_ids", "labels") if tokenize else ()

    def rendered(messages: list[dict[str, Any]], where: str) -> tuple[str, list[tuple[int, int]]]:
        try:
            return renderer.render(messages) if tokenize else (renderer.text(messages), [])
        except jinja2.exceptions.SecurityError as e:
            raise RecordError(f"chat: {where}: the chat template was stopped on this conversation: {e}; the "
                              "template is not trusted, so its work is bounded (see headrace's security "
                              "model)") from None  # fmt: skip
        except (jinja2.TemplateError, ValueError, TypeError, ArithmeticError, LookupError, AttributeError) as e:
            raise RecordError(f"chat: {where}: the chat template failed on this conversation: "
                              f"{type(e).__name__}: {e}") from None  # fmt: skip

    def per_block(block: Block) -> Block:
        col = block.columns.get(column)
        if col is None:
            raise SchemaError(f"chat(column={column!r}): no such column; the columns are {list(block.columns)}")
        if isinstance(col, pa.Array) and not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            where = lineage(int(block.shard[0]), int(block.row[0])) if block.num_rows else "?"
            raise SchemaError(f"chat(column={column!r}): the column holds {col.type}, not lists of messages "
                              f"(at {where}); parse JSON strings with a map() first")  # fmt: skip
        texts: list[str] = []
        ids_parts: list[np.ndarray] = []
        label_parts: list[np.ndarray] = []
        for r, conversation in enumerate(to_pylist(col)):
            where = lineage(int(block.shard[r]), int(block.row[r]))
            text, spans = rendered(_messages(conversation, where, column), where)
            texts.append(text)
            if tokenize:
                ids, spans_of_tokens = tokenizer.encode_offsets(text)
                label_parts.append(_labels(ids, spans_of_tokens, spans))
                ids_parts.append(np.asarray(ids, dtype=np.int64))
        columns = {k: v for k, v in block.columns.items() if k not in (column, *outputs, text_column)}
        if tokenize:
            lengths = np.fromiter((len(p) for p in ids_parts), dtype=np.int64, count=len(ids_parts))
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            arrow_type = pa.int32() if dtype == np.int32 else pa.int64()

            def column_of(parts: list[np.ndarray]) -> pa.Array:
                flat = np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype=dtype)
                return pa.ListArray.from_arrays(arrow_numbers(offsets), arrow_numbers(flat, arrow_type))

            columns["input_ids"] = column_of(ids_parts)
            columns["labels"] = column_of(label_parts)
        if text_column is not None:
            big = sum(len(t) for t in texts) * 4 >= 2**31  # UTF-8 takes at most 4 bytes a character
            columns[text_column] = pa.array(texts, type=pa.large_string() if big else pa.string())
        return Block(columns=columns, shard=block.shard, row=block.row)

    return per_block
