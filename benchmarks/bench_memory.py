"""Peak memory against dataset size: headrace, HF ``datasets`` streaming, MosaicML ``streaming`` and litdata.

The same real text at several sizes (full: 100 MB, 400 MB and 1.6 GB of UTF-8 text; ``--quick``: 5 and
20 MB), streamed from end to end by each contender in a **fresh Python process** whose peak resident memory
is measured: the process reads its own ``VmHWM`` (the kernel's exact high-water mark of its resident memory,
pages of memory-mapped files and shared memory included) after the last batch. Not ``ru_maxrss``: Linux
carries the launching process's peak over ``exec`` into it (``subprocess`` starts children with ``vfork``),
so a child of a 450 MB process reports at least 450 MB. The process also reports its resident memory
right after its imports (before the data is opened), and this process samples ``/proc/PID/status`` every
20 ms to say what the peak was made of (anonymous memory, file pages, shared memory).

**Data.** Rows are passages of the real documents of ``corpora/`` (``tests/corpora.py``): the
paragraphs of one document joined (with a blank line) until a passage has at least 8,000 characters, about
7.3 KB on average, the size of a web document in a pretraining set. Passages rather than single paragraphs
(160 B) because MosaicML reads about 10,000 samples/s here (an ``open``, ``seek`` and ``read`` of the shard
per sample, in Python): 1.6 GB of paragraphs would be 10M samples, a quarter of an hour of MosaicML per pass. The
smallest size (the *unit*) is 8 Parquet files (``id`` int64, ``doc``, ``text``; row groups of 1,000 rows,
about 7 MB of text; snappy, so about half the text's size on disk) holding the corpus' passages over and
over with fresh ids. The same rows are written once as MDS (``MDSWriter``, ``id`` int64 and ``text`` str,
its default 64 MB shards) and with ``litdata.optimize`` (``chunk_bytes="64MB"``). The larger sizes are the
unit's files 4 and 16 times over under different names: symbolic links to the Parquet files, MDS shards and
litdata chunks, with an ``index.json`` listing every copy for MosaicML and litdata (so no extra disk and no
slow conversion; to every loader they are distinct shards). Data goes into ``.bench/`` once and is reused.

**Contenders**, each reading ``id`` and ``text``, in its own process, one thread of Python (no worker
processes: ``VmHWM`` is one process's peak), batches of 256. Each process imports ``torch`` first, as a
training process has (MosaicML and litdata import it themselves, and HF ``datasets`` imports it when it makes
a stream), so every peak holds torch's 190 MB or so and the differences are the loaders'; ``--no-torch``
leaves it out:

- headrace, buffer shuffle: ``hr.Loader(hr.open(glob, columns=[...]).shuffle(seed=0, buffer_size=10_000)
  .batch(256))`` (defaults: ``num_workers=0``, ``prefetch=2``);
- headrace, global order: the same with ``shuffle(seed=0, buffer_size=None)`` (row groups permuted over the
  epoch, rows mixed within 16 of them);
- HF ``datasets``: ``load_dataset("parquet", data_files=[...], streaming=True, columns=[...])
  .shuffle(seed=0, buffer_size=10_000).iter(batch_size=256)``;
- MosaicML: ``StreamingDataLoader(StreamingDataset(local=mds, shuffle=True, shuffle_seed=0, batch_size=256),
  batch_size=256, num_workers=0)`` (it has no shuffle buffer: its shuffle permutes sample indices);
- litdata: ``StreamingDataLoader(StreamingDataset(dir, shuffle=True, seed=0), batch_size=256)`` (no buffer
  either: chunks and items within them are permuted);
- a floor for Parquet readers (reference): ``pyarrow.parquet.ParquetFile(f).iter_batches(256)`` over the
  files in order, each batch's columns turned into Python lists, no shuffle.

Every pass is checked: the rows delivered, the sum of their ids and the sum of their text lengths must be
those of the dataset (each copy counted). Repetitions are interleaved (size by size, the contenders in
turn, the first one rotating). Metric: MB (10^6 bytes) peak RSS, one measure per contender and size; also a
plot of peak RSS against dataset size (``memory.png`` in the ``--suite-out`` folder).

Run: ``.venv/bin/python benchmarks/bench_memory.py`` (``--quick``: about a minute; ``--suite-out DIR``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))
import corpora  # noqa: E402 - tests/corpora.py: the real documents of corpora/
from peers import (  # noqa: E402
    HF_ENV,
    LITDATA_ENV,
    mosaic,
    peer_data,
    write_litdata,
    write_mds,
)
from suite import Result, build_once, warm_page_cache  # noqa: E402

NAME = "memory"
BATCH = 256
SHUFFLE_BUFFER = 10_000
PASSAGE_CHARS = 8_000  # a passage: paragraphs of one document joined until it has at least this many characters
FILES = 8  # Parquet files of the unit dataset
ROW_GROUP = 1_000  # rows per Parquet row group (about 7 MB of text)
COLUMNS = ["id", "text"]
DATA_VERSION = 1  # bump when the generated data changes, so that stale .bench folders are rebuilt

CONTENDERS = {  # key -> (label, role)
    "headrace": ("headrace, buffer shuffle 10,000", "headrace"),
    "headrace_global": ("headrace, global order (buffer_size=None)", "headrace"),
    "hf": ("HF datasets streaming, shuffle buffer 10,000", "peer"),
    "mosaic": ("MosaicML streaming, shuffle=True", "peer"),
    "litdata": ("litdata, shuffle=True", "peer"),
    "pyarrow": ("pyarrow iter_batches alone, no shuffle (floor)", "reference"),
}


# -- the peers ----------------------------------------------------------------------------------------
# -- data ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """The smallest dataset: its folder and what every pass over one copy of it must deliver."""

    folder: Path
    rows: int
    id_sum: int
    text_chars: int
    text_bytes: int

    @property
    def files(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))


def passages() -> pa.Table:
    """The corpus as passages: ``doc`` and ``text``, paragraphs of one document joined to >= PASSAGE_CHARS."""
    docs: list[str] = []
    texts: list[str] = []
    for name, text in corpora.documents():
        current: list[str] = []
        chars = 0
        for para in text.replace("\r\n", "\n").split("\n\n"):
            para = para.strip()
            if not para:
                continue
            current.append(para)
            chars += len(para) + 2
            if chars >= PASSAGE_CHARS:
                docs.append(name)
                texts.append("\n\n".join(current))
                current, chars = [], 0
        if current:
            docs.append(name)
            texts.append("\n\n".join(current))
    return pa.table({"doc": docs, "text": texts})


def build_unit(root: Path, text_mb: int) -> Unit:
    """``text_mb`` MB of passages (the corpus cycled, ids 0..rows-1) as FILES Parquet files; reused if present."""
    folder = root / f"memory-{text_mb}mb-{PASSAGE_CHARS}c"
    spec = {"text_mb": text_mb, "passage_chars": PASSAGE_CHARS, "files": FILES, "row_group": ROW_GROUP}
    spec["version"] = DATA_VERSION

    def write(tmp: Path) -> dict[str, Any]:
        base = passages()
        lengths = np.array([len(t.encode()) for t in base["text"].to_pylist()], dtype=np.int64)
        cycle = np.resize(lengths, (text_mb * 10**6) // int(lengths.min()) + len(lengths))
        rows = int(np.searchsorted(np.cumsum(cycle), text_mb * 10**6)) + 1  # the first rows that reach text_mb
        bounds = [rows * i // FILES for i in range(FILES + 1)]
        for i in range(FILES):
            ids = np.arange(bounds[i], bounds[i + 1], dtype=np.int64)
            part = base.take(pa.array(ids % base.num_rows))
            table = pa.table({"id": ids, "doc": part["doc"], "text": part["text"]})
            pq.write_table(table, tmp / f"part-{i:05d}.parquet", row_group_size=ROW_GROUP)
        texts = pq.read_table(tmp, columns=["text"])["text"].to_pylist()
        return {
            "rows": rows,
            "id_sum": rows * (rows - 1) // 2,
            "text_chars": sum(len(t) for t in texts),
            "text_bytes": sum(len(t.encode()) for t in texts),
        }

    got = build_once(folder, spec, write, f"{text_mb} MB of passages as Parquet")
    return Unit(folder, got["rows"], got["id_sum"], got["text_chars"], got["text_bytes"])


def build_mds(unit: Unit) -> Path:
    """The unit's rows as MDS shards (``MDSWriter`` defaults: 64 MB shards, no compression); reused."""
    folder = unit.folder.with_name(unit.folder.name + "-mds")
    columns = {"id": "int64", "text": "str"}
    spec = {"from": unit.folder.name, "rows": unit.rows, "columns": columns, "version": DATA_VERSION}
    build_once(folder, spec, lambda tmp: write_mds(tmp, unit.files, columns), "MDS shards")
    return folder


def build_litdata(unit: Unit) -> Path:
    """The unit's rows written by ``litdata.optimize`` (chunks of 64 MB, no compression); reused."""
    folder = unit.folder.with_name(unit.folder.name + "-litdata")
    spec = {"from": unit.folder.name, "rows": unit.rows, "chunk_bytes": "64MB", "version": DATA_VERSION}
    build_once(folder, spec, lambda tmp: write_litdata(tmp, unit.files, chunk_bytes="64MB"), "litdata chunks")
    return folder


@dataclass
class Sized:
    """One dataset size: ``copies`` of the unit, in each format (None: that format could not be written)."""

    copies: int
    text_bytes: int
    parquet: list[Path]
    parquet_bytes: int
    mds: Path | None
    lit: Path | None

    @property
    def label(self) -> str:
        mb = self.text_bytes / 1e6
        return f"{mb / 1000:.1f} GB of text" if mb >= 1000 else f"{mb:,.0f} MB of text"


def replicate(unit: Unit, mds: Path | None, lit: Path | None, copies: int) -> Sized:
    """``copies`` x the unit as symbolic links with distinct names (and, for MDS and litdata, an index of them)."""
    if copies == 1:
        files = unit.files
        size = sum(p.stat().st_size for p in files)
        return Sized(1, unit.text_bytes, files, size, mds, lit)
    folder = unit.folder.with_name(f"{unit.folder.name}-x{copies}")
    shutil.rmtree(folder, ignore_errors=True)  # links only: cheap to make again, and never stale
    (folder / "parquet").mkdir(parents=True)
    files = []
    for c in range(copies):
        for path in unit.files:
            link = folder / "parquet" / f"copy{c:03d}-{path.name}"
            link.symlink_to(path)
            files.append(link)
    out = Sized(copies, unit.text_bytes * copies, files, sum(p.stat().st_size for p in unit.files) * copies, None, None)
    if mds is not None:
        index = json.loads((mds / "index.json").read_text())
        shards = []
        (folder / "mds").mkdir()
        for c in range(copies):
            for shard in index["shards"]:
                name = f"copy{c:03d}-{shard['raw_data']['basename']}"
                (folder / "mds" / name).symlink_to(mds / shard["raw_data"]["basename"])
                shards.append({**shard, "raw_data": {**shard["raw_data"], "basename": name}})
        (folder / "mds" / "index.json").write_text(json.dumps({**index, "shards": shards}))
        out.mds = folder / "mds"
    if lit is not None:
        index = json.loads((lit / "index.json").read_text())
        chunks = []
        (folder / "litdata").mkdir()
        for c in range(copies):
            for chunk in index["chunks"]:
                name = f"copy{c:03d}-{chunk['filename']}"
                (folder / "litdata" / name).symlink_to(lit / chunk["filename"])
                chunks.append({**chunk, "filename": name})
        (folder / "litdata" / "index.json").write_text(json.dumps({**index, "chunks": chunks}))
        out.lit = folder / "litdata"
    return out


# -- one pass in a fresh process ----------------------------------------------------------------------
# Run with ``python -c`` so that it imports only the library it measures. It reports what it delivered,
# its resident memory after its imports and, at the end, its peak (``VmHWM``).
_CHILD = r"""
import json, os, sys, time
cfg = json.loads(sys.argv[1])
lib = cfg["lib"]
if cfg["torch"]:  # a training process has imported torch before it builds its loader
    import torch

def rss(what="VmRSS:"):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(what))

if lib.startswith("headrace"):
    import headrace as hr
    rss_imports = rss()
    t0 = time.perf_counter()
    ds = hr.open(cfg["glob"], columns=cfg["columns"])
    ds = ds.shuffle(seed=0, buffer_size=None if lib == "headrace_global" else cfg["buffer"])
    batches = iter(hr.Loader(ds.batch(cfg["batch"])))
elif lib == "hf":
    os.environ.update(cfg["env"])
    import datasets
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    rss_imports = rss()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("parquet", data_files=cfg["files"], split="train", streaming=True,
                               columns=cfg["columns"], cache_dir=cfg["env"]["HF_HOME"])
    batches = iter(ds.shuffle(seed=0, buffer_size=cfg["buffer"]).iter(batch_size=cfg["batch"]))
elif lib == "mosaic":
    import importlib.util, logging, types
    if importlib.util.find_spec("torchvision") is None:  # see mosaic() in peers.py
        sys.modules["streaming.vision"] = types.ModuleType("streaming.vision")
    import streaming
    logging.getLogger("streaming").setLevel(logging.ERROR)
    rss_imports = rss()
    t0 = time.perf_counter()
    ds = streaming.StreamingDataset(local=cfg["mds"], shuffle=True, shuffle_seed=0, batch_size=cfg["batch"])
    batches = iter(streaming.StreamingDataLoader(ds, batch_size=cfg["batch"], num_workers=0))
elif lib == "litdata":
    os.environ.update(cfg["env"])
    import litdata
    rss_imports = rss()
    t0 = time.perf_counter()
    ds = litdata.StreamingDataset(cfg["litdata"], shuffle=True, seed=0)
    batches = iter(litdata.StreamingDataLoader(ds, batch_size=cfg["batch"], num_workers=0))
else:  # the floor of a Parquet reader: pyarrow alone, file after file, no shuffle
    import pyarrow.parquet as pq
    rss_imports = rss()
    t0 = time.perf_counter()
    batches = ({"id": b.column(0).to_pylist(), "text": b.column(1).to_pylist()}
               for path in cfg["files"]
               for b in pq.ParquetFile(path).iter_batches(cfg["batch"], columns=cfg["columns"]))
rows = id_sum = chars = 0
for batch in batches:
    rows += len(batch["id"])
    id_sum += sum(int(i) for i in batch["id"])
    chars += sum(len(t) for t in batch["text"])
seconds = time.perf_counter() - t0
arrow_peak = sys.modules["pyarrow"].default_memory_pool().max_memory() if "pyarrow" in sys.modules else None
print(json.dumps({"rows": rows, "id_sum": id_sum, "chars": chars, "seconds": seconds, "rss_imports": rss_imports,
                  "peak": rss("VmHWM:"), "arrow_peak": arrow_peak, "pandas": "pandas" in sys.modules}))
sys.stdout.flush()
"""


def _status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and RssShmem of ``pid``, in bytes ({} once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    keys = ("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")
    return {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in lines if ln.startswith(keys)}


@dataclass
class Pass:
    peak: int  # bytes, VmHWM at the end of the pass
    rss_imports: int  # bytes, after the imports
    seconds: float  # open -> last batch
    at_peak: dict[str, int]  # the sampled status with the highest VmRSS
    arrow_peak: int | None  # bytes, the most pyarrow's default memory pool held at once (None: no pyarrow)
    pandas: bool  # whether pandas was imported by the end


def run_pass(cfg: dict[str, Any], expect: tuple[int, int, int], timeout: float) -> Pass:
    """One contender over one dataset in a fresh process; its peak RSS. Raises if it did not deliver ``expect``."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg)], stdout=out, stderr=err, text=True)
        best: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while proc.poll() is None:  # sample its memory until it ends
            now = _status(proc.pid)
            if now.get("VmRSS", 0) > best.get("VmRSS", 0):
                best = now
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg['lib']} failed (exit {proc.returncode}): {stderr.strip()[-1500:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    got = (report["rows"], report["id_sum"], report["chars"])
    if got != expect:
        raise RuntimeError(f"{cfg['lib']} delivered rows, id sum, characters {got}, expected {expect}")
    return Pass(report["peak"], report["rss_imports"], report["seconds"], best, report["arrow_peak"], report["pandas"])


@dataclass
class Series:
    key: str
    case: str
    passes: list[Pass] = field(default_factory=list)
    error: str = ""

    def median(self, what: str) -> float:
        return float(statistics.median(getattr(p, what) for p in self.passes)) if self.passes else float("nan")


def measure(
    sizes: list[Sized], unit: Unit, repeat: int, skip: dict[str, str], torch: bool
) -> dict[tuple[str, int], Series]:
    """Every contender over every size, ``repeat`` times, interleaved; series by (contender, copies)."""
    keys = [k for k in CONTENDERS if k not in skip]
    out = {(k, s.copies): Series(k, s.label) for s in sizes for k in CONTENDERS}
    for k, why in skip.items():
        for s in sizes:
            out[k, s.copies].error = why
    ms = mosaic()
    for size in sizes:
        expect = (unit.rows * size.copies, unit.id_sum * size.copies, unit.text_chars * size.copies)
        cfg = {
            "glob": str(size.parquet[0].parent / "*.parquet"),
            "files": [str(p) for p in size.parquet],
            "mds": str(size.mds),
            "litdata": str(size.lit),
            "columns": COLUMNS,
            "batch": BATCH,
            "buffer": SHUFFLE_BUFFER,
            "torch": torch,
        }
        print(
            f"\n  {size.label} ({size.copies} x the unit: {expect[0]:,} rows, {size.parquet_bytes / 1e6:,.0f} MB "
            f"of Parquet in {len(size.parquet)} files)",
            flush=True,
        )
        for rep in range(repeat):
            order = keys[rep % len(keys) :] + keys[: rep % len(keys)]
            for key in order:
                series = out[key, size.copies]
                if series.error:
                    continue
                env = {"hf": HF_ENV, "litdata": LITDATA_ENV}.get(key, {})
                if key == "mosaic" and ms is not None:
                    ms.base.util.clean_stale_shared_memory()  # what a killed run may have left
                try:
                    p = run_pass({**cfg, "lib": key, "env": env}, expect, timeout=1800)
                except Exception as e:
                    series.error = f"{type(e).__name__}: {e}"
                    print(f"    {key} failed: {series.error}", flush=True)
                    continue
                series.passes.append(p)
                print(
                    f"    rep {rep + 1}/{repeat} {key:<16} peak {p.peak / 1e6:7,.0f} MB  (after imports "
                    f"{p.rss_imports / 1e6:4,.0f} MB; {p.seconds:6.1f} s)",
                    flush=True,
                )
    return out


# -- report -------------------------------------------------------------------------------------------
def breakdown(series: Series) -> str:
    """What the sampled peak was made of, from the pass with the median peak."""
    if not series.passes:
        return ""
    p = sorted(series.passes, key=lambda p: p.peak)[len(series.passes) // 2]
    s = p.at_peak
    return (
        f"at the sampled peak: anonymous {s.get('RssAnon', 0) / 1e6:,.0f} MB, file pages "
        f"{s.get('RssFile', 0) / 1e6:,.0f} MB, shared memory {s.get('RssShmem', 0) / 1e6:,.0f} MB"
    )


def diagnose(sizes: list[Sized], unit: Unit, results: dict[tuple[str, int], Series]) -> list[str]:
    """Where headrace's peak goes, at the largest size: notes (the causes were found by patching headrace).

    The buffer shuffle keeps its window as the decoded blocks it spans (``core/block.Parts``: no
    concatenated copy) and cuts output blocks at 4 MiB; the global order's piece cache holds the pieces of
    window + 1 chunks. Both used to hold about twice as much (a concatenated copy of the window, a cache of
    ``max(8, 2 x window)`` pieces, 4,096-row blocks). What remains above the pyarrow floor is the window
    itself and the memory allocator's retained pages (measured in development: with
    ``ARROW_DEFAULT_MEMORY_POOL=jemalloc`` instead of mimalloc the buffer shuffle's peak is ~75 MB lower).
    """
    big = sizes[-1]
    floor = results["pyarrow", big.copies]
    row_bytes = unit.text_bytes / unit.rows
    notes = []
    for key, cause in (
        (
            "headrace",
            f"the {SHUFFLE_BUFFER:,}-row window is {SHUFFLE_BUFFER * row_bytes / 1e6:,.0f} MB of text, held as the "
            "decoded blocks it spans (no concatenated copy since the fix of the first run's 190 MB), output blocks "
            "are cut at 4 MiB; the rest above the pyarrow floor is the window and the allocator's retained pages "
            "(mimalloc; jemalloc peaks ~75 MB lower). MosaicML and litdata have no buffer: they read sample by "
            "sample at a permuted index",
        ),
        (
            "headrace_global",
            f"the piece cache holds the row groups of window + 1 = 17 chunks ({ROW_GROUP:,} rows, "
            f"{ROW_GROUP * row_bytes / 1e6:,.0f} MB of text each; the first run held 32), blocks are cut at "
            "4 MiB",
        ),
    ):
        series = results[key, big.copies]
        if not series.passes:
            continue
        arrow = [p.arrow_peak for p in series.passes if p.arrow_peak is not None]
        text = (
            f"Diagnosis ({CONTENDERS[key][0]}, {big.label}): peak {series.median('peak') / 1e6:,.0f} MB, "
            f"{series.median('rss_imports') / 1e6:,.0f} MB after imports"
        )
        if floor.passes:
            text += (
                f"; reading the same Parquet with pyarrow alone peaks "
                f"{(floor.median('peak') - floor.median('rss_imports')) / 1e6:,.0f} MB over its imports"
            )
        if arrow:
            text += f"; Arrow memory peaked at {statistics.median(arrow) / 1e6:,.0f} MB: {cause}"
        if any(p.pandas for p in series.passes):
            text += (
                "; pandas (about 40 MB) was imported (pyarrow imports it on the first pa.array() or "
                "Array.to_numpy(zero_copy_only=False) call)"
            )
        notes.append(text + ".")
    return notes


def print_table(sizes: list[Sized], results: dict[tuple[str, int], Series]) -> None:
    print("\n" + "=" * 110)
    print("Peak RSS (MB, median; min-max) of a fresh process streaming the whole dataset, batches of 256")
    head = f"  {'contender':<48}" + "".join(f"{s.label:>22}" for s in sizes)
    print(head)
    for key, (label, _) in CONTENDERS.items():
        cells = []
        for s in sizes:
            series = results[key, s.copies]
            if not series.passes:
                cells.append(f"{'failed' if series.error else '-':>22}")
                continue
            lo, hi = min(p.peak for p in series.passes) / 1e6, max(p.peak for p in series.passes) / 1e6
            cells.append(f"{series.median('peak') / 1e6:>10,.0f} ({lo:,.0f}-{hi:,.0f})".rjust(22))
        print(f"  {label:<48}" + "".join(cells))
    print("\nAfter imports (MB) and seconds per pass (median), largest size:")
    big = sizes[-1]
    for key, (label, _) in CONTENDERS.items():
        series = results[key, big.copies]
        if series.passes:
            print(
                f"  {label:<48}{series.median('rss_imports') / 1e6:>8,.0f} MB{series.median('seconds'):>9.1f} s"
                f"   {breakdown(series)}"
            )
        elif series.error:
            print(f"  {label:<48}failed: {series.error[:200]}")
    print("=" * 110)


def plot(sizes: list[Sized], results: dict[tuple[str, int], Series], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key, (label, role) in CONTENDERS.items():
        points = [(s.text_bytes / 1e6, results[key, s.copies]) for s in sizes if results[key, s.copies].passes]
        if not points:
            continue
        x = [mb for mb, _ in points]
        y = [r.median("peak") / 1e6 for _, r in points]
        lo = [yy - min(p.peak for p in r.passes) / 1e6 for yy, (_, r) in zip(y, points, strict=True)]
        hi = [max(p.peak for p in r.passes) / 1e6 - yy for yy, (_, r) in zip(y, points, strict=True)]
        style = {"headrace": "o-", "peer": "o--", "reference": "x:"}[role]
        color = "gray" if role == "reference" else None
        ax.errorbar(x, y, yerr=[lo, hi], fmt=style, color=color, capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks([s.text_bytes / 1e6 for s in sizes], [s.label.replace(" of text", "") for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("dataset size (UTF-8 text)")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Peak memory streaming the whole dataset (fresh process, batches of 256)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (5 and 20 MB of text), 1 repetition")
    p.add_argument("--suite-out", type=Path, default=None, help="write <dir>/memory.json (and memory.png) there")
    p.add_argument("--unit-mb", type=int, default=None, help="MB of text of the smallest size (default 100)")
    p.add_argument("--copies", default=None, help="sizes as copies of the unit, comma-separated (default 1,4,16)")
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default 3)")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="where generated data goes")
    p.add_argument("--no-torch", action="store_true", help="do not import torch in each process first")
    args = p.parse_args(argv)
    args.unit_mb = args.unit_mb or (5 if args.quick else 100)
    args.copies = sorted({int(c) for c in (args.copies or ("1,4" if args.quick else "1,4,16")).split(",")})
    args.repeat = args.repeat or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    result = Result(NAME, "Peak memory against dataset size", quick=args.quick)
    print(f"headrace memory benchmark: peak RSS against dataset size; load average {os.getloadavg()[0]:.2f}")
    unit = build_unit(args.data_dir, args.unit_mb)
    skip: dict[str, str] = {}
    mds = peer_data(lambda: build_mds(unit), skip, ("mosaic",), "MosaicML streaming")
    lit = peer_data(lambda: build_litdata(unit), skip, ("litdata",), "litdata")
    sizes = [replicate(unit, mds, lit, c) for c in args.copies]
    for size in sizes:  # every contender reads from the page cache, none pays the first read
        warm_page_cache(size.parquet[: len(unit.files)])
    for folder in (mds, lit):
        if folder is not None:
            warm_page_cache(sorted(p for p in folder.iterdir() if p.suffix in (".mds", ".bin")))
    torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    results = measure(sizes, unit, args.repeat, skip, torch)

    for key, (label, role) in CONTENDERS.items():
        for size in sizes:
            series = results[key, size.copies]
            if series.passes:
                note = (
                    f"after imports {series.median('rss_imports') / 1e6:,.0f} MB; "
                    f"{series.median('seconds'):.1f} s per pass; {breakdown(series)}"
                )
                result.add(
                    size.label,
                    label,
                    "MB peak RSS",
                    [p.peak / 1e6 for p in series.passes],
                    role=role,
                    higher_is_better=False,
                    note=note,
                )
    for why in dict.fromkeys(s.error for s in results.values() if s.error):
        result.notes.append(f"failed or missing, left out: {why}")
    lit_bytes = mds_bytes = 0
    if mds is not None:
        mds_bytes = sum(p.stat().st_size for p in mds.glob("*.mds"))
    if lit is not None:
        lit_bytes = sum(p.stat().st_size for p in lit.glob("*.bin"))
    result.notes += [
        f"Data: passages of the real documents of corpora/ (paragraphs of one document joined to at least "
        f"{PASSAGE_CHARS:,} characters; {unit.text_bytes / unit.rows:,.0f} B of text per row on average). The "
        f"smallest size is {unit.rows:,} rows, {unit.text_bytes / 1e6:,.0f} MB of text: "
        f"{sizes[0].parquet_bytes / 1e6:,.0f} MB of Parquet ({FILES} files, row groups of {ROW_GROUP:,} rows, snappy), "
        f"{mds_bytes / 1e6:,.0f} MB of MDS, {lit_bytes / 1e6:,.0f} MB of litdata chunks; the larger sizes are "
        f"{', '.join(str(c) for c in args.copies[1:])} copies of it (symbolic links under distinct names).",
        "Each contender streams the whole dataset in a fresh process that imported torch first, as a training "
        "process has (MosaicML and litdata import it, HF datasets imports it when it makes a stream; "
        f"{'done here' if torch else 'NOT done in this run'}); one process, no worker processes: "
        "headrace Loader num_workers=0 prefetch=2, HF .iter, MosaicML and litdata StreamingDataLoader "
        "num_workers=0), reading id and text, batches of 256; the peak is the process's VmHWM after the last "
        "batch (file pages and shared memory it mapped count; not ru_maxrss, which on Linux carries the "
        "launching process's peak over exec). The page cache was warm.",
        "Shuffles: headrace shuffle(seed=0, buffer_size=10_000) and shuffle(seed=0, buffer_size=None) (global "
        "order); HF .shuffle(seed=0, buffer_size=10_000); MosaicML shuffle=True and litdata shuffle=True, which "
        "permute indices and have no buffer.",
        "Checked: every pass delivered every row once per copy (rows, sum of ids and sum of text lengths equal "
        "the dataset's).",
    ]
    diagnosis = diagnose(sizes, unit, results)
    result.notes += diagnosis
    if args.suite_out is not None:
        args.suite_out.mkdir(parents=True, exist_ok=True)
    if args.suite_out is not None and plot(sizes, results, args.suite_out / "memory.png"):
        result.plots.append("memory.png")
    result.seconds = time.perf_counter() - start
    print_table(sizes, results)
    for line in diagnosis:
        print(line)
    if args.suite_out is not None:
        print(f"result: {result.write(args.suite_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
