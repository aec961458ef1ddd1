"""Global order, elastic resume and shuffle quality: headrace vs HF ``datasets``, MosaicML, litdata.

Same run, same data, same machine. The data is the real paragraphs of ``corpora/`` repeated
with fresh ids: 10M rows (text cut to 100 characters) in 25 Parquet files, the same rows written
as MosaicML MDS shards (``id`` int64, ``text`` str), and the same rows written by ``litdata.optimize``
(litdata's own writer: one sample ``{"id": int, "text": str}`` per row, in id order, ``chunk_bytes="64MB"``
as MDS's default shard size). Every loader reads only ``id`` and ``text``.

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
   - litdata: ``StreamingDataset(dir, shuffle=True, seed=0)`` (its defaults otherwise) in a
     ``StreamingDataLoader(batch_size=256, num_workers=0)``. The checkpoints are real: one uninterrupted
     pass takes the loader's ``state_dict()`` at each position and keeps the next batch; resumed with
     ``load_state_dict``. (Its state is a sample count plus the configuration; the state computed from the
     count without iterating, ``StreamingDataset.state_dict(n, 0, 256)``, is compared with it.)

   Timed, interleaved across loaders and positions: (a) in process, build the pipeline, load the
   state, take the first batch; (b) a fresh ``python`` process, from launch (imports included) to
   its first batch. Every resumed first batch is compared with what the uninterrupted run delivers.
2. **Shuffle quality** on the first rows each loader delivers (data stored sorted by source
   document): ``headrace.quality.shuffle_quality`` with the document as group and batches of 256; and
   on the whole epoch (MosaicML's and litdata's whole-epoch order are computed from their own shufflers,
   checked against the rows they delivered). litdata is measured with its defaults (in-chunk shuffle of
   aligned 256-item blocks, ``item_shuffle_window=256``) and with a full in-chunk permutation
   (``item_shuffle_window=0``).
3. **A plot** of resume time against position: ``DIR/resume.png`` with ``--suite-out DIR``, else
   ``benchmarks/resume.png`` (full mode) or ``--plot PATH``.

``--suite-out DIR`` writes ``DIR/order.json`` (``benchmarks/suite.py``): one measure per (loader,
position, in process / fresh process) with every repetition, the shuffle-quality figures, and notes
(exactness of every resume, data sizes, peers that failed).

Run: ``.venv/bin/python benchmarks/bench_order.py``; ``--quick`` is a smoke run of about a minute (500k rows,
positions 10% and 90%, no cold start, 1 repetition). Data
goes into ``.bench/`` once and is reused (the Parquet files of ``suite.build_data``, shared with ``bench_core.py``).
MosaicML and litdata are optional: a peer not installed, or one that fails, is skipped and the output
(and the suite result's notes) say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

import headrace as hr
from headrace.core.state import digest
from headrace.quality import shuffle_quality

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import corpora  # tests/corpora.py: the real paragraphs of corpora/
import suite
from peers import HF_ENV, hf_parquet, litdata, mosaic, write_mds
from suite import DataSpec, build_data, build_once, report_header, report_json, warm_page_cache

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256
SHUFFLE_BUFFER = 10_000
COLUMNS = ["id", "text"]
MDS_VERSION = 1  # bump when the MDS conversion changes
LITDATA_VERSION = 1  # bump when the litdata conversion changes
LITDATA_CHUNK_BYTES = "64MB"
Batches = Iterator[Any]

LOADERS = {  # key -> label (tables, plot)
    "headrace": "headrace global order",
    "headrace_elastic": "headrace global order, state made without iterating (elastic)",
    "hf": "HF datasets streaming (no shuffle)",
    "hf_shuffle": "HF datasets streaming, shuffle(buffer 10,000)",
    "mosaic": "MosaicML streaming (shuffle=True, defaults)",
    "litdata": "litdata streaming (shuffle=True, seed=0, defaults)",
}
PEERS = ("hf", "hf_shuffle", "mosaic", "litdata")


# -- MosaicML streaming -------------------------------------------------------------------------------


def build_mds(files: list[Path], rows: int) -> Path:
    """The rows of ``files`` (in file order, so MDS sample ``i`` has id ``i``) as MDS shards; reused if present."""
    folder = files[0].parent.with_name("mds-" + files[0].parent.name)
    columns = {"id": "int64", "text": "str"}
    spec = {"from": files[0].parent.name, "rows": rows, "columns": columns, "v": MDS_VERSION}
    build_once(folder, spec, lambda tmp: write_mds(tmp, files, columns, check_ids=True), f"{rows:,} rows as MDS")
    return folder


def mosaic_open(mds: Path) -> tuple[Any, Any]:
    ms = mosaic()
    assert ms is not None
    ds = ms.StreamingDataset(local=str(mds), shuffle=True, shuffle_seed=0, batch_size=BATCH)
    return ds, ms.StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)


def mosaic_close(ds: Any, it: Any) -> None:
    it.close()
    if hasattr(ds, "_iterator"):
        ds._iterator.exit()  # stop its download/ready threads now rather than at garbage collection


# -- litdata ------------------------------------------------------------------------------------------


def _litdata_rows(piece: tuple[str, int]) -> Iterator[dict[str, Any]]:
    """``litdata.optimize``'s function: the rows of one Parquet row group, one sample each."""
    path, group = piece
    table = pq.ParquetFile(path).read_row_group(group, columns=COLUMNS)
    for i, text in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True):
        yield {"id": i, "text": text}


def build_litdata(files: list[Path], rows: int) -> Path:
    """The rows of ``files`` written by ``litdata.optimize``, sample ``i`` = id ``i``; reused if present.

    Its inputs are the row groups in file order, processed in order (``keep_data_ordered=True``,
    ``reorder_files=False``) by 1 worker (2 for 2M+ rows: each takes a contiguous half). Sample ids are
    checked at random positions afterwards.
    """
    folder = files[0].parent.with_name("litdata-order-" + files[0].parent.name)  # bench_startup.py has "litdata-"
    spec = {"from": files[0].parent.name, "rows": rows, "chunk_bytes": LITDATA_CHUNK_BYTES, "v": LITDATA_VERSION}

    def write(tmp: Path) -> dict[str, Any]:
        ld = litdata()
        assert ld is not None
        inputs = [(str(p), g) for p in files for g in range(pq.ParquetFile(p).num_row_groups)]
        workers = 2 if rows >= 2_000_000 and len(os.sched_getaffinity(0)) >= 2 else 1
        ld.optimize(fn=_litdata_rows, inputs=inputs, output_dir=str(tmp), chunk_bytes=LITDATA_CHUNK_BYTES,
                    num_workers=workers, keep_data_ordered=True, reorder_files=False, start_method="spawn",
                    verbose=False)  # fmt: skip
        return {"workers": workers}

    build_once(folder, spec, write, f"{rows:,} rows with litdata.optimize")
    ld = litdata()
    assert ld is not None
    ds = ld.StreamingDataset(str(folder))
    probe = [*np.random.default_rng(0).integers(0, rows, 200).tolist(), 0, rows - 1]
    if len(ds) != rows or any(int(ds[i]["id"]) != i for i in probe):
        raise RuntimeError(f"{folder}: litdata sample i must hold id i for i in 0..{rows - 1}")
    return folder


def litdata_open(folder: Path, item_shuffle_window: int | None = None) -> tuple[Any, Any]:
    ld = litdata()
    assert ld is not None
    kw = {} if item_shuffle_window is None else {"item_shuffle_window": item_shuffle_window}
    ds = ld.StreamingDataset(str(folder), shuffle=True, seed=0, **kw)
    return ds, ld.StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)


def litdata_epoch_order(ds: Any) -> np.ndarray:
    """The sample indexes of litdata's whole epoch for this (only) worker, from its own shuffler.

    What ``StreamingDataset.__next__`` does chunk by chunk: the chunk's interval, permuted by
    ``shuffler(indexes, num_chunks, epoch, chunk)``. Call after the first batch (the epoch is set up).
    """
    parts = [
        np.asarray(ds.shuffler(np.arange(iv[1], iv[2]), ds._shuffle_num_chunks, ds.current_epoch, int(chunk)))
        for iv, chunk in zip(ds.worker_intervals, ds.worker_chunks, strict=True)
    ]
    return np.concatenate(parts)


# -- the libraries, one pipeline each -----------------------------------------------------------------
def headrace_ds(glob: str, batch: int = BATCH) -> hr.Dataset:
    return hr.open(glob, columns=COLUMNS).shuffle(seed=0, buffer_size=None).batch(batch)


def hf_open(files: list[Path], shuffle: bool) -> Any:
    ds = hf_parquet([str(p) for p in files], columns=COLUMNS)
    return ds.shuffle(seed=0, buffer_size=SHUFFLE_BUFFER) if shuffle else ds


def ids_of(batch: Any) -> list[int]:
    return [int(i) for i in batch["id"]]


@dataclass
class Setup:
    glob: str
    files: list[Path]
    mds: Path | None
    lit: Path | None = None


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
    if key == "litdata":
        assert setup.lit is not None
        _, loader = litdata_open(setup.lit)
        if state is not None:
            loader.load_state_dict(state)
        it = iter(loader)
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
elif lib == "litdata":
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    import litdata
    ds = litdata.StreamingDataset(cfg["lit"], shuffle=True, seed=0)
    loader = litdata.StreamingDataLoader(ds, batch_size=cfg["batch"], num_workers=0)
    if state is not None:
        loader.load_state_dict(state)
    first = next(iter(loader))
else:
    import importlib.util, logging, types
    if importlib.util.find_spec("torchvision") is None:  # see mosaic() in peers.py
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
        "lit": str(setup.lit),
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
    if key == "litdata":
        assert setup.lit is not None
        _, loader = litdata_open(setup.lit)
        cps, seconds, n = pass_checkpoints(key, iter(loader), loader.state_dict, steps)
        made = {"made_by": "iterating", "seconds": seconds, "rows_per_s": n * BATCH / seconds}
        # Its state is a sample count: the same state, computed without iterating?
        same = []
        for cp in cps.values():
            if cp.state is not None:
                ds, _ = litdata_open(setup.lit)
                computed = {"dataset": ds.state_dict(cp.step * BATCH, 0, BATCH), "current_epoch": 1,
                            "num_samples_yielded": cp.step * BATCH, "latest_worker_idx": 0}  # fmt: skip
                same.append(json.loads(json.dumps(computed)) == cp.state)
        made["state_from_sample_count_equal"] = all(same)
        return cps, made
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
            state["digest"] = digest(state)  # an edit made on purpose: signed again, or the checksum refuses it
        out[position] = Checkpoint("headrace_elastic", position, cp.step, state, cp.expected)
    return out


def naive_state_check(setup: Setup, cp: Checkpoint) -> dict[str, Any]:
    """The shortcut of setting ``state["batches"]`` on a same-world state: where does it resume?"""
    loader = hr.Loader(headrace_ds(setup.glob))
    state = loader.state_dict()
    state["batches"] = cp.step
    state["digest"] = digest(state)  # an edit made on purpose: signed again, or the checksum refuses it
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


def headrace_reads(setup: Setup, cp: Checkpoint) -> dict[str, float]:
    """Diagnostic: how many Parquet pieces (row groups) and rows headrace decodes to deliver the first resumed batch.

    Counts the misses of the global-order source's piece cache (``stages/global_source.py``
    ``PieceCache.find``) while one resume runs (``prefetch=0``: all in this thread), and the seconds
    spent in those reads (``decode_s``) out of the whole resume (``total_s``: build, load the state,
    first batch); the method is restored afterwards.
    """
    from headrace.stages import global_source

    original = global_source.PieceCache.find
    seen: dict[str, float] = {"pieces": 0, "rows": 0, "decode_s": 0.0, "total_s": 0.0}

    def counting(self: Any, shard: int, row: int) -> Any:
        before = self.reads
        t0 = time.perf_counter()
        key, piece = original(self, shard, row)
        if self.reads != before:
            seen["decode_s"] += time.perf_counter() - t0
            seen["pieces"] += 1
            seen["rows"] += piece.batch.num_rows
        return key, piece

    global_source.PieceCache.find = counting  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        loader = hr.Loader(headrace_ds(setup.glob), prefetch=0)
        if cp.state is not None:
            loader.load_state_dict(cp.state)
        it = iter(loader)
        got = ids_of(next(it))
        seen["total_s"] = time.perf_counter() - t0
        if got != cp.expected:
            raise RuntimeError("headrace_reads: the resumed batch is not the expected one")
        it.close()
    finally:
        global_source.PieceCache.find = original  # type: ignore[method-assign]
    return seen


def reads_text(position: float, r: dict[str, float]) -> str:
    return (
        f"{position:.0%}: {r['pieces']:.0f} row groups = {r['rows']:,.0f} rows, "
        f"{r['decode_s']:.3f} s of {r['total_s']:.3f} s"
    )


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


def resume(
    setup: Setup, rows: int, positions: list[float], repeat: int, keys: list[str], cold: bool = True
) -> dict[str, Any]:
    """Checkpoints of every loader, then the timed resumes; a peer that fails is dropped (``failed``)."""
    timed = [0.0, *positions] if cold else list(positions)  # 0.0: the epoch's start without a state (cold)
    steps = {p: int(rows * p) // BATCH for p in timed}
    print("  checkpoint steps: " + ", ".join(f"{p:.0%} -> batch {s:,} (row {s * BATCH:,})" for p, s in steps.items()))
    cps: dict[str, dict[float, Checkpoint]] = {}
    made: dict[str, Any] = {}
    failed: dict[str, str] = {}
    keys = list(keys)
    for key in list(keys):
        try:
            if key == "headrace_elastic":
                cps[key] = elastic_checkpoints(setup, cps["headrace"])
                cps[key].pop(0.0, None)  # the same as headrace's cold start
                made[key] = {"made_by": "Loader(rank=0, world_size=2, batch 128).state_dict() with batches = step"}
            elif key == "mosaic":
                cps[key], made[key] = mosaic_checkpoints(setup, steps)
            else:
                cps[key], made[key] = make_checkpoints(key, setup, steps)
        except Exception as e:
            if key not in PEERS:
                raise
            failed[key] = f"making its checkpoints failed: {type(e).__name__}: {e}"[:1500]
            print(f"    {key} dropped: {failed[key]}", flush=True)
            keys.remove(key)
            cps.pop(key, None)
            continue
        extra = f", {made[key]['rows_per_s']:,.0f} rows/s" if "rows_per_s" in made[key] else ""
        print(f"    {key:<17} checkpoints made by {made[key]['made_by']} in {made[key].get('seconds', 0):.1f} s{extra}")
    naive = naive_state_check(setup, cps["headrace"][max(positions)])
    print(f"    headrace, same-world state with only 'batches' set: {naive}", flush=True)
    reads = {p: headrace_reads(setup, cp) for p, cp in cps["headrace"].items()}
    print(
        "    headrace decodes for its first batch: " + ", ".join(reads_text(p, r) for p, r in reads.items()),
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
                for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:  # the first loader rotates
                    if key in failed or p not in cps[key]:
                        continue
                    cp = cps[key][p]
                    gc.collect()
                    try:
                        t0 = time.perf_counter()
                        got = first_batch(key, setup, cp.state)
                        resume_s = time.perf_counter() - t0
                        seconds, got_fresh = fresh_process(key, setup, paths.get((key, p)))
                    except Exception as e:
                        if key not in PEERS:
                            raise
                        failed[key] = f"a timed resume at {p:.0%} failed: {type(e).__name__}: {e}"[:1500]
                        print(f"    {key} dropped: {failed[key]}", flush=True)
                        continue
                    cp.resume_s.append(resume_s)
                    cp.fresh_s.append(seconds)
                    cp.exact += [got == cp.expected, got_fresh == cp.expected]
            print(
                f"  repetition {rep + 1}/{repeat}: "
                + "; ".join(
                    f"{k} " + "/".join(f"{cp.resume_s[-1]:.3f}" for cp in cps[k].values() if cp.resume_s)
                    for k in keys
                    if k in cps and k not in failed
                ),
                flush=True,
            )
    for key in failed:
        cps.pop(key, None)
    return {"steps": steps, "checkpoints": cps, "made": made, "naive": naive, "reads": reads, "failed": failed}


# -- 2. shuffle quality -------------------------------------------------------------------------------
QUALITY = {  # key -> label
    "none": "no shuffle (the stored order)",
    "headrace": "headrace global order (defaults: chunks = row groups, window=16)",
    "headrace_window64": "headrace global order, window=64 (chunks = row groups)",
    "headrace_buffer": "headrace shuffle(buffer_size=10,000)",
    "hf_shuffle": "HF datasets streaming shuffle(buffer_size=10,000)",
    "mosaic": "MosaicML streaming shuffle=True (py1e, defaults)",
    "litdata": "litdata shuffle=True (defaults: item_shuffle_window=256)",
    "litdata_full": "litdata shuffle=True, item_shuffle_window=0 (full in-chunk)",
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


def delivered(
    key: str, make: Callable[[list[str]], Batches] | None, setup: Setup, rows: int, epoch: bool, t0: float
) -> tuple[list[int], float, list[int]]:
    """The first ``rows`` ids ``key`` delivers, the seconds since ``t0`` to collect them, and its whole epoch's
    order (empty without ``epoch`` for headrace and HF; MosaicML's and litdata's are computed, not read)."""
    if make is None and key == "mosaic":
        assert setup.mds is not None
        ds, loader = mosaic_open(setup.mds)
        it = iter(loader)
        got: list[int] = []
        while len(got) < rows:
            got += ids_of(next(it))
        seconds = time.perf_counter() - t0
        everything = np.asarray(ds._get_work(0, 0)).tolist()
        mosaic_close(ds, it)
        return got, seconds, everything
    if make is None:
        assert setup.lit is not None
        ds, loader = litdata_open(setup.lit, None if key == "litdata" else 0)
        got = collect(iter(loader), rows)
        seconds = time.perf_counter() - t0
        return got, seconds, litdata_epoch_order(ds).tolist()  # set up by the run above (the epoch is not over)
    got = collect(make(COLUMNS), rows)
    seconds = time.perf_counter() - t0
    return got, seconds, collect(make(["id"]), None) if epoch else []


def quality(
    setup: Setup, rows: int, keys: list[str], epoch: bool, failed: dict[str, str] | None = None
) -> tuple[dict[str, dict[str, Any]], int]:
    """Shuffle quality of the first ``rows`` rows each loader delivers (and of the whole epoch); group = document.

    The whole-epoch figures read only the ``id`` column (the order does not depend on the columns; the
    first ``rows`` ids are checked against the prefix run). MosaicML's whole epoch is its own epoch
    order (``_get_work``), litdata's is computed from its shuffler (``litdata_epoch_order``); both are
    checked against the rows delivered. A peer that fails is left out and recorded in ``failed``.
    Also returns the number of paragraphs of the corpus (the data repeats it).
    """
    failed = {} if failed is None else failed
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
        ds = hf_parquet([str(p) for p in setup.files], columns=columns)
        return iter(ds.shuffle(seed=0, buffer_size=SHUFFLE_BUFFER).iter(batch_size=BATCH))

    variants: dict[str, Callable[[list[str]], Batches] | None] = {
        "none": hr_iter(None),
        "headrace": hr_iter({"buffer_size": None}),
        "headrace_window64": hr_iter({"buffer_size": None, "window": 64}),
        "headrace_buffer": hr_iter({"buffer_size": SHUFFLE_BUFFER}),
        "hf_shuffle": hf_iter,
    }
    if "mosaic" in keys:
        variants["mosaic"] = None
    if "litdata" in keys:
        variants["litdata"] = variants["litdata_full"] = None
    out: dict[str, dict[str, Any]] = {}
    for key, make in variants.items():
        gc.collect()
        t0 = time.perf_counter()
        try:
            got, seconds, everything = delivered(key, make, setup, rows, epoch, t0)
            if everything and everything[: len(got)] != got:
                raise RuntimeError(f"{key}: the whole-epoch order does not start with the rows delivered")
        except Exception as e:
            if not key.startswith(("hf", "mosaic", "litdata")):
                raise
            failed[f"quality/{key}"] = f"{type(e).__name__}: {e}"[:1500]
            print(f"    {key} dropped: {failed[f'quality/{key}']}", flush=True)
            continue
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
    return out, n_base


# -- 3. plot ------------------------------------------------------------------------------------------
PLOT_STYLE = {  # key -> (label, color, marker, filled)
    "headrace": ("headrace global order", "#1b7837", "o", True),
    "headrace_elastic": ("headrace, elastic state (no iteration)", "#7fbf7b", "s", True),
    "hf": ("HF datasets streaming (no shuffle)", "#2166ac", "^", True),
    "hf_shuffle": ("HF streaming + shuffle(10k): NOT exact", "#67a9cf", "v", False),
    "mosaic": ("MosaicML streaming (shuffle=True)", "#b2182b", "D", True),
    "litdata": ("litdata streaming (shuffle=True)", "#8c510a", "P", True),
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
        f"Resume cost, batch {BATCH}: headrace vs HF datasets, MosaicML streaming, litdata "
        f"({info['cores']} CPU cores, local disk, page cache warm)",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- report -------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The machine and the versions this script prints and records in its JSON line."""
    return suite.script_machine("mosaicml-streaming", "litdata", "torch")


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
            if p not in cps["headrace"]:
                continue
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
    p.add_argument(
        "--positions",
        default=None,
        help="checkpoint positions, fractions of the epoch (default 0.1,0.5,0.9; quick: 0.1,0.9)",
    )
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions, median reported (default 3)")
    p.add_argument("--quality-rows", type=int, default=None, help="rows delivered to measure (default 200,000)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of about a minute")
    p.add_argument("--no-epoch-quality", action="store_true", help="measure the first rows only, not the whole epoch")
    p.add_argument(
        "--no-cold", action="store_true", help="do not time the epoch's start without a state (implied by --quick)"
    )
    p.add_argument("--no-mosaic", action="store_true", help="leave MosaicML streaming out")
    p.add_argument("--no-litdata", action="store_true", help="leave litdata out")
    p.add_argument("--skip", choices=["resume", "quality"], action="append", default=[], help="skip a part")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="where generated data goes")
    p.add_argument(
        "--plot", type=Path, default=None, help="PNG path (default: DIR/resume.png with --suite-out, else "
        "benchmarks/resume.png; quick without --suite-out: none)"
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the JSON results to this file")
    p.add_argument("--suite-out", type=Path, default=None, help="write the suite result DIR/order.json (and its plot)")
    args = p.parse_args(argv)
    args.rows = args.rows or (500_000 if args.quick else 10_000_000)
    args.files = args.files or (5 if args.quick else 25)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.quality_rows = args.quality_rows or (20_000 if args.quick else 200_000)
    args.positions = [float(x) for x in (args.positions or ("0.1,0.9" if args.quick else "0.1,0.5,0.9")).split(",")]
    args.no_cold = args.no_cold or args.quick
    if not all(0 < x < 1 for x in args.positions):
        p.error("--positions must be fractions between 0 and 1")
    if args.plot is None and args.suite_out is not None:
        args.plot = args.suite_out / "resume.png"
    elif args.plot is None and not args.quick:
        args.plot = ROOT / "benchmarks" / "resume.png"
    return args


def exactness(key: str, by_pos: dict[float, Checkpoint]) -> str:
    """One note: does every resume of ``key`` deliver the batch the uninterrupted run delivers next?"""
    resumed = {p: cp for p, cp in by_pos.items() if cp.state is not None}
    if not resumed:
        return f"{LOADERS[key]}: no resume measured"
    bad = [f"{p:.0%} ({cp.exact.count(False)} of {len(cp.exact)})" for p, cp in resumed.items() if not all(cp.exact)]
    where = ", ".join(f"{p:.0%}" for p in resumed)
    if not bad:
        return (
            f"{LOADERS[key]}: resume exact at {where}: every resumed first batch (in process and fresh process, "
            f"{sum(len(cp.exact) for cp in resumed.values())} resumes) equals the uninterrupted run's next batch"
        )
    why = " (HF documents that a shuffled stream's buffer is lost on resume)" if key == "hf_shuffle" else ""
    return (
        f"{LOADERS[key]}: resume NOT exact: the resumed first batch differs from the uninterrupted run's next batch "
        f"at {', '.join(bad)}{why}"
    )


def behind(cps: dict[str, dict[float, Checkpoint]], reads: dict[float, dict[str, float]]) -> list[str]:
    """A note: where a peer resumes in process over 10% faster than headrace (medians), and the measured reason."""
    hr_cps, lost, where, peers = cps["headrace"], set(), [], set()
    for key, by_pos in cps.items():
        if key.startswith("headrace"):
            continue
        for p, cp in by_pos.items():
            if p in hr_cps and cp.median("resume_s") * 1.1 < hr_cps[p].median("resume_s"):
                lost.add(p)
                peers.add(key)
                where.append(
                    f"{LOADERS[key]} at {f'{p:.0%}' if p else 'the start (no state)'}: "
                    f"{hr_cps[p].median('resume_s'):.3f} s vs {cp.median('resume_s'):.3f} s"
                )
    if not where:
        return []
    why = "; ".join(reads_text(p, r) for p, r in reads.items() if p in lost)
    return [
        f"headrace's in-process resume is behind: {'; '.join(where)} (medians). Measured reason: for its first "
        "resumed batch headrace decodes its whole mixing window (window=16 chunks = row groups: the window's rows "
        "are permuted across all of them), one row group after the other (stages/global_source.py PieceCache.find "
        f"-> formats/parquet.py pieces); row groups decoded, and seconds in those decodes of a whole resume "
        f"(prefetch=0): {why}."
        + (
            " HF streaming without shuffle reads on from its offset in one file and does not shuffle."
            if "hf" in peers
            else ""
        )
    ]


def suite_result(
    args: argparse.Namespace,
    results: dict[str, Any],
    res: dict[str, Any] | None,
    qual: dict[str, Any] | None,
    notes: list[str],
) -> Any:
    """The run as a ``suite.Result`` named "order"."""
    from suite import Result

    result = Result(
        name="order",
        title="Resume time against position, and shuffle quality: headrace, HF datasets, MosaicML streaming, litdata",
        quick=args.quick,
    )
    if res:
        add_resume(result, res, args)
    if qual:
        add_quality(result, qual, results.get("data", {}), args)
    data = results.get("data", {})
    sizes = [f"{data.get('rows', args.rows):,} rows (text cut to 100 characters)",
             f"Parquet {data.get('parquet_bytes', 0) / 1e6:,.0f} MB in {data.get('shards', args.files)} files "
             "(row groups of 20,000)"]  # fmt: skip
    if "mds_bytes" in data:
        sizes.append(f"MDS {data['mds_bytes'] / 1e6:,.0f} MB in {data['mds_shards']} shards")
    if "litdata_bytes" in data:
        sizes.append(f"litdata {data['litdata_bytes'] / 1e6:,.0f} MB in {data['litdata_chunks']} chunks (64MB)")
    result.notes.append("Data: " + "; ".join(sizes) + "; page cache warm, local disk.")
    result.notes += notes
    if args.plot is not None and args.plot.exists() and args.plot.parent.resolve() == args.suite_out.resolve():
        result.plots.append(args.plot.name)
    return result


def add_resume(result: Any, res: dict[str, Any], args: argparse.Namespace) -> None:
    """The resume part: seconds to the first batch after resuming at each position, in process and fresh."""
    epoch = f"{args.rows / 1e6:g}M-row epoch"
    metric = "s to first batch after resume"
    cps: dict[str, dict[float, Checkpoint]] = res["checkpoints"]
    for p in sorted({p for by_pos in cps.values() for p in by_pos}):
        where = f"resume at {p:.0%} of a {epoch}" if p else f"start of a {epoch}, no state (cold, for reference)"
        for what, how in (("resume_s", "in process"), ("fresh_s", "fresh process, launch to first batch")):
            for key, by_pos in cps.items():
                if p not in by_pos or not getattr(by_pos[p], what):
                    continue
                cp = by_pos[p]
                exact = "exact" if all(cp.exact) else "NOT exact: resumes at a different batch"
                result.add(
                    f"{where}, batch {BATCH}, {how}",
                    LOADERS[key],
                    metric,
                    getattr(cp, what),
                    role="headrace" if key.startswith("headrace") else "peer",
                    higher_is_better=False,
                    note=f"state {cp.state_bytes:,} bytes, {exact}" if cp.state is not None else "no state",
                )
    result.notes += [exactness(key, by_pos) for key, by_pos in cps.items()]
    result.notes += behind(cps, res["reads"])
    made = res["made"]
    if "litdata" in made and "state_from_sample_count_equal" in made["litdata"]:
        result.notes.append(
            "litdata's state is a sample count plus its configuration: the state computed from the count without "
            "iterating equals the one taken after iterating: " + str(made["litdata"]["state_from_sample_count_equal"])
        )
    result.notes.append(
        "Checkpoints: headrace, HF and litdata states are taken after really iterating to the position; "
        "MosaicML's from state_dict(num_samples) (expected batches from its epoch order, checked); headrace "
        "elastic: a state as if saved on 2 ranks with batches of 128, made without iterating. Timings "
        f"interleaved (every position and loader once per repetition, first loader rotating), {args.repeat} "
        "repetition(s)."
    )


def add_quality(result: Any, qual: dict[str, Any], data: dict[str, Any], args: argparse.Namespace) -> None:
    """The shuffle-quality part: batch mix and rank correlation of each order, and what explains them."""
    epoch = f"{args.rows / 1e6:g}M-row epoch"
    for part, case in (("prefix", f"first {args.quality_rows:,} rows delivered"), ("epoch", f"whole {epoch}")):
        for key, q in qual.items():
            m = q.get(part)
            if m is None:
                continue
            c = f"shuffle quality, {case}, groups = source document, batch {BATCH}"
            role = "reference" if key == "none" else "headrace" if key.startswith("headrace") else "peer"
            kw: dict[str, Any] = {"role": role, "higher_is_better": False}
            docs = f"{m['rows']:,} rows, {m['docs']:,} documents"
            result.add(
                c,
                QUALITY[key],
                "batch-mix distance (0 = every batch mixed like the epoch)",
                [m["batch_mix_distance"]],
                note=f"noise floor {m['noise_floor']:.3f}; {docs}",
                **kw,
            )
            result.add(
                c,
                QUALITY[key],
                "batch-mix distance above a uniform shuffle's (noise floor)",
                [m["batch_mix_distance"] - m["noise_floor"]],
                **kw,
            )
            result.add(c, QUALITY[key], "|rank correlation| with the stored order (0 = none)",
                       [abs(m["rank_correlation"])], note=f"signed {m['rank_correlation']:+.3f}", **kw)  # fmt: skip
    result.notes += quality_notes(qual, data, args)


def quality_notes(qual: dict[str, Any], data: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """How the shuffle quality was measured, the caveats of this data, and why headrace trails where it does."""
    notes: list[str] = []
    notes.append(
        "Shuffle quality: headrace.quality.shuffle_quality on the ids delivered, one seed (0); data stored sorted "
        "by source document. Whole epoch: ids only (headrace, HF), MosaicML's _get_work order, litdata's order "
        "computed from its shuffler; each checked against the rows really delivered. litdata's default "
        "shuffle permutes aligned blocks of 256 items inside each chunk (item_shuffle_window=256), so a batch "
        "of 256 is about one block of consecutive rows; item_shuffle_window=0 is its full in-chunk permutation."
    )
    if data.get("corpus_rows"):
        n = data["corpus_rows"]
        notes.append(
            f"Caveat on the shuffle quality: the data is the corpus' {n:,} paragraphs repeated "
            f"{args.rows / n:.1f} times (fresh ids), so any contiguous run of {n:,} rows or more holds every "
            "document in about its epoch proportion. Orders that mix inside large units of stored rows (litdata: "
            "one chunk of its 64 MB chunks at a time; MosaicML: its shards of the same size, within 4M-sample "
            "blocks) reach the noise floor on this data more easily than on data without such repetition; "
            "headrace's window mixes 16 row groups of 20,000 rows drawn from anywhere in the epoch."
        )
    if data.get("litdata_chunks"):
        notes.append(
            f"litdata mixes rows only inside one chunk at a time (here {data['litdata_chunks']} chunks of about "
            f"{args.rows // data['litdata_chunks']:,} rows; chunks in a shuffled order)"
            + (
                ": with a single chunk its full in-chunk permutation is a full shuffle."
                if data["litdata_chunks"] == 1
                else "."
            )
        )
    ep = {k: q["epoch"] for k, q in qual.items() if "epoch" in q}
    peers = {k: m for k, m in ep.items() if not k.startswith(("headrace", "none"))}
    if "headrace" in ep and peers:
        best = min(peers, key=lambda k: peers[k]["batch_mix_distance"])
        h, b = ep["headrace"], peers[best]
        if h["batch_mix_distance"] > b["batch_mix_distance"]:
            w64 = ep.get("headrace_window64")
            notes.append(
                f"headrace's default global order mixes batches less well over the whole epoch than "
                f"{QUALITY[best]}: "
                f"batch-mix {h['batch_mix_distance']:.3f} vs {b['batch_mix_distance']:.3f} (noise floor "
                f"{h['noise_floor']:.3f}). Measured reason: each batch is drawn from one window of 16 chunks (the "
                f"row groups, 20,000 rows: {16 * 20_000:,} rows, {16 * 20_000 / args.rows:.0%} of the epoch)"
                + (f"; with window=64 the same order reaches {w64['batch_mix_distance']:.3f}" if w64 else "")
                + "."
            )
    return notes


def contenders(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The loaders to run (a peer not installed or left out by a flag is dropped) and notes saying why."""
    keys = ["headrace", "headrace_elastic", "hf", "hf_shuffle", "mosaic", "litdata"]
    notes: list[str] = []
    if args.no_mosaic or mosaic() is None:
        why = "left out (--no-mosaic)" if args.no_mosaic else "not installed, skipped"
        print("  MosaicML streaming: " + why)
        notes.append("MosaicML streaming: " + why)
        keys.remove("mosaic")
    else:
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
    if args.no_litdata or litdata() is None:
        why = "left out (--no-litdata)" if args.no_litdata else "not installed, skipped"
        print("  litdata: " + why)
        notes.append("litdata: " + why)
        keys.remove("litdata")
    return keys, notes


def resume_json(res: dict[str, Any]) -> dict[str, Any]:
    """The resume part in the JSON line: the checkpoints' steps and states, and every timing."""
    return {
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    title = (
        "headrace order benchmark: global order, resume and shuffle quality vs HF datasets, MosaicML streaming "
        "and litdata"
    )
    results = report_header(title, machine(), args)
    t_start = time.perf_counter()

    keys, notes = contenders(args)
    spec = DataSpec(args.rows, args.files, row_group_size=20_000, max_chars=100)
    files = build_data(spec, args.data_dir)
    mds = build_mds(files, args.rows) if "mosaic" in keys else None
    lit = None
    if "litdata" in keys:
        try:
            lit = build_litdata(files, args.rows)
        except Exception as e:
            notes.append(f"litdata: writing the data with litdata.optimize failed, left out: {type(e).__name__}: {e}")
            print("  " + notes[-1], flush=True)
            keys.remove("litdata")
    lit_chunks = sorted(lit.glob("*.bin")) if lit else []
    warm_page_cache(files + (sorted(mds.glob("*.mds")) if mds else []) + lit_chunks)
    setup = Setup(str(files[0].parent / "part-*.parquet"), files, mds, lit)
    results["data"] = {**asdict(spec), "parquet_bytes": sum(f.stat().st_size for f in files)}
    if mds is not None:
        results["data"]["mds_bytes"] = sum(f.stat().st_size for f in mds.glob("*.mds"))
        results["data"]["mds_shards"] = len(list(mds.glob("*.mds")))
    if lit is not None:
        results["data"]["litdata_bytes"] = sum(f.stat().st_size for f in lit_chunks)
        results["data"]["litdata_chunks"] = len(lit_chunks)

    sections = {"data": time.perf_counter() - t_start}
    res = None
    failed: dict[str, str] = {}
    if "resume" not in args.skip:
        t0 = time.perf_counter()
        print(f"\n[1] resume: {args.rows:,} rows in {len(files)} Parquet files (row groups of 20,000), batch {BATCH}")
        res = resume(setup, args.rows, args.positions, args.repeat, keys, cold=not args.no_cold)
        failed.update(res["failed"])
        results["resume"] = resume_json(res)
        if args.plot is not None:
            plot(res, args.plot, args.rows, args.positions, results["machine"])
            print(f"  plot: {args.plot}")
        sections["resume"] = time.perf_counter() - t0
        print(f"  [1] took {sections['resume']:.1f} s", flush=True)
    qual = None
    if "quality" not in args.skip:
        t0 = time.perf_counter()
        print(f"\n[2] shuffle quality: first {args.quality_rows:,} rows delivered (and whole epoch), groups = document")
        qual, results["data"]["corpus_rows"] = quality(
            setup, args.quality_rows, keys, epoch=not args.no_epoch_quality, failed=failed
        )
        results["quality"] = json.loads(json.dumps(qual, default=float))
        sections["quality"] = time.perf_counter() - t0
        print(f"  [2] took {sections['quality']:.1f} s", flush=True)
    results["sections_s"] = {k: round(v, 1) for k, v in sections.items()}
    notes += [
        f"{LOADERS.get(k, QUALITY.get(k.split('/')[-1], k))}: FAILED, left out: {why}" for k, why in failed.items()
    ]
    results["failed"] = failed
    results["load_after"] = round(os.getloadavg()[0], 2)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    print_summary(res, qual, args)
    if args.suite_out is not None:
        result = suite_result(args, results, res, qual, notes)
        result.seconds = results["total_s"]
        print(f"suite result: {result.write(args.suite_out)}")
    return report_json(results, args)


if __name__ == "__main__":
    sys.exit(main())
