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

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pyarrow as pa
    from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))  # tests/corpora.py: the real paragraphs of corpora/

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


def host() -> dict[str, Any]:
    """The CPU model, cores, RAM, OS and Python of this machine."""
    cpu, ram_gb = platform.processor() or "unknown", 0.0
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), cpu)
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal:"))
        ram_gb = int(mem.split()[1]) / 1024**2
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(ram_gb, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions(names: tuple[str, ...], missing: str | None = None) -> dict[str, str]:
    """The installed version of each package of ``names``; one not installed is left out (or given ``missing``).

    >>> versions(("no-such-package-here",), missing="not installed")
    {'no-such-package-here': 'not installed'}
    """
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if missing is not None:
                out[name] = missing
    return out


def machine() -> dict[str, Any]:
    """The machine and the versions of the packages that matter: every result carries them."""
    return {**host(), "versions": versions(PACKAGES), "load_average": round(os.getloadavg()[0], 2)}


def script_machine(*packages: str, **extra: str) -> dict[str, Any]:
    """The machine as a script prints it and its JSON line records: :func:`host`, the versions of pyarrow, numpy,
    datasets and headrace and of ``packages`` ("not installed" for those missing), then ``extra``."""
    names = ("pyarrow", "numpy", "datasets", "headrace", *packages)
    return {**host(), **versions(names, missing="not installed"), **extra}


def cpu_time(children: bool = True) -> float:
    """CPU seconds (user + system, all threads) used so far by this process, and by its waited-for children
    (``prepare``, DataLoader workers) unless ``children=False``."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    spent = me.ru_utime + me.ru_stime
    if children:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent += kids.ru_utime + kids.ru_stime
    return spent


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


# -- what every script prints and writes ---------------------------------------------------------------
def report_header(title: str, info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Print the title, the machine and its load; the start of the JSON results every script prints."""
    print(title)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes on this machine skew timings)", flush=True)
    args_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"machine": info, "load_before": round(os.getloadavg()[0], 2), "args": args_json}


def report_json(results: dict[str, Any], args: argparse.Namespace) -> int:
    """Print the results as one JSON line (and write it to ``--json``); the exit code."""
    line = json.dumps(results)
    print(line)
    if getattr(args, "json", None) is not None:
        args.json.write_text(line + "\n")
    return 0


def write_suite(result: Result, args: argparse.Namespace, started: float) -> None:
    """Write ``result`` to ``--suite-out`` (when given), with the run's seconds; prints where."""
    if getattr(args, "suite_out", None) is None:
        return
    result.seconds = round(time.perf_counter() - started, 1)
    print(f"suite result: {result.write(args.suite_out)}", flush=True)


def count_label(n: int) -> str:
    """``10M``, ``500k``, ``139,128``: a count, short where it is round.

    >>> count_label(10_000_000), count_label(500_000), count_label(139_128)
    ('10M', '500k', '139,128')
    """
    if n and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


# -- the data every workload shares: the real paragraphs of corpora/ and one tokenizer -----------------
DATA_VERSION = 1  # bump when the generated data changes, so that stale .bench folders are rebuilt
VOCAB = 16384
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class DataSpec:
    """Parquet files of real paragraphs repeated to ``rows`` (fresh ids), in ``shards`` files."""

    rows: int
    shards: int
    row_group_size: int
    max_chars: int | None  # each paragraph truncated to this many characters (None: whole paragraphs)

    def folder(self, root: Path) -> Path:
        chars = "full" if self.max_chars is None else f"{self.max_chars}c"
        return root / f"paragraphs-{self.rows}r-{self.shards}s-{self.row_group_size}g-{chars}"


def build_data(spec: DataSpec, root: Path) -> list[Path]:
    """Parquet files of ``spec.rows`` real paragraphs (the corpus repeated, fresh ids); reused if present.

    Columns as in ``tests/corpora.py``: ``id`` (int64, 0..rows-1, the global position), ``doc``, ``text``;
    files hold consecutive ids, split as ``corpora.split`` does, written one file at a time.
    """
    folder = spec.folder(root)
    build_once(folder, {**asdict(spec), "version": DATA_VERSION}, lambda tmp: _write_data(spec, tmp),
               f"{spec.rows:,} rows in {spec.shards} files")  # fmt: skip
    return sorted(folder.glob("part-*.parquet"))


def _write_data(spec: DataSpec, tmp: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import corpora

    base = corpora.paragraphs()
    text = base["text"] if spec.max_chars is None else pc.utf8_slice_codeunits(base["text"], 0, spec.max_chars)
    base = pa.table({"doc": base["doc"].combine_chunks(), "text": pa.chunked_array(text).combine_chunks()})
    bounds = [spec.rows * i // spec.shards for i in range(spec.shards + 1)]
    for i in range(spec.shards):
        ids = np.arange(bounds[i], bounds[i + 1], dtype=np.int64)
        with pq.ParquetWriter(tmp / f"part-{i:05d}.parquet", pa.schema([("id", pa.int64()), *base.schema])) as w:
            for lo in range(0, len(ids), spec.row_group_size):  # a group at a time: memory stays flat
                part = ids[lo : lo + spec.row_group_size]
                rows = base.take(pa.array(part % base.num_rows))
                w.write_table(pa.table({"id": part, "doc": rows["doc"], "text": rows["text"]}))


def warm_page_cache(files: list[Path]) -> None:
    """Read every file once, so that no contender pays the first (cold) read."""
    for path in files:
        with path.open("rb") as f:
            while f.read(1 << 24):
                pass


def corpus_table(rows: int | None) -> pa.Table:
    """The real paragraphs (``id``, ``doc``, ``text``); ``rows`` of them spread evenly over the corpus."""
    import numpy as np
    import pyarrow as pa

    import corpora

    table = corpora.paragraphs()
    if rows is not None and rows < table.num_rows:
        table = table.take(np.linspace(0, table.num_rows - 1, rows).astype(np.int64))
        table = table.set_column(0, "id", pa.array(np.arange(rows, dtype=np.int64)))
    return table


def build_parquet(root: Path, rows: int | None) -> list[Path]:
    """The corpus as 10 Parquet files with row groups of 10,000 rows (``corpora.write_parquet``); reused."""
    import corpora

    folder = root / f"tokens-paragraphs-{rows or 'all'}"
    spec = {"rows": rows, "shards": 10, "row_group_size": 10_000, "version": DATA_VERSION}

    def write(tmp: Path) -> None:
        corpora.write_parquet(corpus_table(rows), tmp, shards=10, row_group_size=10_000)

    build_once(folder, spec, write, "the corpus as Parquet")
    return sorted(folder.glob("part-*.parquet"))


def build_tokenizer(root: Path) -> Path:
    """A byte-level BPE, vocabulary 16,384 with ``<|endoftext|>``, trained once on the whole corpus; reused."""
    import tokenizers

    folder = root / "bpe16k"
    spec = {"vocab": VOCAB, "special": [EOS], "tokenizers": tokenizers.__version__, "version": DATA_VERSION}
    build_once(folder, spec, _train_tokenizer, "the BPE tokenizer")
    return folder / "tokenizer.json"


def _train_tokenizer(tmp: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import corpora

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpora.paragraphs()["text"].to_pylist(), trainer)
    tok.save(str(tmp / "tokenizer.json"))


def eos_id(tok: Tokenizer) -> int:
    """The id of ``<|endoftext|>`` in ``tok``."""
    eos = tok.token_to_id(EOS)
    if eos is None:
        raise RuntimeError(f"the tokenizer has no {EOS} token; delete .bench/bpe16k to retrain it")
    return int(eos)
