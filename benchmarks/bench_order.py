"""Issue-4 benchmark: global order, elastic resume and shuffle quality; headrace vs HF ``datasets`` vs MosaicML.

Same run, same data, same machine. The data is the real paragraphs of ``../shared/corpora`` repeated
with fresh ids: 10M rows (text cut to 100 characters) in 25 Parquet files, and the same rows written
as MosaicML MDS shards (``id`` int64, ``text`` str). Every loader reads only ``id`` and ``text``.

1. **Resume cost** (seconds to the first batch) after 10%, 50% and 90% of the epoch, batches of 256:

   - headrace, global order: ``hr.open(glob).shuffle(seed=0, buffer_size=None).batch(256)``. The
     checkpoints are real: one uninterrupted pass takes ``Loader.state_dict()`` at each position and
     keeps the batch that comes next. A second kind of checkpoint is made without iterating, as a
     state saved on 2 ranks with batches of 128 (the elastic path), and must give the same batch.
   - HF ``datasets`` streaming, ``load_dataset("parquet", streaming=True)``, no shuffle (its exact
     resume). Also with ``.shuffle(seed=0, buffer_size=10_000)``. HF documents that a shuffled
     stream's buffer is lost on resume, so that resume is timed but is not exact.
   - MosaicML ``streaming``: ``StreamingDataset(local=mds, shuffle=True, shuffle_seed=0,
     batch_size=256)`` in a ``StreamingDataLoader``. Its state is ``state_dict(num_samples, True)``
     (a sample count, no iteration needed). The expected batch is MosaicML's own epoch order for this
     rank (``StreamingDataset._get_work(0, 0)``), which is checked against the rows really delivered.

   Timed, interleaved across loaders and positions: (a) in process, build the pipeline, load the
   state, take the first batch; (b) a fresh ``python`` process, from launch (imports included) to
   its first batch. Every resumed first batch is compared with what the uninterrupted run delivers.
2. **Shuffle quality** on the first rows each loader delivers (data stored sorted by source
   document): ``headrace.quality.shuffle_quality`` with the document as group and batches of 256.
3. **A plot** of resume time against position: ``benchmarks/resume.png``.

Run: ``.venv/bin/python benchmarks/bench_order.py``; ``--quick`` is a smoke run under a minute. Data
goes into ``.bench/`` once and is reused (the Parquet files are shared with ``bench_core.py``).
MosaicML is optional: without ``mosaicml-streaming`` installed, it is skipped, and the output says so.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

import headrace as hr
from headrace.quality import shuffle_quality

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_core  # the issue-2 benchmark: its data builder, HF setup and machine info are shared
from bench_core import HF_ENV, DataSpec, build_data, corpora, hf, warm_page_cache

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256
SHUFFLE_BUFFER = 10_000
COLUMNS = ["id", "text"]
MDS_VERSION = 1  # bump when the MDS conversion changes
Batches = Iterator[Any]

LOADERS = {  # key -> label (tables, plot)
    "headrace": "headrace global order",
    "headrace_elastic": "headrace global order, state made without iterating (elastic)",
    "hf": "HF datasets streaming (no shuffle)",
    "hf_shuffle": "HF datasets streaming, shuffle(buffer 10,000)",
    "mosaic": "MosaicML streaming (shuffle=True, defaults)",
}


# -- MosaicML streaming -------------------------------------------------------------------------------
def mosaic() -> Any | None:
    """``streaming``, or None if it is not installed.

    ``import streaming`` imports ``streaming.vision``, which needs ``torchvision``. The only
    torchvision wheels available here are CUDA builds that do not load with the CPU torch of this
    venv, so when torchvision is missing that subpackage (vision datasets, unused here) is stubbed.
    """
    if importlib.util.find_spec("streaming") is None:
        return None
    if importlib.util.find_spec("torchvision") is None:
        sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))
    import logging

    import streaming

    logging.getLogger("streaming").setLevel(logging.ERROR)
    return streaming


def build_mds(files: list[Path], rows: int) -> Path:
    """The rows of ``files`` (in file order, so MDS sample ``i`` has id ``i``) as MDS shards; reused if present."""
    folder = files[0].parent.with_name("mds-" + files[0].parent.name)
    want = {"from": files[0].parent.name, "rows": rows, "columns": {"id": "int64", "text": "str"}, "v": MDS_VERSION}
    marker = folder / "_SPEC.json"
    if marker.exists() and json.loads(marker.read_text()) == want:
        return folder
    ms = mosaic()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    n = 0
    with ms.MDSWriter(out=str(tmp), columns=want["columns"]) as writer:  # defaults: 64 MB shards, no compression
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(65_536, columns=COLUMNS):
                for i, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                    if i != n:
                        raise RuntimeError(f"{path}: id {i} at position {n}; the Parquet ids must be 0..rows-1")
                    writer.write({"id": i, "text": text})
                    n += 1
    (tmp / "_SPEC.json").write_text(json.dumps(want))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    size = sum(p.stat().st_size for p in folder.glob("*.mds"))
    print(
        f"  wrote {n:,} rows as {len(list(folder.glob('*.mds')))} MDS shards ({size / 1e6:,.0f} MB) in "
        f"{time.perf_counter() - t0:.1f} s: {folder}",
        flush=True,
    )
    return folder


def mosaic_open(mds: Path) -> tuple[Any, Any]:
    ms = mosaic()
    ds = ms.StreamingDataset(local=str(mds), shuffle=True, shuffle_seed=0, batch_size=BATCH)
    return ds, ms.StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)


def mosaic_close(ds: Any, it: Any) -> None:
    it.close()
    if hasattr(ds, "_iterator"):
        ds._iterator.exit()  # stop its download/ready threads now rather than at garbage collection


# -- the three libraries, one pipeline each -----------------------------------------------------------
def headrace_ds(glob: str, batch: int = BATCH) -> hr.Dataset:
    return hr.open(glob, columns=COLUMNS).shuffle(seed=0, buffer_size=None).batch(batch)


def hf_open(files: list[Path], shuffle: bool) -> Any:
    ds = hf().load_dataset(
        "parquet",
        data_files=[str(p) for p in files],
        split="train",
        streaming=True,
        columns=COLUMNS,
        cache_dir=HF_ENV["HF_HOME"],
    )
    return ds.shuffle(seed=0, buffer_size=SHUFFLE_BUFFER) if shuffle else ds


def ids_of(batch: Any) -> list[int]:
    return [int(i) for i in batch["id"]]


@dataclass
class Setup:
    glob: str
    files: list[Path]
    mds: Path | None


def first_batch(key: str, setup: Setup, state: dict[str, Any] | None) -> list[int]:
    """In process: build ``key``'s pipeline, load ``state`` (None: start of the epoch), return the first batch's ids."""
    if key.startswith("headrace"):
        loader = hr.Loader(headrace_ds(setup.glob))
        if state is not None:
            loader.load_state_dict(state)
        it = iter(loader)
        out = ids_of(next(it))
        it.close()
        return out
    if key.startswith("hf"):
        ds = hf_open(setup.files, shuffle=key == "hf_shuffle")
        if state is not None:
            ds.load_state_dict(state)
        it = iter(ds.iter(batch_size=BATCH))
        out = ids_of(next(it))
        it.close()
        return out
    assert setup.mds is not None
    mds_ds, loader = mosaic_open(setup.mds)
    if state is not None:
        loader.load_state_dict(state)
    it = iter(loader)
    out = ids_of(next(it))
    mosaic_close(mds_ds, it)
    return out


# A fresh process that resumes a pipeline and reports when its first batch arrived (``python -c``, so
# that it imports only the library it measures).
_CHILD = r"""
import json, os, sys, time
cfg = json.loads(sys.argv[1])
state = None
if cfg["state"]:
    with open(cfg["state"]) as f:
        state = json.load(f)
lib = cfg["lib"]
if lib.startswith("headrace"):
    import headrace as hr
    ds = hr.open(cfg["glob"], columns=cfg["columns"]).shuffle(seed=0, buffer_size=None).batch(cfg["batch"])
    loader = hr.Loader(ds)
    if state is not None:
        loader.load_state_dict(state)
    first = next(iter(loader))
elif lib.startswith("hf"):
    os.environ.update(cfg["env"])
    import datasets
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    datasets.disable_progress_bars()
    ds = datasets.load_dataset("parquet", data_files=cfg["files"], split="train", streaming=True,
                               columns=cfg["columns"], cache_dir=cfg["env"]["HF_HOME"])
    if lib == "hf_shuffle":
        ds = ds.shuffle(seed=0, buffer_size=cfg["buffer"])
    if state is not None:
        ds.load_state_dict(state)
    first = next(iter(ds.iter(batch_size=cfg["batch"])))
else:
    import importlib.util, logging, types
    if importlib.util.find_spec("torchvision") is None:  # see mosaic() in bench_order.py
        sys.modules["streaming.vision"] = types.ModuleType("streaming.vision")
    import streaming
    logging.getLogger("streaming").setLevel(logging.ERROR)
    ds = streaming.StreamingDataset(local=cfg["mds"], shuffle=True, shuffle_seed=0, batch_size=cfg["batch"])
    loader = streaming.StreamingDataLoader(ds, batch_size=cfg["batch"], num_workers=0)
    if state is not None:
        loader.load_state_dict(state)
    first = next(iter(loader))
t_first = time.time()
print(json.dumps({"first": t_first, "ids": [int(i) for i in first["id"]]}), flush=True)
os._exit(0)
"""


def fresh_process(key: str, setup: Setup, state_path: Path | None) -> tuple[float, list[int]]:
    cfg = {
        "lib": key,
        "glob": setup.glob,
        "files": [str(p) for p in setup.files],
        "mds": str(setup.mds),
        "columns": COLUMNS,
        "batch": BATCH,
        "buffer": SHUFFLE_BUFFER,
        "env": HF_ENV,
        "state": str(state_path) if state_path else None,
    }
    launch = time.time()
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"fresh-process run failed ({key}):\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["first"] - launch, report["ids"]


# -- 1. checkpoints -----------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    key: str
    position: float  # fraction of the epoch
    step: int  # batches delivered before the checkpoint
    state: dict[str, Any] | None  # None: the start of the epoch (cold)
    expected: list[int]  # ids of the batch the uninterrupted run delivers next
    resume_s: list[float] = field(default_factory=list)
    fresh_s: list[float] = field(default_factory=list)
    exact: list[bool] = field(default_factory=list)  # one per resume, in process and fresh

    @property
    def state_bytes(self) -> int:
        return len(json.dumps(self.state).encode()) if self.state is not None else 0

    def median(self, what: str) -> float:
        values: list[float] = getattr(self, what)
        return statistics.median(values) if values else float("nan")


def pass_checkpoints(
    key: str, it: Batches, state_dict: Callable[[], dict[str, Any]], steps: dict[float, int]
) -> tuple[dict[float, Checkpoint], float, int]:
    """One uninterrupted pass: at each step take the state, then keep the next batch as the expected one."""
    out: dict[float, Checkpoint] = {}
    delivered = 0
    t0 = time.perf_counter()
    for position, step in sorted(steps.items(), key=lambda kv: kv[1]):
        while delivered < step:
            next(it)
            delivered += 1
        state = json.loads(json.dumps(state_dict())) if step else None  # what a checkpoint file would hold
        out[position] = Checkpoint(key, position, step, state, ids_of(next(it)))
        delivered += 1
    seconds = time.perf_counter() - t0
    it.close()  # type: ignore[attr-defined]
    return out, seconds, delivered


def make_checkpoints(key: str, setup: Setup, steps: dict[float, int]) -> tuple[dict[float, Checkpoint], dict[str, Any]]:
    """``key``'s checkpoints at ``steps`` and, for the report, how they were made."""
    if key == "headrace":
        loader = hr.Loader(headrace_ds(setup.glob))
        cps, seconds, n = pass_checkpoints(key, iter(loader), loader.state_dict, steps)
        return cps, {"made_by": "iterating", "seconds": seconds, "rows_per_s": n * BATCH / seconds}
    if key.startswith("hf"):
        ds = hf_open(setup.files, shuffle=key == "hf_shuffle")
        cps, seconds, n = pass_checkpoints(key, iter(ds.iter(batch_size=BATCH)), ds.state_dict, steps)
        return cps, {"made_by": "iterating", "seconds": seconds, "rows_per_s": n * BATCH / seconds}
    raise ValueError(key)


def elastic_checkpoints(setup: Setup, real: dict[float, Checkpoint]) -> dict[float, Checkpoint]:
    """headrace states made without iterating: as if saved on 2 ranks with batches of 128 after ``step`` steps.

    Such a state resumes through the elastic path: the global order continues at
    ``step * 128 * 2`` = ``step * 256``, which must give the same batch as the uninterrupted run.
    """
    out = {}
    for position, cp in real.items():
        state = None
        if cp.step:
            state = hr.Loader(headrace_ds(setup.glob, BATCH // 2), rank=0, world_size=2).state_dict()
            state["batches"] = cp.step
        out[position] = Checkpoint("headrace_elastic", position, cp.step, state, cp.expected)
    return out


def naive_state_check(setup: Setup, cp: Checkpoint) -> dict[str, Any]:
    """The shortcut of setting ``state["batches"]`` on a same-world state: where does it resume?"""
    loader = hr.Loader(headrace_ds(setup.glob))
    state = loader.state_dict()
    state["batches"] = cp.step
    loader.load_state_dict(state)
    it = iter(loader)
    got = ids_of(next(it))
    it.close()
    first = first_batch("headrace", setup, None)
    return {
        "step": cp.step,
        "resumes_at_expected": got == cp.expected,
        "resumes_at_epoch_start": got == first,
        "batches_counter_after": loader.state_dict()["batches"],
    }


def headrace_reads(setup: Setup, cp: Checkpoint) -> dict[str, int]:
    """Diagnostic: how many Parquet pieces (row groups) and rows headrace decodes to deliver the first resumed batch.

    Counts the misses of the global-order source's piece cache (``stages/global_source.py``
    ``PieceCache.find``) while one resume runs; the method is restored afterwards.
    """
    from headrace.stages import global_source

    original = global_source.PieceCache.find
    seen: dict[str, int] = {"pieces": 0, "rows": 0}

    def counting(self: Any, shard: int, row: int) -> Any:
        before = self.reads
        key, piece = original(self, shard, row)
        if self.reads != before:
            seen["pieces"] += 1
            seen["rows"] += piece.batch.num_rows
        return key, piece

    global_source.PieceCache.find = counting  # type: ignore[method-assign]
    try:
        loader = hr.Loader(headrace_ds(setup.glob), prefetch=0)
        if cp.state is not None:
            loader.load_state_dict(cp.state)
        it = iter(loader)
        if ids_of(next(it)) != cp.expected:
            raise RuntimeError("headrace_reads: the resumed batch is not the expected one")
        it.close()
    finally:
        global_source.PieceCache.find = original  # type: ignore[method-assign]
    return seen


def mosaic_checkpoints(setup: Setup, steps: dict[float, int]) -> tuple[dict[float, Checkpoint], dict[str, Any]]:
    """MosaicML states from ``state_dict(num_samples, from_beginning=True)``; expected batches from its epoch order."""
    assert setup.mds is not None
    ds, loader = mosaic_open(setup.mds)
    it = iter(loader)
    t0 = time.perf_counter()
    first = ids_of(next(it))  # starts epoch 0, as a training loop would before checkpointing
    order = np.asarray(ds._get_work(0, 0))  # this rank's (and worker's) sample ids for the whole epoch, in order
    seconds = time.perf_counter() - t0
    if first != order[:BATCH].tolist():
        raise RuntimeError("MosaicML's first batch is not the start of its epoch order")
    out = {}
    for position, step in steps.items():
        state = ds.state_dict(step * BATCH, True) if step else None
        out[position] = Checkpoint("mosaic", position, step, state, order[step * BATCH : (step + 1) * BATCH].tolist())
    mosaic_close(ds, it)
    del ds, loader
    gc.collect()
    return out, {"made_by": "state_dict(num_samples)", "seconds": seconds, "epoch_order": len(order)}


def resume(setup: Setup, rows: int, positions: list[float], repeat: int, keys: list[str]) -> dict[str, Any]:
    timed = [0.0, *positions]  # 0.0: the start of the epoch without a state (cold), for reference
    steps = {p: int(rows * p) // BATCH for p in timed}
    print("  checkpoint steps: " + ", ".join(f"{p:.0%} -> batch {s:,} (row {s * BATCH:,})" for p, s in steps.items()))
    cps: dict[str, dict[float, Checkpoint]] = {}
    made: dict[str, Any] = {}
    for key in keys:
        if key == "headrace_elastic":
            cps[key] = elastic_checkpoints(setup, cps["headrace"])
            del cps[key][0.0]  # the same as headrace's cold start
            made[key] = {"made_by": "Loader(rank=0, world_size=2, batch 128).state_dict() with batches = step"}
        elif key == "mosaic":
            cps[key], made[key] = mosaic_checkpoints(setup, steps)
        else:
            cps[key], made[key] = make_checkpoints(key, setup, steps)
        extra = f", {made[key]['rows_per_s']:,.0f} rows/s" if "rows_per_s" in made[key] else ""
        print(f"    {key:<17} checkpoints made by {made[key]['made_by']} in {made[key].get('seconds', 0):.1f} s{extra}")
    naive = naive_state_check(setup, cps["headrace"][max(positions)])
    print(f"    headrace, same-world state with only 'batches' set: {naive}", flush=True)
    reads = {p: headrace_reads(setup, cp) for p, cp in cps["headrace"].items()}
    print(
        "    headrace decodes for its first batch: "
        + ", ".join(f"{p:.0%}: {r['pieces']} row groups = {r['rows']:,} rows" for p, r in reads.items()),
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="headrace-bench-order-") as tmp:
        paths = {}
        for key, by_pos in cps.items():
            for p, cp in by_pos.items():
                if cp.state is not None:
                    paths[key, p] = Path(tmp) / f"{key}-{p}.json"
                    paths[key, p].write_text(json.dumps(cp.state))
        for rep in range(repeat):
            for p in timed:  # interleaved: every position and loader once per repetition
                for key in keys:
                    if p not in cps[key]:
                        continue
                    cp = cps[key][p]
                    gc.collect()
                    t0 = time.perf_counter()
                    got = first_batch(key, setup, cp.state)
                    cp.resume_s.append(time.perf_counter() - t0)
                    seconds, got_fresh = fresh_process(key, setup, paths.get((key, p)))
                    cp.fresh_s.append(seconds)
                    cp.exact += [got == cp.expected, got_fresh == cp.expected]
            print(
                f"  repetition {rep + 1}/{repeat}: "
                + "; ".join(
                    f"{k} " + "/".join(f"{cp.resume_s[-1]:.3f}" for cp in cps[k].values()) for k in keys if k in cps
                ),
                flush=True,
            )
    return {"steps": steps, "checkpoints": cps, "made": made, "naive": naive, "reads": reads}


# -- 2. shuffle quality -------------------------------------------------------------------------------
QUALITY = {  # key -> label
    "none": "no shuffle (the stored order)",
    "headrace": "headrace global order (defaults: chunk_rows=1024, window=16)",
    "headrace_global_rg": "headrace global order, chunk_rows=20,000 (= the row group)",
    "headrace_buffer": "headrace shuffle(buffer_size=10,000)",
    "hf_shuffle": "HF datasets streaming shuffle(buffer_size=10,000)",
    "mosaic": "MosaicML streaming shuffle=True (py1e, defaults)",
}


def collect(it: Batches, rows: int | None) -> list[int]:
    """The ids of the first ``rows`` rows (None: all) delivered, whole batches."""
    got: list[int] = []
    for batch in it:
        got += ids_of(batch)
        if rows is not None and len(got) >= rows:
            break
    it.close()  # type: ignore[attr-defined]
    return got


def quality(setup: Setup, rows: int, keys: list[str], epoch: bool) -> dict[str, dict[str, Any]]:
    """Shuffle quality of the first ``rows`` rows each loader delivers (and of the whole epoch); group = document.

    The whole-epoch figures read only the ``id`` column (the order does not depend on the columns; the
    first ``rows`` ids are checked against the prefix run). MosaicML's whole epoch is its own epoch
    order (``_get_work``), checked against the rows it delivered.
    """
    base = corpora.paragraphs()
    docs, doc_codes = np.unique(np.asarray(base["doc"].to_pylist(), dtype=object).astype(str), return_inverse=True)
    n_base = base.num_rows
    sample = pq.ParquetFile(setup.files[0]).read_row_group(0, columns=["id", "doc"])  # check the id -> document map
    if not np.array_equal(docs[doc_codes[sample["id"].to_numpy() % n_base]], np.asarray(sample["doc"].to_pylist())):
        raise RuntimeError("the id -> document mapping does not hold for this data")

    def measure(got: list[int]) -> dict[str, float]:
        ids = np.asarray(got, dtype=np.int64)
        groups = doc_codes[ids % n_base]
        return {**shuffle_quality(ids, groups=groups, batch_size=BATCH), "rows": len(ids),
                "docs": len(np.unique(groups))}  # fmt: skip

    def hr_iter(shuffle: dict[str, Any] | None) -> Callable[[list[str]], Batches]:
        def make(columns: list[str]) -> Batches:
            ds = hr.open(setup.glob, columns=columns)
            ds = ds if shuffle is None else ds.shuffle(seed=0, **shuffle)
            return iter(hr.Loader(ds.batch(BATCH)))

        return make

    def hf_iter(columns: list[str]) -> Batches:
        ds = hf().load_dataset("parquet", data_files=[str(p) for p in setup.files], split="train", streaming=True,
                               columns=columns, cache_dir=HF_ENV["HF_HOME"])  # fmt: skip
        return iter(ds.shuffle(seed=0, buffer_size=SHUFFLE_BUFFER).iter(batch_size=BATCH))

    variants: dict[str, Callable[[list[str]], Batches] | None] = {
        "none": hr_iter(None),
        "headrace": hr_iter({"buffer_size": None}),
        "headrace_global_rg": hr_iter({"buffer_size": None, "chunk_rows": 20_000}),
        "headrace_buffer": hr_iter({"buffer_size": SHUFFLE_BUFFER}),
        "hf_shuffle": hf_iter,
    }
    if "mosaic" in keys:
        variants["mosaic"] = None
    out: dict[str, dict[str, Any]] = {}
    for key, make in variants.items():
        gc.collect()
        t0 = time.perf_counter()
        if make is None:
            assert setup.mds is not None
            ds, loader = mosaic_open(setup.mds)
            it = iter(loader)
            got = []
            while len(got) < rows:
                got += ids_of(next(it))
            seconds = time.perf_counter() - t0
            everything = np.asarray(ds._get_work(0, 0)).tolist()
            mosaic_close(ds, it)
            del ds, loader
        else:
            got = collect(make(COLUMNS), rows)
            seconds = time.perf_counter() - t0
            everything = collect(make(["id"]), None) if epoch else []
        if everything and everything[: len(got)] != got:
            raise RuntimeError(f"{key}: the id-only whole-epoch run does not start with the rows delivered")
        out[key] = {"prefix": measure(got[:rows]), "rows_per_s": len(got) / seconds}
        if epoch:
            out[key]["epoch"] = measure(everything)
        pre, ep = out[key]["prefix"], out[key].get("epoch")
        print(
            f"    {key:<20} first {rows:,}: batch-mix {pre['batch_mix_distance']:.3f} (floor {pre['noise_floor']:.3f}) "
            f"rank corr {pre['rank_correlation']:+.3f}"
            + (
                f" | epoch ({ep['rows']:,}): {ep['batch_mix_distance']:.3f} (floor {ep['noise_floor']:.3f}) "
                f"{ep['rank_correlation']:+.3f}"
                if ep
                else ""
            )
            + f"  [{len(got) / seconds:,.0f} rows/s collecting]",
            flush=True,
        )
    return out


# -- 3. plot ------------------------------------------------------------------------------------------
PLOT_STYLE = {  # key -> (label, color, marker, filled)
    "headrace": ("headrace global order", "#1b7837", "o", True),
    "headrace_elastic": ("headrace, elastic state (no iteration)", "#7fbf7b", "s", True),
    "hf": ("HF datasets streaming (no shuffle)", "#2166ac", "^", True),
    "hf_shuffle": ("HF streaming + shuffle(10k): NOT exact", "#67a9cf", "v", False),
    "mosaic": ("MosaicML streaming (shuffle=True)", "#b2182b", "D", True),
}


def plot(res: dict[str, Any], path: Path, rows: int, positions: list[float], info: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cps: dict[str, dict[float, Checkpoint]] = res["checkpoints"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.8), sharey=True)
    x = [p * 100 for p in positions]
    for ax, what, title in (
        (axes[0], "resume_s", "in process: build + load state + first batch"),
        (axes[1], "fresh_s", "fresh process: launch (imports) to first batch"),
    ):
        for key, by_pos in cps.items():
            label, color, marker, filled = PLOT_STYLE[key]
            y = [by_pos[p].median(what) for p in positions]
            ax.plot(x, y, color=color, marker=marker, markersize=8, linewidth=2, label=label,
                    markerfacecolor=color if filled else "white", linestyle="-" if filled else "--")  # fmt: skip
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1.5, label="DESIGN target: < 1 s at 50%")
        ax.set_yscale("log")
        ax.set_xticks(x, [f"{v:.0f}%" for v in x])
        ax.set_xlim(min(x) - 8, max(x) + 8)
        ax.set_xlabel(f"checkpoint position in a {rows / 1e6:g}M-sample epoch")
        ax.set_title(title, fontsize=11)
        ax.grid(True, which="both", axis="y", alpha=0.3)
    axes[0].set_ylabel("seconds to first batch (median, log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(
        f"Resume cost, batch {BATCH}: headrace vs HF datasets vs MosaicML streaming "
        f"({info['cores']} CPU cores, local disk, page cache warm)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- report -------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    info = bench_core.machine()
    ms = mosaic()
    info["mosaicml-streaming"] = ms.__version__ if ms is not None else "not installed"
    import torch

    info["torch"] = torch.__version__
    return info


def print_summary(res: dict[str, Any] | None, qual: dict[str, Any] | None, args: argparse.Namespace) -> None:
    print("\n" + "=" * 116)
    if res:
        cps: dict[str, dict[float, Checkpoint]] = res["checkpoints"]
        print(
            f"Resume at a position of a {args.rows:,}-row epoch, batch {BATCH}: seconds to the first batch, median of "
            f"{args.repeat}; '/hr' = this loader's time / headrace's ('start': no state, the cold start)"
        )
        print(
            f"  {'position':>8}  {'loader':<64}{'in proc':>9}{'/hr':>7}{'fresh':>8}{'/hr':>7}{'exact':>7}{'state B':>9}"
        )
        for p in [0.0, *args.positions]:
            ref = cps["headrace"][p]
            for key, by_pos in cps.items():
                if p not in by_pos:
                    continue
                cp = by_pos[p]
                print(
                    f"  {f'{p:.0%}' if p else 'start':>8}  {LOADERS[key]:<64}{cp.median('resume_s'):>9.3f}"
                    f"{cp.median('resume_s') / ref.median('resume_s'):>6.1f}x{cp.median('fresh_s'):>8.3f}"
                    f"{cp.median('fresh_s') / ref.median('fresh_s'):>6.1f}x{all(cp.exact)!s:>7}{cp.state_bytes:>9,}"
                )
    if qual:
        print(
            f"\nShuffle quality, groups = source document, batch {BATCH}: batch-mix distance (noise floor) and rank "
            f"correlation, over the first {args.quality_rows:,} rows delivered and over the whole epoch"
        )
        print(f"  {'order':<62}{'first rows':>18}{'corr':>8}{'whole epoch':>18}{'corr':>8}{'rows/s':>11}")
        for key, q in qual.items():
            pre, ep = q["prefix"], q.get("epoch")
            whole = f"{ep['batch_mix_distance']:.3f} ({ep['noise_floor']:.3f})" if ep else "-"
            print(
                f"  {QUALITY[key]:<62}{pre['batch_mix_distance']:>10.3f} ({pre['noise_floor']:.3f})"
                f"{pre['rank_correlation']:>+8.3f}{whole:>18}{ep['rank_correlation'] if ep else float('nan'):>+8.3f}"
                f"{q['rows_per_s']:>11,.0f}"
            )
    print("=" * 116)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None, help="rows of the epoch (default 10,000,000)")
    p.add_argument("--files", type=int, default=None, help="Parquet files to write the epoch as (default 25)")
    p.add_argument("--positions", default="0.1,0.5,0.9", help="checkpoint positions, fractions of the epoch")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions, median reported (default 3)")
    p.add_argument("--quality-rows", type=int, default=None, help="rows delivered to measure (default 200,000)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run in under a minute")
    p.add_argument("--no-epoch-quality", action="store_true", help="measure the first rows only, not the whole epoch")
    p.add_argument("--no-mosaic", action="store_true", help="leave MosaicML streaming out")
    p.add_argument("--skip", choices=["resume", "quality"], action="append", default=[], help="skip a part")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="where generated data goes")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default benchmarks/resume.png; quick: none)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON results to this file")
    args = p.parse_args(argv)
    args.rows = args.rows or (500_000 if args.quick else 10_000_000)
    args.files = args.files or (5 if args.quick else 25)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.quality_rows = args.quality_rows or (20_000 if args.quick else 200_000)
    args.positions = [float(x) for x in args.positions.split(",")]
    if not all(0 < x < 1 for x in args.positions):
        p.error("--positions must be fractions between 0 and 1")
    if args.plot is None and not args.quick:
        args.plot = ROOT / "benchmarks" / "resume.png"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    title = "headrace issue-4 benchmark: global order, resume and shuffle quality vs HF datasets and MosaicML streaming"
    results = bench_core.report_header(title, machine(), args)
    t_start = time.perf_counter()

    keys = ["headrace", "headrace_elastic", "hf", "hf_shuffle", "mosaic"]
    if args.no_mosaic or mosaic() is None:
        print("  MosaicML streaming: " + ("left out (--no-mosaic)" if args.no_mosaic else "not installed, skipped"))
        keys.remove("mosaic")
    else:
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
    spec = DataSpec(args.rows, args.files, row_group_size=20_000, max_chars=100)
    files = build_data(spec, args.data_dir)
    mds = build_mds(files, args.rows) if "mosaic" in keys else None
    warm_page_cache(files + (sorted(mds.glob("*.mds")) if mds else []))
    setup = Setup(str(files[0].parent / "part-*.parquet"), files, mds)
    results["data"] = {**asdict(spec), "parquet_bytes": sum(f.stat().st_size for f in files)}
    if mds is not None:
        results["data"]["mds_bytes"] = sum(f.stat().st_size for f in mds.glob("*.mds"))
        results["data"]["mds_shards"] = len(list(mds.glob("*.mds")))

    res = None
    if "resume" not in args.skip:
        print(f"\n[1] resume: {args.rows:,} rows in {len(files)} Parquet files (row groups of 20,000), batch {BATCH}")
        res = resume(setup, args.rows, args.positions, args.repeat, keys)
        results["resume"] = {
            "steps": {str(p): s for p, s in res["steps"].items()},
            "made": res["made"],
            "naive_batches_only_state": res["naive"],
            "headrace_first_batch_decodes": {str(p): r for p, r in res["reads"].items()},
            "timings": [
                {
                    "key": cp.key,
                    "position": cp.position,
                    "step": cp.step,
                    "state_bytes": cp.state_bytes,
                    "exact": all(cp.exact),
                    "resume_s": [round(s, 4) for s in cp.resume_s],
                    "fresh_s": [round(s, 4) for s in cp.fresh_s],
                    "resume_median": round(cp.median("resume_s"), 4),
                    "fresh_median": round(cp.median("fresh_s"), 4),
                }
                for by_pos in res["checkpoints"].values()
                for cp in by_pos.values()
            ],
        }
        if args.plot is not None:
            plot(res, args.plot, args.rows, args.positions, results["machine"])
            print(f"  plot: {args.plot}")
    qual = None
    if "quality" not in args.skip:
        print(f"\n[2] shuffle quality: first {args.quality_rows:,} rows delivered (and whole epoch), groups = document")
        qual = quality(setup, args.quality_rows, keys, epoch=not args.no_epoch_quality)
        results["quality"] = json.loads(json.dumps(qual, default=float))
    results["load_after"] = round(os.getloadavg()[0], 2)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    print_summary(res, qual, args)
    return bench_core.report_json(results, args)


if __name__ == "__main__":
    sys.exit(main())
