"""Time to the first batch over 1,000 small local shards: headrace, HF ``datasets``, MosaicML and litdata.

A training job's first seconds: a fresh Python process opens a dataset of many small shards and takes its
first batch of 256 rows. The data is the real paragraphs of ``corpora/`` (``tests/corpora.py``),
repeated with fresh ids, as ``suite.build_data`` writes them: 1,000 Parquet files of 200 rows (``id``,
``doc``, ``text``; ``--quick``: 200 files). The same rows, in the same order, are written as 1,000 MDS shards
of 200 rows (one ``MDSWriter``, a shard flushed every 200 rows, ``size_limit`` out of the way) and as 1,000
litdata chunks (``litdata.optimize(chunk_size=200)``). Every loader reads ``id`` and ``text``:

- headrace: ``hr.Loader(hr.open(glob, columns=[...]).batch(256))``; also with ``.shuffle(seed=0,
  buffer_size=None)`` (global order: every file's row count is read first) and ``.shuffle(seed=0,
  buffer_size=10_000)`` (the first batch waits for 10,000 rows, 50 files);
- HF ``datasets``: ``load_dataset("parquet", data_files=glob, split="train", streaming=True, columns=[...])``
  then ``.iter(batch_size=256)``; also with ``.shuffle(seed=0, buffer_size=10_000)``;
- MosaicML ``streaming``: ``StreamingDataLoader(StreamingDataset(local=mds, batch_size=256), batch_size=256,
  num_workers=0)``, without and with ``shuffle=True``;
- litdata: ``StreamingDataLoader(StreamingDataset(dir), batch_size=256)``, without and with ``shuffle=True``.

Each run is a new ``python -c`` process that imports ``torch`` (as a training process has: MosaicML and
litdata import it themselves, and HF ``datasets`` imports it inside ``load_dataset`` when it is installed,
which would otherwise put seconds of torch import on HF's clock; ``--no-torch`` leaves it out) and then only
the library it measures. Two times: from just before the ``open`` / ``load_dataset`` / ``StreamingDataset``
call to the first batch (measured inside the process), and from launching the process to its first batch
(interpreter, torch and the library's imports included). The page cache is warm (every file read once
before) and every contender ran once untimed first (bytecode compiled, HF's module cache filled), so the
times are those of a warm machine. The first batch is checked: 256 distinct ids, each row's text equal
(CRC-32) to the source's row with that id. Repetitions are interleaved (the contenders in turn, the first
one rotating). Then a diagnosis, in the notes: headrace again with pandas imported before the clock and its
two metadata passes timed (see ``diagnose``). The S3 version of this measurement is in ``bench_remote.py``.

Run: ``.venv/bin/python benchmarks/bench_startup.py`` (``--quick``: about a minute; ``--suite-out DIR``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from peers import HF_ENV, LITDATA_ENV, mosaic, peer_data, write_litdata, write_mds  # noqa: E402
from suite import DataSpec, Result, build_data, build_once, warm_page_cache  # noqa: E402

NAME = "startup"
BATCH = 256
ROWS_PER_SHARD = 200
SHUFFLE_BUFFER = 10_000
COLUMNS = ["id", "text"]
DATA_VERSION = 1  # bump when the MDS or litdata conversion changes

CONTENDERS = {  # key -> (label, role)
    "headrace": ("headrace", "headrace"),
    "headrace_global": ("headrace, global order (buffer_size=None)", "headrace"),
    "headrace_buffer": ("headrace, shuffle buffer 10,000", "headrace"),
    "hf": ("HF datasets streaming", "peer"),
    "hf_buffer": ("HF datasets streaming, shuffle buffer 10,000", "peer"),
    "mosaic": ("MosaicML streaming", "peer"),
    "mosaic_shuffle": ("MosaicML streaming, shuffle=True", "peer"),
    "litdata": ("litdata", "peer"),
    "litdata_shuffle": ("litdata, shuffle=True", "peer"),
}


# -- data ---------------------------------------------------------------------------------------------
def build_mds(files: list[Path]) -> Path:
    """The rows of ``files`` as one MDS shard per file (``flush_shard`` after each); reused if present."""
    folder = files[0].parent.with_name("mds-" + files[0].parent.name)
    columns = {"id": "int64", "text": "str"}
    spec = {"from": files[0].parent.name, "shards": len(files), "columns": columns, "version": DATA_VERSION}

    def write(tmp: Path) -> None:
        write_mds(tmp, files, columns, shard_per_file=True)
        shards = len(json.loads((tmp / "index.json").read_text())["shards"])
        if shards != len(files):
            raise RuntimeError(f"MDSWriter wrote {shards} shards, expected {len(files)}")

    build_once(folder, spec, write, f"{len(files):,} MDS shards")
    return folder


def build_litdata(files: list[Path]) -> Path:
    """The rows of ``files`` as litdata chunks of 200 rows (``optimize(chunk_size=200)``); reused if present."""
    folder = files[0].parent.with_name("litdata-" + files[0].parent.name)
    spec = {"from": files[0].parent.name, "chunk_size": ROWS_PER_SHARD, "version": DATA_VERSION}

    def write(tmp: Path) -> None:
        write_litdata(tmp, files, chunk_size=ROWS_PER_SHARD)
        chunks = len(json.loads((tmp / "index.json").read_text())["chunks"])
        if chunks != len(files):
            raise RuntimeError(f"litdata.optimize wrote {chunks} chunks, expected {len(files)}")

    build_once(folder, spec, write, f"{len(files):,} litdata chunks")
    return folder


# -- one run in a fresh process -----------------------------------------------------------------------
# Run with ``python -c`` so that it imports only the library it measures; the clock inside starts just
# before the open call. It prints the first batch's ids and the CRC-32 of each text.
_CHILD = r"""
import json, os, sys, time, zlib
cfg = json.loads(sys.argv[1])
lib = cfg["lib"]
if cfg["torch"]:  # a training process has imported torch before it builds its loader
    import torch
timers = {}
if lib.startswith("headrace"):
    if cfg.get("diag"):  # the diagnosis: pandas imported before the clock, the source's metadata passes timed
        import pandas
    import headrace as hr
    if cfg.get("diag"):
        from headrace.stages import source

        def timed(name, fn):
            def run(self):
                t = time.perf_counter()
                try:
                    return fn(self)
                finally:
                    timers[name] = timers.get(name, 0.0) + time.perf_counter() - t
            return run

        for name in ("counts", "chunks"):
            if hasattr(source.Source, name):
                setattr(source.Source, name, timed(name, getattr(source.Source, name)))
    t0 = time.perf_counter()
    ds = hr.open(cfg["glob"], columns=cfg["columns"])
    if lib == "headrace_global":
        ds = ds.shuffle(seed=0, buffer_size=None)
    elif lib == "headrace_buffer":
        ds = ds.shuffle(seed=0, buffer_size=cfg["buffer"])
    first = next(iter(hr.Loader(ds.batch(cfg["batch"]))))
elif lib.startswith("hf"):
    os.environ.update(cfg["env"])
    import datasets
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    t0 = time.perf_counter()
    ds = datasets.load_dataset("parquet", data_files=cfg["glob"], split="train", streaming=True,
                               columns=cfg["columns"], cache_dir=cfg["env"]["HF_HOME"])
    if lib == "hf_buffer":
        ds = ds.shuffle(seed=0, buffer_size=cfg["buffer"])
    first = next(iter(ds.iter(batch_size=cfg["batch"])))
elif lib.startswith("mosaic"):
    import importlib.util, logging, types
    if importlib.util.find_spec("torchvision") is None:  # see mosaic() in peers.py
        sys.modules["streaming.vision"] = types.ModuleType("streaming.vision")
    import streaming
    logging.getLogger("streaming").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    ds = streaming.StreamingDataset(local=cfg["mds"], shuffle=lib == "mosaic_shuffle", shuffle_seed=0,
                                    batch_size=cfg["batch"])
    first = next(iter(streaming.StreamingDataLoader(ds, batch_size=cfg["batch"], num_workers=0)))
else:
    os.environ.update(cfg["env"])
    import litdata
    t0 = time.perf_counter()
    ds = litdata.StreamingDataset(cfg["litdata"], shuffle=lib == "litdata_shuffle", seed=0)
    first = next(iter(litdata.StreamingDataLoader(ds, batch_size=cfg["batch"], num_workers=0)))
seconds = time.perf_counter() - t0
wall = time.time()
ids = [int(i) for i in first["id"]]
crcs = [zlib.crc32(str(t).encode()) for t in first["text"]]
print(json.dumps({"open_to_first": seconds, "first_wall": wall, "ids": ids, "crcs": crcs, "timers": timers,
                  "pandas": "pandas" in sys.modules}))
sys.stdout.flush()
os._exit(0)
"""


def run_child(cfg: dict[str, Any], truth: dict[int, int]) -> tuple[float, float, dict[str, Any]]:
    """(seconds from the open call to the first batch, from launch, the report); raises if the batch is wrong."""
    launch = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg['lib']} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    ids, crcs = report["ids"], report["crcs"]
    if len(ids) != BATCH or len(set(ids)) != BATCH:
        raise RuntimeError(f"{cfg['lib']}: first batch of {len(ids)} rows ({len(set(ids))} distinct ids)")
    wrong = [i for i, c in zip(ids, crcs, strict=True) if truth.get(i) != c]
    if wrong:
        raise RuntimeError(f"{cfg['lib']}: {len(wrong)} rows of the first batch are not the source's (ids {wrong[:5]})")
    return float(report["open_to_first"]), float(report["first_wall"]) - launch, report


@dataclass
class Series:
    key: str
    open_s: list[float] = field(default_factory=list)
    launch_s: list[float] = field(default_factory=list)
    pandas: bool = False  # whether the process had imported pandas by its first batch
    error: str = ""


def measure(cfg: dict[str, Any], truth: dict[int, int], repeat: int, skip: dict[str, str]) -> dict[str, Series]:
    """Every contender, once untimed and then ``repeat`` times, interleaved."""
    out = {key: Series(key, error=skip.get(key, "")) for key in CONTENDERS}
    keys = [k for k in CONTENDERS if k not in skip]
    ms = mosaic() if any(k.startswith("mosaic") for k in keys) else None
    for rep in range(-1, repeat):  # -1: the untimed warm-up
        order = keys[rep % len(keys) :] + keys[: rep % len(keys)] if rep >= 0 else keys
        for key in order:
            series = out[key]
            if series.error:
                continue
            if ms is not None and key.startswith("mosaic"):
                ms.base.util.clean_stale_shared_memory()  # the last MosaicML process ended with os._exit
            env = HF_ENV if key.startswith("hf") else LITDATA_ENV if key.startswith("litdata") else {}
            try:
                open_s, launch_s, report = run_child({**cfg, "lib": key, "env": env}, truth)
            except Exception as e:
                series.error = f"{type(e).__name__}: {e}"
                print(f"    {key} failed: {series.error}", flush=True)
                continue
            if rep >= 0:
                series.open_s.append(open_s)
                series.launch_s.append(launch_s)
                series.pandas = series.pandas or bool(report.get("pandas"))
        if rep >= 0:
            print(
                f"  repetition {rep + 1}/{repeat}: "
                + ", ".join(f"{k} {s.open_s[-1]:.2f}/{s.launch_s[-1]:.2f} s" for k, s in out.items() if s.open_s),
                flush=True,
            )
    return out


def diagnose(cfg: dict[str, Any], truth: dict[int, int], repeat: int, series: dict[str, Series]) -> list[str]:
    """Where headrace's time to the first batch goes: notes from extra, untimed-for-the-result runs.

    Two causes found with cProfile: the first batch's text column is converted by pyarrow's
    ``Array.to_numpy(zero_copy_only=False)``, which imports pandas on its first call; and the global order
    reads every file's footer twice (``Source.counts`` for the row counts, ``Source.chunks`` for the row
    groups). These runs import pandas before the clock and time the two passes.
    """
    notes = []
    for key in ("headrace", "headrace_global"):
        if not series[key].open_s:
            continue
        opens: list[float] = []
        timers: dict[str, list[float]] = {}
        for _ in range(repeat):
            try:
                open_s, _, report = run_child({**cfg, "lib": key, "env": {}, "diag": True}, truth)
            except Exception as e:
                notes.append(f"diagnosis of {key} failed: {type(e).__name__}: {e}")
                break
            opens.append(open_s)
            for name, seconds in report.get("timers", {}).items():
                timers.setdefault(name, []).append(seconds)
        if not opens:
            continue
        label = CONTENDERS[key][0]
        text = (
            f"Diagnosis ({label}): open to first batch {med(series[key].open_s):.3f} s; "
            f"{med(opens):.3f} s when pandas was imported before the clock"
        )
        if series[key].pandas:
            text += (
                " (headrace's first batch converts the text column with pyarrow's Array.to_numpy("
                "zero_copy_only=False), which imports pandas, about 40 MB too; fix: convert string columns "
                "without pandas, e.g. np.array(col.to_pylist(), dtype=object))"
            )
        if timers:
            parts = ", ".join(f"Source.{name}() {med(v):.3f} s" for name, v in sorted(timers.items()))
            text += (
                f"; of which {parts}: both read the footers of all {cfg['shards']:,} files (chunks() is not "
                "cached as counts() is); fix: read each footer once for both"
            )
        notes.append(text + ".")
        print(f"  {text}", flush=True)
    return notes


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(series: dict[str, Series], case: str) -> None:
    print("\n" + "=" * 100)
    print(f"Time to the first batch of {BATCH}, {case}: seconds, median (min-max), fresh process each")
    print(f"  {'contender':<46}{'open -> first':>20}{'launch -> first':>22}{'imports etc.':>14}")
    for key, (label, _) in CONTENDERS.items():
        s = series[key]
        if not s.open_s:
            print(f"  {label:<46}failed: {s.error[:150]}" if s.error else f"  {label:<46}-")
            continue
        o = f"{med(s.open_s):.3f} ({min(s.open_s):.2f}-{max(s.open_s):.2f})"
        la = f"{med(s.launch_s):.3f} ({min(s.launch_s):.2f}-{max(s.launch_s):.2f})"
        print(f"  {label:<46}{o:>20}{la:>22}{med(s.launch_s) - med(s.open_s):>14.3f}")
    print("=" * 100)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200 shards, 1 repetition")
    p.add_argument("--suite-out", type=Path, default=None, help="write <dir>/startup.json there")
    p.add_argument("--shards", type=int, default=None, help="shards of 200 rows (default 1,000)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 5)")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="where generated data goes")
    p.add_argument("--no-torch", action="store_true", help="do not import torch in each process first")
    args = p.parse_args(argv)
    args.shards = args.shards or (200 if args.quick else 1000)
    args.repeat = args.repeat or (1 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    result = Result(NAME, "Time to the first batch over many local shards", quick=args.quick)
    print(f"headrace startup benchmark: time to first batch; load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = args.shards * ROWS_PER_SHARD
    files = build_data(DataSpec(rows, args.shards, row_group_size=10_000, max_chars=None), args.data_dir)
    skip: dict[str, str] = {}
    mds = peer_data(lambda: build_mds(files), skip, ("mosaic", "mosaic_shuffle"), "MosaicML streaming")
    lit = peer_data(lambda: build_litdata(files), skip, ("litdata", "litdata_shuffle"), "litdata")
    warm_page_cache(files)
    for folder in (mds, lit):
        if folder is not None:
            warm_page_cache(sorted(p for p in folder.iterdir() if p.is_file()))
    table = pq.read_table([str(p) for p in files], columns=COLUMNS)  # type: ignore[arg-type]
    truth = {
        int(i): zlib.crc32(t.encode())
        for i, t in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True)
    }
    cfg = {
        "glob": str(files[0].parent / "part-*.parquet"),
        "mds": str(mds),
        "litdata": str(lit),
        "columns": COLUMNS,
        "batch": BATCH,
        "buffer": SHUFFLE_BUFFER,
        "shards": args.shards,
        "torch": not args.no_torch and importlib.util.find_spec("torch") is not None,
    }
    case = f"{args.shards:,} local shards x {ROWS_PER_SHARD} rows"
    print(f"\n{case}: {rows:,} paragraphs; {args.repeat} repetitions after one untimed run", flush=True)
    series = measure(cfg, truth, args.repeat, skip)
    diagnosis = diagnose(cfg, truth, min(args.repeat, 3), series)

    for key, (label, role) in CONTENDERS.items():
        s = series[key]
        if not s.open_s:
            continue
        for metric, values in (("s open to first batch", s.open_s), ("s launch to first batch", s.launch_s)):
            result.add(case, label, metric, values, role=role, higher_is_better=False)
    for why in dict.fromkeys(s.error for s in series.values() if s.error):
        result.notes.append(f"failed or missing, left out: {why}")
    size = sum(p.stat().st_size for p in files)
    result.notes += [
        f"Data: {args.shards:,} Parquet files of {ROWS_PER_SHARD} real paragraphs of corpora/ (bench_core's "
        f"build_data: id, doc, text; one row group each; {size / 1e6:,.1f} MB in all), the same rows as "
        f"{args.shards:,} MDS shards (one MDSWriter, flush_shard every {ROWS_PER_SHARD} rows) and {args.shards:,} "
        f"litdata chunks (optimize(chunk_size={ROWS_PER_SHARD})); every loader reads id and text, batches of 256.",
        "Each run is a fresh python process that imports torch first, as a training process has "
        f"({'done here' if cfg['torch'] else 'NOT done in this run'}; HF datasets imports torch inside "
        "load_dataset when it is installed), then only the library it measures. 's open to first batch': "
        "from just before hr.open / load_dataset / StreamingDataset to the first batch, measured in the process; "
        "'s launch to first batch': from launching the process (interpreter start and imports included). Warm "
        "page cache, and one untimed run of each contender first (bytecode, HF's module cache).",
        "Shuffles: headrace global order = shuffle(seed=0, buffer_size=None) (reads every file's row count "
        "first); the 10,000-row buffers (headrace, HF) wait for 10,000 rows (50 files) before the first batch; "
        "MosaicML and litdata shuffle=True permute indices from their index.json.",
        "Checked: every first batch has 256 distinct ids whose texts equal the source rows' (CRC-32).",
        *diagnosis,
    ]
    result.seconds = time.perf_counter() - start
    print_table(series, case)
    if args.suite_out is not None:
        print(f"result: {result.write(args.suite_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
