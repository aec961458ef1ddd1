"""What the loader is doing: throughput, time per stage, queue depth, retries, cache hits, and how much of
the training loop waits for data.

:class:`Stats` is what :meth:`headrace.Loader.stats` returns: counts since the iteration began (rows,
tokens, bytes of the batches delivered), the time the training loop spent blocked in ``next()`` (data
wait) against the time between its calls (its step), each stage's own time (its ``next()`` time less
its upstream's), the prefetch queue's depth, and the remote sources' retries and cache hits.
:func:`instrument` times the stages of a built pipeline in place.

>>> import headrace as hr, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
>>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(100)))
>>> loader = hr.Loader(hr.open(path).batch(10))
>>> _ = list(loader)
>>> s = loader.stats()
>>> s.batches, s.rows, [name for name, _ in s.stages]
(10, 100, ['batch', 'source'])
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.node import Node, line, walk

TOKEN_COLUMNS = ("input_ids", "tokens")


class StageTimer:
    """Inclusive ``next()`` time and calls of one node (a wrapper set on the instance)."""

    def __init__(self, node: Node[Any], name: str) -> None:
        self.node, self.name = node, name
        self.seconds = 0.0
        self.calls = 0
        self._next = node.next

        def timed() -> Any:
            start = time.perf_counter()
            try:
                return self._next()
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        node.next = timed  # type: ignore[method-assign]


def stage_name(node: Node[Any]) -> str:
    """The pipeline step a node runs, by its kind: ``map(clean)``, ``filter(f)``, ``tokenize``, ``pack``, ...

    A map or filter names its function (a :class:`~headrace.stages.transform.Step`'s ``what``);
    ``pack`` is run by the window machinery (a window of ``seq_len`` every ``seq_len`` tokens, no
    label shift) and by the best-fit packer, and is called ``pack`` either way.
    """
    name = type(node).__name__.removesuffix("Node").lower()
    if name == "transform":
        what = getattr(getattr(node, "fn", None), "what", None)
        return what if isinstance(what, str) and what else "transform"
    if name == "window":
        plain = getattr(node, "shift", None) == 0 and getattr(node, "stride", None) == getattr(node, "seq_len", -1)
        return "pack" if plain else "window"
    return {"bestfit": "pack", "globalsource": "source", "tokenwindow": "windows"}.get(name, name)


def instrument(node: Node[Any]) -> list[StageTimer]:
    """Time every node along ``node``'s line of inputs (:func:`~headrace.core.node.line`: a mixture counts
    as one stage, its sources in it).

    Names that would repeat (two ``map(<lambda>)``, two ``pack``) are numbered in pipeline order,
    source first: ``map(<lambda>)#1``, ``map(<lambda>)#2``.
    """
    chain = list(line(node))
    names = [stage_name(n) for n in chain]
    counts = {name: names.count(name) for name in names}
    numbered = {name: 0 for name in names}
    for i in reversed(range(len(names))):  # the chain is output first; number from the source
        name = names[i]
        if counts[name] > 1:
            numbered[name] += 1
            names[i] = f"{name}#{numbered[name]}"
    return [StageTimer(n, name) for n, name in zip(chain, names, strict=True)]


@dataclass
class Stats:
    """A snapshot of the loader since its current iteration began (see the module docstring)."""

    batches: int = 0
    rows: int = 0
    tokens: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0  # since the iteration began
    first_batch_s: float | None = None  # time to the first batch
    wait_s: float = 0.0  # the training loop blocked in next()
    step_s: float = 0.0  # the training loop between its next() calls
    queue_depth: int = 0  # prefetched batches ready now
    queue_capacity: int = 0
    stages: list[tuple[str, float]] = field(default_factory=list)  # (stage, own seconds), output first
    retries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def data_wait(self) -> float:
        """The fraction of the training loop's time spent waiting for data: wait / (wait + step)."""
        total = self.wait_s + self.step_s
        return self.wait_s / total if total > 0 else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def cache_hit_rate(self) -> float | None:
        looked = self.cache_hits + self.cache_misses
        return self.cache_hits / looked if looked else None

    def scalars(self) -> dict[str, float]:
        """Flat numbers for a metrics logger (TensorBoard ``add_scalars``, ``wandb.log``)."""
        out = {
            "batches": float(self.batches), "rows_per_s": self.rows_per_s, "tokens_per_s": self.tokens_per_s,
            "bytes_per_s": self.bytes_per_s, "data_wait": self.data_wait, "queue_depth": float(self.queue_depth),
            "retries": float(self.retries),
        }  # fmt: skip
        if self.cache_hit_rate is not None:
            out["cache_hit_rate"] = self.cache_hit_rate
        out.update({f"stage_s/{name}": seconds for name, seconds in self.stages})
        return out

    def line(self) -> str:
        """One log line: ``batches 120 | 51.2k rows/s | 3.1M tok/s | data wait 0.4% | queue 8/8 | ...``."""
        parts = [f"batches {self.batches}", f"{_si(self.rows_per_s)} rows/s"]
        if self.tokens:
            parts.append(f"{_si(self.tokens_per_s)} tok/s")
        parts += [f"data wait {100 * self.data_wait:.1f}%", f"queue {self.queue_depth}/{self.queue_capacity}"]
        if self.retries:
            parts.append(f"retries {self.retries}")
        if self.cache_hit_rate is not None:
            parts.append(f"cache hits {100 * self.cache_hit_rate:.0f}%")
        busiest = max(self.stages, key=lambda s: s[1], default=None)
        if busiest is not None and busiest[1] > 0:
            parts.append(f"busiest stage {busiest[0]} ({busiest[1]:.2f} s)")
        return " | ".join(parts)


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def own_times(timers: list[StageTimer]) -> list[tuple[str, float]]:
    """Each stage's time less its upstream's (the chain is output first)."""
    out = []
    for i, timer in enumerate(timers):
        below = timers[i + 1].seconds if i + 1 < len(timers) else 0.0
        out.append((timer.name, max(0.0, timer.seconds - below)))
    return out


def measure(item: Any) -> tuple[int, int, int]:
    """``(rows, tokens, bytes)`` of a delivered batch (a dict of columns or an Arrow record batch) or row."""
    if isinstance(item, pa.RecordBatch):
        tokens = 0
        for name in TOKEN_COLUMNS:
            if name in item.schema.names:
                col = item.column(name)
                nested = pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
                tokens += len(col.flatten()) if nested or pa.types.is_fixed_size_list(col.type) else len(col)
        return item.num_rows, tokens, item.nbytes
    if not isinstance(item, Mapping):
        return 1, 0, 0
    rows, tokens, size = 1, 0, 0
    for name, value in item.items():
        if isinstance(value, np.ndarray):
            size += value.nbytes
            if value.ndim:
                rows = len(value)
            if name in TOKEN_COLUMNS:
                tokens += int(value.size) if value.dtype != object else sum(len(v) for v in value)
        elif isinstance(value, list):
            rows = len(value)
    return rows, tokens, size


def sources(node: Node[Any]) -> Iterator[Any]:
    """The remote filesystems under ``node`` (for their retry and cache counts)."""
    for current in walk(node):
        fs = getattr(getattr(current, "source", None), "fs", None)
        if fs is not None and hasattr(fs, "stats"):
            yield fs
