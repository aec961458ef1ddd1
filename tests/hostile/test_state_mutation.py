"""Hostile checkpoint states: every leaf of real saved states perturbed, the digest signed again.

For real pipelines (JSON Lines through a buffer shuffle and a map; Parquet in global order, tokenized and
packed; a mixture of compressed JSON Lines and Parquet; windows over token shards), with no worker and with
two worker threads, a state is saved mid-epoch. Hypothesis then perturbs one place of it — a leaf replaced
by a value of another type, a negative or huge number, a string, ``None``, a nested list; a key deleted;
a key added — and signs the result again with :func:`headrace.core.state.digest`, so that what is tested
is the checking of the fields, not the checksum. Every load must either be refused with a
:class:`~headrace.StateError` (no other exception) or continue exactly like the unperturbed state: the
same remaining batches, value for value.

Values that no check can tell from real ones (another in-range position, a flipped flag) are not
generated: those are what the digest is for (tested at the end).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headrace as hr
from corpora import write_jsonl, write_parquet
from headrace.core.state import digest
from headrace.testing import assert_same_sequence
from headrace.tokenizer import train_tokenizer

Path_ = tuple[str | int, ...]

# Replacements: other types, out-of-range numbers, containers. Never 0, small positives or a bool for a bool.
GARBAGE: list[Any] = [None, True, "x", "", [], [[1]], {}, {"k": 1}, -1, -100, 10**15, 2**63, -(2**63), 10**30, 0.5]


def _shout(row: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(row["text"].split())}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> Path:
    folder = tmp_path_factory.mktemp("state-mutation")
    rows = corpus.slice(0, 600).select(["id", "text"])
    jsonl = folder / "jsonl"
    jsonl.mkdir()
    for k in range(3):  # uncompressed: byte positions are checked against the file size and its lines
        part = rows.slice(k * 200, 200).to_pylist()
        (jsonl / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    write_jsonl(rows.slice(0, 300), folder / "zst", shards=2, compression="zstd")
    write_parquet(rows, folder / "parquet", shards=3, row_group_size=50)
    tokens = folder / "tokens"
    tokens.mkdir()
    for k in range(3):
        (np.arange(k * 4000, (k + 1) * 4000) % 50021).astype(np.uint16).tofile(tokens / f"part-{k}.bin")
    train_tokenizer(rows.column("text").to_pylist()[:200], 300, folder / "tokenizer.json")
    return folder


PIPELINES: dict[str, Callable[[Path], hr.Dataset]] = {
    "jsonl-shuffle-map-batch": lambda d: (
        hr.open(str(d / "jsonl" / "*.jsonl"), chunk_bytes=8192, block_rows=64)
        .shuffle(seed=3, buffer_size=90)
        .map(_shout)
        .batch(16)
    ),
    "parquet-global-tokenize-pack-batch": lambda d: (
        hr.open(str(d / "parquet"), block_rows=64)
        .shuffle(seed=2, buffer_size=None, chunk_rows=32, window=2)
        .tokenize(str(d / "tokenizer.json"), add_eos=True)
        .pack(64)
        .batch(8)
    ),
    "mix-zst-parquet": lambda d: hr.mix(
        {"a": hr.open(str(d / "zst"), chunk_bytes=8192, block_rows=64), "b": hr.open(str(d / "parquet"))},
        weights={"a": 0.3, "b": 0.7},
        seed=1,
    ).batch(16),
    "token-windows": lambda d: (
        hr.open(str(d / "tokens" / "*.bin")).shuffle(seed=4, buffer_size=None).window(32, shift=1).batch(8)
    ),
}
STEPS = 5  # the state is saved after this many batches: inside a shuffle window, a pack remainder, a mixture


def _loader(name: str, data: Path, workers: int) -> hr.Loader:
    return hr.Loader(PIPELINES[name](data), num_workers=workers, prefetch=2)


_SAVED: dict[tuple[str, int], tuple[dict[str, Any], list[Any]]] = {}


def saved(name: str, data: Path, workers: int) -> tuple[dict[str, Any], list[Any]]:
    """The state after ``STEPS`` batches (through JSON) and the batches that follow it."""
    key = (name, workers)
    if key not in _SAVED:
        loader = _loader(name, data, workers)
        it = iter(loader)
        for _ in range(STEPS):
            next(it)
        state = json.loads(json.dumps(loader.state_dict()))
        rest = list(it)
        assert len(rest) >= 3, f"{name}: too little data after the saved state"
        _SAVED[key] = state, rest
    return _SAVED[key]


def places(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every place of a JSON value (containers and leaves), with its path; the digest left out."""
    if path:
        yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            if path or k != "digest":
                yield from places(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from places(v, (*path, i))


def mutate(state: dict[str, Any], path: Path_, how: str, garbage: Any) -> dict[str, Any]:
    """A copy of ``state`` with the place at ``path`` replaced, deleted or (a dict) given a new key; signed."""
    out = copy.deepcopy(state)
    parent: Any = out
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if how == "delete" and isinstance(parent, dict):
        del parent[last]
    elif how == "add" and isinstance(parent[last], dict):
        parent[last]["unexpected"] = garbage
    else:
        parent[last] = garbage
    out["digest"] = digest(out)
    return out


def check_refused_or_exact(name: str, data: Path, workers: int, state: dict[str, Any], rest: list[Any]) -> str:
    loader = _loader(name, data, workers)
    try:
        loader.load_state_dict(state)
        got = list(loader)
    except hr.StateError:
        return "refused"
    assert_same_sequence(got, rest, f"{name} with {workers} workers, continued from a perturbed state")
    return "exact"


@st.composite
def perturbations(draw: st.DrawFn, state: dict[str, Any]) -> tuple[Path_, str, Any]:
    where = [(p, v) for p, v in places(state)]
    path, value = draw(st.sampled_from(where))
    how = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
    garbage = draw(st.sampled_from([g for g in GARBAGE if not (isinstance(value, bool) and isinstance(g, bool))]))
    if how == "replace" and type(garbage) is type(value) and garbage == value:
        garbage = "x"
    return path, how, garbage


CASES = [(name, workers) for name in PIPELINES for workers in (0, 2)]


@pytest.mark.parametrize(("name", "workers"), CASES, ids=[f"{n}-{w}w" for n, w in CASES])
def test_a_perturbed_state_is_refused_or_continues_exactly(name: str, workers: int, data: Path) -> None:
    state, rest = saved(name, data, workers)
    assert check_refused_or_exact(name, data, workers, state, rest) == "exact"
    outcomes: list[str] = []

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(perturbations(state))
    def one(p: tuple[Path_, str, Any]) -> None:
        path, how, garbage = p
        outcomes.append(check_refused_or_exact(name, data, workers, mutate(state, path, how, garbage), rest))

    one()
    assert "refused" in outcomes  # the perturbations do reach the checks


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_leaf_of_the_position_refuses_garbage(name: str, data: Path) -> None:
    """Each leaf under ``node`` set to ``None`` and to a huge number: refused every time (exactly: these are
    never valid anywhere in a node state)."""
    state, rest = saved(name, data, 0)
    leaves = [p for p, v in places(state) if p[0] == "node" and not isinstance(v, dict | list)]
    assert len(leaves) >= 4
    for path in leaves:
        for garbage in (None, 2**63):
            got = check_refused_or_exact(name, data, 0, mutate(state, path, "replace", garbage), rest)
            assert got == "refused", f"{name}: {'.'.join(map(str, path))} = {garbage!r} was accepted"


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_an_edited_value_under_the_original_digest_is_refused(name: str, data: Path) -> None:
    state, _ = saved(name, data, 0)
    leaves = [(p, v) for p, v in places(state) if p[0] == "node" and isinstance(v, int) and not isinstance(v, bool)]
    path, value = leaves[len(leaves) // 2]
    edited = mutate(state, path, "replace", value + 1)
    edited["digest"] = state["digest"]
    with pytest.raises(hr.StateError, match="checksum does not match: it was edited or truncated"):
        _loader(name, data, 0).load_state_dict(edited)


def _closed(text: str) -> str:
    """``text`` (a JSON document cut short between two members) with its open brackets closed."""
    stack, quoted, escaped = [], False, False
    for ch in text:
        if quoted:
            quoted, escaped = (quoted, False) if escaped else (ch != '"', ch == "\\")
        elif ch == '"':
            quoted = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            stack.pop()
    return text + "".join(reversed(stack))


def test_a_truncated_state_is_refused(data: Path) -> None:
    state, _ = saved("mix-zst-parquet", data, 0)
    text = json.dumps(state)
    assert text.startswith('{"digest": ')  # first, so that a state cut short still carries it
    cuts = [i for i in range(len(text)) if text.startswith(', "', i)]  # between two members of an object
    assert len(cuts) > 20
    header = text.index('"pipeline"')  # cut before it, the state lacks its version or fingerprint: refused too
    for cut in cuts[1::3]:
        short = json.loads(_closed(text[:cut]))
        with pytest.raises(hr.StateError, match="checksum does not match" if cut > header else ""):
            _loader("mix-zst-parquet", data, 0).load_state_dict(short)
