"""Splits: each record goes to one named part by a hash of its place (or its id), or by position as in HF's slices.

A hash split keeps a row when ``hash(seed, shard key, row)`` — or ``hash(seed, id)`` with ``by=`` —
falls in its part's share of ``[0, 1)``. The shard key is the file's path relative to the folder all
the dataset's files share, so a file added beside the others leaves every existing record in its
part, and a dataset copied elsewhere splits the same. A slice (``"train[10%:20%]"``, HF's split
syntax) keeps rows by their position in the files' order; files outside it are not read at all.

Both are filters over the rows' lineage: they commute with reading order, so each part is an
ordinary pipeline (shuffle it, resume it). The node's state is its upstream's.

>>> check_parts({"train": 0.9, "validation": 0.1})
(('train', 'validation'), (0.9, 0.1))
>>> parse_slice("train[10%:20%]")
('train', [(10, 20, '%')])
>>> slice_bounds(10, 20, "%", total=1000), slice_bounds(-5, None, "abs", total=1000)
((100, 200), (995, 1000))
>>> place_keys(["s3://b/data/a.parquet", "s3://b/data/sub/b.parquet"])
('a.parquet', 'sub/b.parquet')
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core import state as states
from headrace.core.block import Block, to_numpy, to_pylist
from headrace.core.node import UPSTREAM, Node, State
from headrace.plan import Context, Stage, Upstream
from headrace.stages.source import Source

SUM_SLACK = 1e-9  # proportions summing to 1 in floating point may come out a hair above it
_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment and finalizer (as in core/rng.py)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SLICE = re.compile(
    r"^(?P<name>[\w.-]*)(\[(?P<lo>-?\d+)?(?P<lo_pct>%)?:(?P<hi>-?\d+)?(?P<hi_pct>%)?\])?(?P<rounding>\(\w+\))?$"
)
Keep = Callable[[Block], np.ndarray]


# -- descriptions ----------------------------------------------------------------------------------
def check_parts(parts: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The parts' names and proportions, checked: each in ``(0, 1]``, their sum at most 1."""
    if not isinstance(parts, Mapping) or not parts:
        raise ValueError(f"split() takes a dict of part names to proportions, e.g. {{'train': 0.98, "
                         f"'validation': 0.02}}, got {parts!r}")  # fmt: skip
    names, shares, total = [], [], 0.0
    for name, share in parts.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"split(): part names must be non-empty strings, got {name!r}")
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise ValueError(f"split(): the proportion of {name!r} must be a number in (0, 1], got {share!r}")
        total += float(share)
        names.append(name)
        shares.append(float(share))
    if total > 1 + SUM_SLACK:
        raise ValueError(f"split(): proportions sum to {total:g}, more than 1: {dict(parts)}")
    return tuple(names), tuple(shares)


def share_range(shares: Sequence[float], part: int) -> tuple[float, float]:
    """``[lo, hi)`` of part ``part`` in ``[0, 1)``: the parts' shares one after another (the last reaching 1
    is open-ended, so that no hash is in no part).

    >>> share_range((0.9, 0.1), 1)
    (0.9, inf)
    """
    lo = math.fsum(shares[:part])
    hi = math.fsum(shares[: part + 1])
    return lo, (math.inf if hi >= 1 - SUM_SLACK else hi)


def parse_slice(spec: str) -> tuple[str, list[tuple[int | None, int | None, str]]]:
    """HF's split syntax: ``"train"``, ``"train[:1000]"``, ``"train[10%:20%]"``, ``"train[:50%](pct1_dropremainder)"``,
    joined by ``+``. Returns the name and ``(from, to, unit)`` per slice; ``unit`` is ``"%"`` (``"%1"``: the
    ``pct1_dropremainder`` rounding) or ``"abs"``, as in HF a ``%`` on either end makes both ends percents.
    """
    names, slices = set(), []
    for piece in spec.replace(" ", "").split("+"):
        m = _SLICE.match(piece)
        if m is None or not piece:
            raise ValueError(f"split({spec!r}): not a split name or slice; write e.g. 'train', 'train[:1000]' or "
                             "'train[10%:20%]' (HF's syntax), or pass a dict of proportions")  # fmt: skip
        pct = bool(m["lo_pct"] or m["hi_pct"])
        rounding = (m["rounding"] or "(closest)")[1:-1]
        if rounding not in ("closest", "pct1_dropremainder") or (m["rounding"] and not pct):
            raise ValueError(f"split({spec!r}): a rounding, '(closest)' or '(pct1_dropremainder)', goes after a "
                             "percent slice only")  # fmt: skip
        lo, hi = (int(v.replace("_", "")) if v else None for v in (m["lo"], m["hi"]))
        if pct and any(v is not None and abs(v) > 100 for v in (lo, hi)):
            raise ValueError(f"split({spec!r}): percent slice boundaries must be between -100% and 100%")
        names.add(m["name"])
        slices.append((lo, hi, ("%1" if rounding == "pct1_dropremainder" else "%") if pct else "abs"))
    if len(names) > 1:
        raise ValueError(f"split({spec!r}): slices of one dataset only; got the names {sorted(names)}")
    return names.pop(), slices


def slice_bounds(lo: int | None, hi: int | None, unit: str, total: int) -> tuple[int, int]:
    """``[start, stop)`` rows of a slice of ``total`` rows, exactly as HF's ``ReadInstruction`` computes them."""
    if unit == "%1" and total < 100:
        raise ValueError(f"the 'pct1_dropremainder' rounding on {total} rows (under 100) always gives no row")
    ends = []
    for value, default in ((lo, 0), (hi, total)):
        if value is None:
            ends.append(default)
            continue
        if unit == "%":
            value = round(value * total / 100.0)  # HF's "closest" (Python's round: halves to even)
        elif unit == "%1":
            value = value * math.trunc(total / 100.0)
        ends.append(min(max(total + value, 0) if value < 0 else value, total))
    start, stop = ends
    return start, max(start, stop)


def place_keys(urls: Sequence[str]) -> tuple[str, ...]:
    """Each file's path relative to the deepest folder they all share (what a record's place hashes)."""
    paths = [re.sub(r"^[a-zA-Z][\w+.-]*://", "", u).split("?", 1)[0].split("#", 1)[0] for u in urls]
    folders = [p.split("/")[:-1] for p in paths]
    common = 0
    if folders:
        shortest = min(len(f) for f in folders)
        while common < shortest and len({f[common] for f in folders}) == 1:
            common += 1
    return tuple("/".join(p.split("/")[common:]) for p in paths)


# -- hashing ---------------------------------------------------------------------------------------
def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _hash64(seed: int, text: str | bytes) -> np.uint64:
    data = text if isinstance(text, bytes) else text.encode()
    digest = hashlib.blake2b(data, digest_size=8, key=str(seed).encode()).digest()
    return np.frombuffer(digest, dtype=np.uint64)[0]


def _units(z: np.ndarray) -> np.ndarray:
    """uint64 hashes as numbers in ``[0, 1)`` (their top 53 bits: exact doubles)."""
    return (_mix(z) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def place_units(keys: np.ndarray, shard: np.ndarray, row: np.ndarray) -> np.ndarray:
    """A number in ``[0, 1)`` per row from its shard's key hash and its record number."""
    with np.errstate(over="ignore"):
        return _units(keys[shard] + (row.astype(np.uint64) + np.uint64(1)) * _GAMMA)


def id_units(seed: int, values: Any) -> np.ndarray:
    """A number in ``[0, 1)`` per id: integers hashed as numbers, anything else as its text (or bytes)."""
    arr = to_numpy(values) if isinstance(values, np.ndarray | pa.Array) else np.asarray(values)
    if arr.dtype.kind in "iu":
        with np.errstate(over="ignore"):
            return _units(_mix(arr.astype(np.int64).view(np.uint64) ^ _hash64(seed, b"")))
    items = to_pylist(values) if isinstance(values, pa.Array) else list(arr)
    if any(v is None for v in items):
        raise ValueError("an id is null")
    hashed = [_hash64(seed, v if isinstance(v, bytes) else str(v)) for v in items]
    return _units(np.array(hashed, dtype=np.uint64))


# -- the node --------------------------------------------------------------------------------------
class SplitNode(Node[Block]):
    """Keeps the rows ``keep(block)`` marks; blocks left empty are passed over. The state is the upstream's."""

    upstream: Node[Block]

    def __init__(self, upstream: Node[Block], keep: Keep) -> None:
        self.upstream, self.keep = upstream, keep

    def reset(self, state: State | None) -> None:
        if state is None:
            self.upstream.reset(None)
        else:
            states.load_child(self.upstream.reset, state, UPSTREAM)

    def state_dict(self) -> State:
        return {UPSTREAM: self.upstream.state_dict()}

    def next(self) -> Block:
        while True:
            block = self.upstream.next()
            mask = self.keep(block)
            if mask.all():
                return block
            if mask.any():
                return block.filter(mask)


# -- the stages ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SplitStage(Stage):
    """Part ``part`` of a hash split into ``names`` with proportions ``shares``."""

    names: tuple[str, ...]
    shares: tuple[float, ...]
    part: int
    seed: int
    by: str | None
    keys: tuple[str, ...]  # each shard's place key (unused with ``by``)

    def describe(self) -> dict[str, Any]:
        return {"stage": "split", "part": self.names[self.part], "seed": self.seed, "by": self.by,
                "parts": dict(zip(self.names, self.shares, strict=True))}  # fmt: skip

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        lo, hi = share_range(self.shares, self.part)
        name, by, seed, lineage = self.names[self.part], self.by, self.seed, parent.lineage
        hashes = np.array([_hash64(seed, k) for k in self.keys], dtype=np.uint64)

        def keep(block: Block) -> np.ndarray:
            if by is not None:
                u = _id_units(block, by, seed, name, lineage)
            else:
                if block.num_rows and int(block.shard.min()) < 0:
                    raise ValueError(f"split({name!r}): a row made by a batched map has no place in the files to "
                                     "hash; split before that map, or split by an id column: split(..., by='id')"
                                     )  # fmt: skip
                u = place_units(hashes, block.shard, block.row)
            return (u >= lo) & (u < hi)

        return SplitNode(parent.build(ctx), keep)


def _id_units(block: Block, by: str, seed: int, name: str, lineage: Callable[[int, int], str]) -> np.ndarray:
    if by not in block.columns:
        raise KeyError(f"split({name!r}, by={by!r}): the rows have no column {by!r} (they have "
                       f"{sorted(block.columns)})")  # fmt: skip
    try:
        return id_units(seed, block.columns[by])
    except ValueError as e:
        where = lineage(int(block.shard[0]), int(block.row[0])) if block.num_rows else "an empty block"
        raise ValueError(f"split({name!r}, by={by!r}): {e} in the block starting at {where}") from None


@dataclass(frozen=True, kw_only=True)
class SliceStage(Stage):
    """Rows ``[lo, hi)`` of each shard listed in ``ranges`` (shard index, lo, hi), the shards already pruned."""

    spec: str
    ranges: tuple[tuple[int, int, int], ...]
    keys: tuple[str, ...]  # the kept shards' place keys in the whole dataset (a later split hashes them)

    def describe(self) -> dict[str, Any]:
        return {"stage": "split", "slice": self.spec, "ranges": [list(r) for r in self.ranges]}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        count = max((s for s, _, _ in self.ranges), default=-1) + 1
        whole = np.ones(count, dtype=bool)  # shards kept whole need no look at their rows
        spans: dict[int, list[tuple[int, int]]] = {}
        for shard, lo, hi in self.ranges:
            spans.setdefault(shard, []).append((lo, hi))
        for shard, pieces in spans.items():
            whole[shard] = pieces == [(0, -1)]

        def keep(block: Block) -> np.ndarray:
            if block.num_rows == 0 or whole[block.shard].all():
                return np.ones(block.num_rows, dtype=bool)
            mask = np.zeros(block.num_rows, dtype=bool)
            for shard in np.unique(block.shard).tolist():
                at = block.shard == shard
                for lo, hi in spans.get(shard, []):
                    mask |= at & (block.row >= lo) & ((block.row < hi) if hi >= 0 else True)
            return mask

        return SplitNode(parent.build(ctx), keep)


def slice_source(source: Source, spec: str) -> tuple[Source, SliceStage]:
    """The source cut down to the files a slice ``spec`` touches, and the stage keeping its rows.

    Row positions count records in the files' listed order (one counting pass for formats without
    row counts in their metadata, such as JSON Lines), as HF counts the rows of a split.
    """
    _, slices = parse_slice(spec)
    counts = source.counts()
    total = sum(counts)
    spans = sorted(slice_bounds(lo, hi, unit, total) for lo, hi, unit in slices)
    for (_, stop), (start, _) in pairwise(spans):
        if start < stop:
            raise ValueError(f"split({spec!r}): the slices overlap (rows {start} to {stop}); a row is kept once")
    ranges = slice_ranges(counts, spans)
    kept = sorted({shard for shard, _, _ in ranges})
    renumber = {shard: i for i, shard in enumerate(kept)}
    keys = place_keys([s.url for s in source.shards])
    if not kept:  # an empty slice: no file at all would be an error to read, so one file, no rows
        kept, ranges, renumber = [0], [(0, 0, 0)], {0: 0}
    pruned = replace(source, shards=tuple(source.shards[i] for i in kept))
    stage = SliceStage(
        spec=spec, ranges=tuple((renumber[s], lo, hi) for s, lo, hi in ranges), keys=tuple(keys[i] for i in kept)
    )
    return pruned, stage


def slice_ranges(counts: Sequence[int], spans: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Per shard, the rows ``(shard, lo, hi)`` that global row spans cover (``hi=-1``: to the shard's end).

    >>> slice_ranges([10, 10, 10], [(5, 20)])
    [(0, 5, -1), (1, 0, -1)]
    """
    out = []
    start = 0
    for shard, n in enumerate(counts):
        for lo, hi in spans:
            a, b = max(lo - start, 0), min(hi - start, n)
            if a < b:
                out.append((shard, a, -1 if (a, b) == (0, n) or b == n else b))
        start += n
    return out
