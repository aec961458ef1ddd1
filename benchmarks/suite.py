"""The benchmark suite's common result format: what every ``bench_*.py`` script writes for ``python -m benchmarks``.

A script measures *contenders* (headrace, its peers, and reference points such as "the tokenizer alone")
on *cases* (one workload at one configuration) and records every repetition. The report
(``benchmarks/report.py``) turns the results into ``BENCHMARKS.md``: medians with their spread, and the
ratio headrace/peer for each case, from the same run.

    >>> m = Measure("Parquet -> tokenize -> pack -> batch", "headrace", "tokens/s", [9.0, 11.0, 10.0],
    ...             role="headrace")
    >>> m.median, m.spread
    (10.0, (9.0, 11.0))
    >>> peer = Measure("Parquet -> tokenize -> pack -> batch", "HF datasets", "tokens/s", [4.0, 5.0, 5.0])
    >>> round(ratio(m, peer)[0], 2)
    2.0

A script given ``--suite-out DIR`` writes ``DIR/<name>.json`` with :meth:`Result.write`.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["headrace", "peer", "reference"]

# The packages whose versions every result records (those not installed are left out).
PACKAGES = (
    "headrace",
    "pyarrow",
    "numpy",
    "tokenizers",
    "datasets",
    "mosaicml-streaming",
    "litdata",
    "webdataset",
    "torch",
    "pillow",
    "fsspec",
    "s3fs",
)


@dataclass
class Measure:
    """One contender's repetitions of one metric on one case.

    ``role``: ``"headrace"`` (any headrace configuration), ``"peer"`` (another library, the ratio's
    denominator) or ``"reference"`` (a ceiling or floor, e.g. the tokenizer alone or a nanoGPT memmap
    loop: also a denominator, named as such). ``higher_is_better``: ``False`` for times and memory.
    """

    case: str
    contender: str
    metric: str
    values: list[float]
    role: Role = "peer"
    higher_is_better: bool = True
    note: str = ""

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def spread(self) -> tuple[float, float]:
        return float(min(self.values)), float(max(self.values))


def ratio(headrace: Measure, other: Measure) -> tuple[float, float, float]:
    """headrace/other: the ratio of the medians, and the lowest and highest ratio over all pairs of repetitions.

    >>> ratio(Measure("c", "a", "s", [2.0, 4.0]), Measure("c", "b", "s", [1.0, 2.0]))
    (2.0, 1.0, 4.0)
    """
    pairs = [a / b for a in headrace.values for b in other.values if b]
    if not pairs or not other.median:
        return float("nan"), float("nan"), float("nan")
    return headrace.median / other.median, min(pairs), max(pairs)


def machine() -> dict[str, Any]:
    """The machine and the versions of the packages that matter: every result carries them."""
    cpu, ram_gb = platform.processor() or "unknown", 0.0
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), cpu)
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal:"))
        ram_gb = int(mem.split()[1]) / 1024**2
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(ram_gb, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average": round(os.getloadavg()[0], 2),
    }


@dataclass
class Result:
    """What one benchmark script measured in one run.

    ``plots``: PNG files the script drew, relative to the folder the result is written to. ``notes``: what
    the reader must know: a peer that could not run and why, checks that passed, the data used.
    """

    name: str
    title: str
    quick: bool
    measures: list[Measure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine)
    date: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    seconds: float = 0.0

    def add(self, case: str, contender: str, metric: str, values: list[float], **kw: Any) -> Measure:
        """Record one measure (see :class:`Measure` for ``role``, ``higher_is_better``, ``note``)."""
        m = Measure(case, contender, metric, [float(v) for v in values], **kw)
        self.measures.append(m)
        return m

    def write(self, folder: Path) -> Path:
        """Write ``folder/<name>.json`` (its notes redacted: they may quote errors naming URLs); the path."""
        from headrace.core.redact import redacted

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        path.write_text(json.dumps(redacted(asdict(self)), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> Result:
        raw = json.loads(path.read_text())
        raw["measures"] = [Measure(**m) for m in raw["measures"]]
        return cls(**raw)


def build_once(
    folder: Path, spec: dict[str, Any], write: Callable[[Path], dict[str, Any] | None], what: str
) -> dict[str, Any]:
    """Generated data: ``folder`` as ``write(tmp)`` makes it, unless its ``_SPEC.json`` records ``spec``.

    ``write`` fills an empty ``<folder>.tmp`` and may return facts to record with the spec (row counts,
    sums); the folder is replaced only once it is complete, so an interrupted build is never taken for a
    finished one. Returns the recorded spec and facts (``{"spec": ..., **facts}``).
    """
    marker = folder / "_SPEC.json"
    if marker.exists():
        got: dict[str, Any] = json.loads(marker.read_text())
        if got.get("spec") == spec:
            return got
    started = time.perf_counter()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    recorded = {"spec": spec, **(write(tmp) or {})}
    (tmp / "_SPEC.json").write_text(json.dumps(recorded))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    print(f"  wrote {what} in {time.perf_counter() - started:.1f} s: {folder}", flush=True)
    return recorded
