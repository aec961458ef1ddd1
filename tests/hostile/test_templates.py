"""Hostile chat templates: huge allocations, sandbox escapes, long loops and recursion are refused, naming the record.

A chat template comes from the Hub with a tokenizer and is not trusted (headrace's security model):
each template below is refused with a ``RecordError`` that names the record and the bound it hit,
the allocations before anything large is allocated (traced peak under 64 MiB), and the ordinary
templates next to them still render exactly.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import headrace as hr
from headrace.stages.chat_sandbox import MAX_ITERATIONS

pytestmark = pytest.mark.timeout(120)

# a namespace of 80 attributes, each the same string of 1,000,000 characters
NAMESPACE = "{% set s = 'a' * 1000000 %}{% set ns = namespace(" + ", ".join(f"a{i}=s" for i in range(80)) + ") %}"
TOO_BIG = "chat templates may build at most 16,777,216 (max_rendered_chars)"
# (template, what the error says, whether the template tries a huge allocation: then its traced peak is checked)
HOSTILE = [
    ("{{ 'a' * 300000000 }}", f"builds a value of 300,000,000 characters; {TOO_BIG}", True),
    ("{{ 300000000 * 'a' }}", "builds a value of 300,000,000 characters", True),
    ("{{ [0] * 300000000 }}", "builds a list of 300,000,000 items; chat templates may build at most 1,000,000", True),
    ("{{ ('ab',) * 200000000 }}", "builds a list of 200,000,000 items", True),
    ("{{ 'a'|center(300000000) }}", "a width or count of 300,000,000 (more than max_rendered_chars", True),
    ("{{ 'a'.ljust(300000000) }}", "a width or count of 300,000,000", True),
    ("{{ 'a'.ljust(10000000) * 10 }}", "builds a value of 100,000,000 characters", True),
    ("{{ '{:>300000000}'.format('a') }}", "a format width or precision of more than 16,777,216", True),
    ("{{ '{:>{w}}'.format('a', w=300000000) }}", "a format width or precision of more than 16,777,216", True),
    ("{{ '%300000000s' % 'a' }}", "a format width or precision of more than 16,777,216", True),
    ("{{ '%*s' % (300000000, 'a') }}", "a width or count of 300,000,000", True),
    ("{{ '%s'|format('a') ~ '%300000000d'|format(1) }}", "a format width or precision", True),
    ("{% set s = 'a' * 100000 %}{{ s.replace('a', s) }}", "builds a value of 10,000,000,000 characters", True),
    ("{% set s = 'a' * 100000 %}{{ s|replace('a', s) }}", "builds a value of 10,000,000,000 characters", True),
    ("{% set s = 'a' * 100000 %}{{ s.translate({97: s}) }}", "builds a value of 10,000,000,000 characters", True),
    ("{{ ('\t' * 100000).expandtabs(10000) }}", "builds a value of 1,000,100,000 characters", True),
    ("{{ ('\n' * 100000)|indent(10000) }}", "builds a value of 1,000,110,000 characters", True),
    ("{% set s = 'a' * 1000000 %}{{ ([s, s, s, s, s, s, s, s, s, s] * 2)|join }}", "builds a value of", True),
    (
        "{% set s = 'a' * 1000000 %}{{ ','.join([s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s]) }}",
        "builds a value of more than 16,777,216 characters",
        True,
    ),  # the list measured up to the limit
    ("{{ dict.fromkeys(range(100000), 'a' * 1000) }}", "builds a value of more than 16,777,216 characters", True),
    ("{% set s = ['a' * 1000000] * 20 %}{{ s }}", "builds a value of more than 16,777,216 characters", True),
    ("{% set s = ['a' * 1000000] * 20 %}{{ s|string }}", "builds a value of more than 16,777,216", True),
    ("{% set s = ['a' * 1000000] * 20 %}{{ s|tojson }}", "builds a value of more than 16,777,216", True),
    ("{% set s = ['a' * 1000000] * 20 %}{{ 'x' ~ s }}", "builds a value of more than 16,777,216", True),
    ("{% set s = ['a' * 1000000] * 20 %}{{ '%s' % (s,) }}", "builds a value of more than 16,777,216 characters", True),
    ("{% set s = [0] * 1000 %}{{ s * 1001 }}", "builds a list of 1,001,000 items; chat templates may build at", True),
    ("{{ [1]|batch(300000000, 'x')|list }}", "a width or count of 300,000,000", True),
    (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        f"builds a value of 33,554,432 characters; {TOO_BIG}",
        True,
    ),
    (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "builds a value of 33,554,432 characters",
        True,
    ),
    (
        "{% set ns = namespace(s=[0]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "builds a list of 1,048,576 items",
        True,
    ),
    (
        "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ 'x' * 100 %}{% endfor %}",
        "builds more than 268,435,456 characters in all (16 x max_rendered_chars)",
        True,
    ),
    (
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        "renders more than 16,777,216 characters (max_rendered_chars)",
        True,
    ),
    # widths that add up: each under the limit, the whole far over it (each of these built 80 M characters)
    (
        "{{ '%16000000d%16000000d%16000000d%16000000d%16000000d' % (1, 1, 1, 1, 1) }}",
        f"builds a value of more than 16,777,216 characters; {TOO_BIG}",
        True,
    ),
    (
        "{{ '%*d%*d%*d%*d%*d' % (16000000, 1, 16000000, 1, 16000000, 1, 16000000, 1, 16000000, 1) }}",
        "more than 16,777,216",
        True,
    ),
    ("{{ ('%16000000d' * 5)|format(1, 1, 1, 1, 1) }}", "builds a value of more than 16,777,216", True),
    ("{{ ('{0:16000000}' * 5).format(1) }}", f"builds a value of more than 16,777,216 characters; {TOO_BIG}", True),
    ("{{ ('{0:{1}}' * 5).format(1, 16000000) }}", "builds a value of more than 16,777,216 characters", True),
    ("{{ ('{0:.16000000f}' * 5).format(1.0) }}", "builds a value of more than 16,777,216 characters", True),
    ("{% set s = 'a' * 1000000 %}{{ ('{}' * 20).format(*([s] * 20)) }}", "builds a value of more than 16,777", True),
    ("{% set s = 'a' * 1000000 %}{{ ('{!r}' * 20).format(*([s] * 20)) }}", "builds a value of more than 16,777", True),
    # joins of generators and dict views: measured before the string is built (each built 100 M characters)
    ("{% set s = 'a' * 1000000 %}{{ ([s] * 100)|select|join }}", "builds a value of more than 16,777,216", True),
    ("{% set s = 'a' * 1000000 %}{{ ''.join(([s] * 100)|select) }}", "builds a value of more than 16,777,216", True),
    ("{% set s = 'a' * 1000000 %}{{ ''.join(dict.fromkeys(range(100), s).values()) }}", "more than 16,777,216", True),
    ("{% set s = 'a' * 1000000 %}{{ dict.fromkeys(range(100), s).values()|string }}", "more than 16,777,216", True),
    ("{% set s = 'a' * 1000000 %}{{ dict.fromkeys(range(100), s).items() }}", "more than 16,777,216", True),
    ("{% set s = 'a' * 1000000 %}{{ 'x' ~ dict.fromkeys(range(100), s).values() }}", "more than 16,777,216", True),
    ("{% set s = 'a' * 1000000 %}{{ '%s' % (dict.fromkeys(range(100), s).values(),) }}", "more than 16,777", True),
    ("{% set s = 'a' * 1000000 %}{{ ([s] * 100)|map('upper')|join }}", "builds a value of more than 16,777,216", True),
    ("{% set s = 'a' * 1000000 %}{{ ''.join(([s] * 100)|map('upper')) }}", "more than 16,777,216", True),
    ("{{ ','.join('a' * 10000000) }}", "builds a value of 19,999,999 characters", True),
    # lists of more than MAX_ITEMS items are refused before they are built (each built a list of 10 M items)
    ("{{ ('a' * 10000000)|list|length }}", "builds a list of 10,000,000 items", True),
    ("{{ ('a' * 10000000)|select|list|length }}", "builds a list of more than 1,000,000 items", True),
    ("{{ ('a' * 10000000)|sort|length }}", "builds a list of 10,000,000 items", True),
    # a namespace's text holds its attributes' (each built 80 M characters)
    (NAMESPACE + "{{ ns }}", "builds a value of more than 16,777,216", True),
    (NAMESPACE + "{{ ns|string }}", "builds a value of more than 16,777,216", True),
    (NAMESPACE + "{{ '%s' % ns }}", "builds a value of more than 16,777,216", True),
    # escaping makes a string longer: measured first (each built 60 M characters)
    ("{{ ('\\'' * 12000000)|e|length }}", "builds a value of 60,000,000 characters", True),
    ("{{ ('x'|safe + '\\'' * 12000000)|length }}", "builds a value of 60,000,001 characters", True),
    ("{{ 10 ** 1000000 }}", "10 ** 1000000 has more than 65,536 bits", True),
    ("{{ (10 ** 10000) * (10 ** 10000) }}", "a product of more than 65,536 bits", True),
    ("{{ messages|tojson(indent=1000) }}", "tojson(indent=...) of more than 64", True),
    ("{{ lipsum(1000000) }}", "'lipsum' is undefined", False),
    # loops and recursion
    ("{% for i in range(10**9) %}{% endfor %}", "range() of more than 100,000 numbers", False),
    ("{% for i in range(2, 10**30, 3) %}{% endfor %}", "range() of more than 100,000 numbers", False),
    (
        "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
        f"loops run more than {MAX_ITERATIONS:,} iterations",
        False,
    ),
    ("{% for c in 'x' * 1000000 %}{% endfor %}", f"loops run more than {MAX_ITERATIONS:,} iterations", False),
    (
        "{% for i in range(1000) recursive %}{% if loop.depth < 3 %}{{ loop(range(1000)) }}{% endif %}{% endfor %}",
        f"loops run more than {MAX_ITERATIONS:,} iterations",
        False,
    ),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recurses too deeply", False),
    ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", "recurses too deeply", False),
    ("{{ 1 / 0 }}", "ZeroDivisionError: division by zero", False),
    # escapes from the sandbox
    ("{{ ''.__class__.__mro__ }}", "access to attribute '__class__' of 'str' object is unsafe", False),
    ("{{ messages.__class__.__base__.__subclasses__() }}", "access to attribute '__class__' of 'list'", False),
    ("{{ raise_exception.__globals__['os'] }}", "access to attribute '__globals__' of 'function'", False),
    ("{{ namespace.__init__.__globals__['os'] }}", "access to attribute '__init__'", False),
    ("{{ cycler.__init__.__globals__ }}", "access to attribute '__init__'", False),
    ("{{ dict._env.begin() }}", "access to attribute '_env'", False),
    ("{{ range.__self__.globals }}", "access to attribute '__self__' of 'method' object is unsafe", False),
    ("{{ self._TemplateReference__context.parent }}", "access to attribute '_TemplateReference__context'", False),
    ("{% set x = messages.append(1) %}", "access to attribute 'append' of 'list' object is unsafe", False),
    ("{% set x = messages[0].update({'role': 'x'}) %}", "access to attribute 'update' of 'dict'", False),
    ("{{ messages[0].content.format.__globals__['sys'] }}", "access to attribute '__globals__'", False),
    ("{% set ns = namespace(_x=1) %}", "cannot set underscore attributes ('_x')", False),
    ("{% set ns = namespace() %}{% set ns.__class__ = 1 %}", "cannot set underscore attributes ('__class__')", False),
    ("{% include 'x' %}", "no loader for this environment", False),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A byte-level BPE (every character encodable), trained in a moment on a few lines."""
    from headrace.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    return train_tokenizer(['Hello, how are you? <|user|> {"n": 3} === hello 0 400'] * 20, 300, path)


def write_jsonl(path: Path, convs: list[list[dict[str, Any]]]) -> str:
    path.write_text("".join(json.dumps({"id": i, "messages": c}) + "\n" for i, c in enumerate(convs)))
    return str(path)


CONVERSATIONS = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]] * 3


def rows(ds: hr.Dataset, workers: int = 0) -> list[dict[str, Any]]:
    return list(hr.Loader(ds, num_workers=workers))


@pytest.mark.parametrize(("template", "says", "allocates"), HOSTILE, ids=[h[0][:48] for h in HOSTILE])
def test_a_hostile_template_is_refused_naming_the_record(
    tokenizer: str, tmp_path: Path, template: str, says: str, allocates: bool
) -> None:
    ds = hr.open(write_jsonl(tmp_path / "hostile.jsonl", CONVERSATIONS)).chat(tokenizer, template=template)
    if allocates:
        tracemalloc.start()
    try:
        with pytest.raises(hr.RecordError) as caught:
            rows(ds)
        peak = tracemalloc.get_traced_memory()[1] if allocates else 0
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert message.startswith("chat: ") and "hostile.jsonl (record 0)" in message, message
    assert says in message
    assert peak < 64 * 2**20


def test_an_unsafe_attribute_printed_alone_renders_nothing(tokenizer: str, tmp_path: Path) -> None:
    """As in jinja2 and transformers: ``{{ x.__globals__ }}`` is an undefined that prints empty; nothing is reached."""
    template = ("{{ raise_exception.__globals__ }}{{ range.__self__ }}{{ self._TemplateReference__context }}"
                "{{ messages[0].content.format.__globals__ }}{{ dict._env }}{% for m in messages %}{{ m.content }}"
                "{% endfor %}")  # fmt: skip
    got = rows(hr.open(write_jsonl(tmp_path / "quiet.jsonl", CONVERSATIONS[:1])).chat(tokenizer, template=template))
    from headrace.tokenizer import load_tokenizer

    assert load_tokenizer(tokenizer).decode(list(got[0]["input_ids"])) == "HiHello"


@pytest.mark.parametrize("workers", [0, 2])
def test_the_budget_is_per_rendering_and_per_thread(tokenizer: str, tmp_path: Path, workers: int) -> None:
    """Each rendering may use most of the loop budget: budgets never add up across records or threads."""
    assert 400 * 375 < MAX_ITERATIONS < 2 * 400 * 375
    template = ("{% set ns = namespace(n=0) %}{% for i in range(400) %}{% for j in range(375) %}"
                "{% endfor %}{% set ns.n = ns.n + 1 %}{% endfor %}{% for m in messages %}{{ m.content }} {{ ns.n }}"
                "{% endfor %}")  # fmt: skip
    convs = [[{"role": "user", "content": f"hello {i}"}] for i in range(6)]
    got = rows(hr.open(write_jsonl(tmp_path / "busy.jsonl", convs)).chat(tokenizer, template=template), workers)
    from headrace.tokenizer import load_tokenizer

    decode = load_tokenizer(tokenizer).decode
    assert [decode(list(r["input_ids"])) for r in got] == [f"hello {i} 400" for i in range(6)]


def test_templates_near_the_bounds_still_render_exactly(tokenizer: str, tmp_path: Path) -> None:
    """What real templates do (loops, namespace, tojson, string building) is well inside the bounds."""
    template = (
        "{% set ns = namespace(sys='') %}{% for m in messages if m.role == 'system' %}{% set ns.sys = m.content %}"
        "{% endfor %}{{ ('<s>' ~ ns.sys ~ '</s>') if ns.sys else '' }}"
        "{% for m in messages %}{{ '<|' + m.role + '|>' }}{{ m.content|trim }}{{ '=' * 3 }}"
        "{% if loop.last %}{{ dict(n=loop.length)|tojson }}{% endif %}{% endfor %}"
    )
    big = "word " * 40_000  # a long document: 200,000 characters
    convs = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": big},
              {"role": "assistant", "content": "ok"}]]  # fmt: skip
    got = rows(hr.open(write_jsonl(tmp_path / "fine.jsonl", convs)).chat(tokenizer, template=template))
    from headrace.tokenizer import load_tokenizer

    text = load_tokenizer(tokenizer).decode(list(got[0]["input_ids"]))
    assert text == f'<s>Be brief.</s><|system|>Be brief.===<|user|>{big.strip()}===<|assistant|>ok==={{"n": 3}}'


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("{{ '{} 123456789012'.format('a') }}", "a 123456789012"),
        ("{{ '%s 123456789012' % 'a' }}", "a 123456789012"),
        ("{{ '100%% 123456789012 %s' % 'a' }}", "100% 123456789012 a"),
        ("{{ '{{x:123456789012}} {:>5}'.format('a') }}", "{x:123456789012}     a"),
        ("{{ '%5d|%-3s|' % (42, 'b') }}", "   42|b  |"),
        # values are not widths: only widths and counts are held to max_rendered_chars
        ("{{ '{}'.format(20000000) }}", "20000000"),
        ("{{ '{:,}/{n}'.format(20000000, n=30000000) }}", "20,000,000/30000000"),
        ("{{ '%d' % 20000000 }}", "20000000"),
        ("{{ '%(n)d' % {'n': 20000000} }}", "20000000"),
        ("{{ '%*d' % (9, 20000000) }}", " 20000000"),
        ("{{ '%d-%s'|format(20000000, 30000000) }}", "20000000-30000000"),
        ("{{ '%(a)s'|format(a=20000000) }}", "20000000"),
        ("{{ '{:>9}'.format(20000000) ~ ','.join(['20000000', 'x']) }}", " 2000000020000000,x"),
        ("{{ x|default(20000000) }} {{ 'abc'|truncate(20000000) }} {{ 20000000|string }}", "20000000 abc 20000000"),
        ("{{ 'a b'.split(' ', 20000000)|join(',') }} {{ [20000000, 1]|max }}", "a,b 20000000"),
    ],
)
def test_numbers_that_are_not_widths_are_not_refused(template: str, rendered: str) -> None:
    from headrace.stages.chat import ChatRenderer

    assert ChatRenderer(template, {}).render([{"role": "user", "content": "Hi"}]) == (rendered, [])


@pytest.mark.parametrize(
    "template",
    [
        "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
        "{% if 1 %}" * 3000 + "x" + "{% endif %}" * 3000,
        "{{ " + "[" * 5000 + "]" * 5000 + " }}",
        "{{ 1" + " + 1" * 20000 + " }}",
        "{% if 1 %}" * 150 + "x" + "{% endif %}" * 150,  # Python: too many levels of indentation
        "{% for a in [1] %}" * 25 + "x" + "{% endfor %}" * 25,  # Python: too many statically nested blocks
    ],
    ids=["brackets", "blocks", "lists", "operators", "ifs", "loops"],
)
def test_a_template_nested_thousands_deep_is_refused_when_chat_is_called(
    tokenizer: str, tmp_path: Path, template: str
) -> None:
    """jinja2's parser and compiler recurse: such a template was a bare RecursionError (or a SyntaxError)."""
    from headrace.tokenizer import TokenizerError

    ds = hr.open(write_jsonl(tmp_path / "c.jsonl", CONVERSATIONS))
    with pytest.raises(TokenizerError, match="does not compile: it nests too deeply"):
        ds.chat(tokenizer, template=template)


def small(template: str, max_chars: int = 1000) -> str:
    from headrace.stages.chat_sandbox import BoundedSandbox

    env = BoundedSandbox(max_chars)
    return env.render_bounded(env.from_string(template), {})


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{{ '%900d%900d%900d%900d%900d' % (1, 1, 1, 1, 1) }}", "builds a value of more than 1,000 characters"),
        ("{{ '%.900f%.900f' % (1.5, 2.5) }}", "builds a value of more than 1,000 characters"),
        ("{{ '%*d%*d' % (900, 1, 900, 2) }}", "builds a value of more than 1,000 characters"),
        ("{{ '%900d%900d'|format(1, 2) }}", "builds a value of more than 1,000 characters"),
        ("{{ '%(a)900d%(a)900d'|format(a=1) }}", "builds a value of more than 1,000 characters"),
        ("{{ '{0:900}{0:900}'.format(1) }}", "builds a value of more than 1,000 characters"),
        ("{{ '{0:{1}}{0:{1}}'.format(1, 900) }}", "builds a value of more than 1,000 characters"),
        ("{{ '{a:{w}}{a:{w}}'.format_map({'a': 1, 'w': 900}) }}", "builds a value of more than 1,000 characters"),
        ("{{ ('{}' * 3).format('a' * 400, 'b' * 400, 'c' * 400) }}", "builds a value of more than 1,000 characters"),
        ("{{ ('x'|safe + '{0:900}{0:900}').format(1) }}", "builds a value of more than 1,000 characters"),
        ("{{ ('a' * 600)|center(900) ~ 'a'.rjust(1001) }}", "a width or count of 1,001 (more than max_rendered"),
        ("{{ 'ab'.replace('a', 'b', 1001) }}", "a width or count of 1,001"),
        ("{{ 'ab'|wordwrap(1001) }}", "a width or count of 1,001"),
    ],
)
def test_sizes_are_summed_over_all_fields_before_formatting(template: str, says: str) -> None:
    """Every width, precision and value of a ``%``, ``format`` or ``.format`` counts: the sum is checked first."""
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError) as caught:
        small(template)
    assert says in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "template",
    [
        "{{ '%5d|%-4s|%.2f|%x|%r|%c|%%|%+05d' % (42, 'ab', 3.14159, 255, 'q', 65, 7) }}",
        "{{ '%(a)s=%(b)r' % {'a': 1, 'b': [1, 'x']} }}",
        "{{ '%*.*f' % (8, 2, 3.14159) }}",
        "{{ '%s'|format([1, 'a']) }} {{ '%s and %s'|format('a', 'b') }}",
        "{{ '{:>8}|{:<4}|{:^7.3f}|{!r}|{:,}|{:08.2f}|{:x}|{{}}'.format('ab', 'c', 3.14159, 'q', 1234567, -2.5, 255) }}",
        "{{ '{0}{1}{0}|{a[0]}|{b.x}'.format('x', 'y', a=[5], b={'x': 2}) }}",
        "{{ '{0:{1}}|{0:>{w}.{p}}'.format('abc', 5, w=6, p=2) }}",
        "{{ '{a}-{b}'.format_map({'a': 1, 'b': 'z'}) }}",
        "{{ ([1, 2, 3]|map('string')|join(', ')) ~ ('-'.join(['a', 'b'])) ~ (','.join('abc')) }}",
        "{{ (range(3)|select('odd')|join) ~ ({'k': 1, 'j': 2}|join('+')) ~ ({'k': 'v'}.values()|join) }}",
        "{{ {'a': [1, 'x']}.items()|list }} {{ {'a': 1}.values() }} {{ 'x' ~ {'a': 'é'}.keys() ~ (['\\n', \"'\"],) }}",
        "{{ 'abc'|list }} {{ 'cba'|sort|join }} {{ 'abca'|unique|list }} {{ [3, 1]|reverse|list }} {{ 'ab'|reverse }}",
        "{{ 'ab'|center(6) }}|{{ 'a'.ljust(3) }}|{{ '7'.zfill(3) }}|{{ 'x\ny'|indent(2, true) }}|",
        "{{ 'aaa'.replace('a', 'bb', 2) }}|{{ 'a\tb'.expandtabs(4) }}|{{ 'a b c'|wordwrap(2) }}",
        "{{ [1, 2, 3]|batch(2)|list }}|{{ namespace(a=1) }}|{{ '<a>'|e }}|{{ ('<%s>'|safe) % '&' }}",
        "{{ 'x'|safe + '<' }}",
    ],
)
def test_formatting_renders_as_the_plain_sandbox(template: str) -> None:
    """Under the limits, ``%``, ``format``, ``.format``, ``join`` and the list filters render exactly as jinja2's."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    assert small(template) == ImmutableSandboxedEnvironment().from_string(template).render()
