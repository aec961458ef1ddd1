"""Stream the real corpora through a shuffled, mapped, filtered, batched pipeline; checkpoint half-way; resume in a
new process and check the continuation is identical.

The corpora shipped in the repository (``corpora/``: Shakespeare and the Python docs, unpacked on first use) are
written as 8 Parquet shards, one row per paragraph (``id``, ``doc``, ``text``), under ``--out`` (default: a
temporary folder, removed at the end). An uninterrupted epoch is timed and fingerprinted batch by batch; a second
run stops half-way and saves its JSON state; a *new process* loads it and streams the rest. The demo exits 1 if
the resumed batches differ from the uninterrupted run's second half::

    python examples/resume_demo.py                      # every document: 127,168 paragraphs pass the filter
    python examples/resume_demo.py --docs 20 --out /tmp/resume_demo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import headrace as hr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpora"))
from unpacked import corpora_dir  # corpora/unpacked.py, beside the examples in the checkout

SHARDS = 8
BATCH = 256
MIN_CHARS = 20  # the filter: paragraphs shorter than this are dropped


def paragraphs(docs: int | None) -> pa.Table:
    """One row per non-empty paragraph of the first ``docs`` documents (Shakespeare, then the Python docs, each
    sorted by path): ``id`` (its place, from 0), ``doc`` (the file, relative to the corpora) and ``text``."""
    root = corpora_dir()
    files = sorted((root / "shakespeare").glob("*.txt")) + sorted((root / "python-docs").rglob("*.txt"))
    if not files:
        sys.exit(f"no corpora under {root}: see corpora/README.md")
    docs_col: list[str] = []
    texts: list[str] = []
    for path in files[:docs]:
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        for para in text.split("\n\n"):
            if para.strip():
                docs_col.append(str(path.relative_to(root)))
                texts.append(para.strip())
    return pa.table({"id": pa.array(range(len(texts)), pa.int64()), "doc": docs_col, "text": texts})


def prepare(out: Path, docs: int | None) -> str:
    """The paragraphs as ``SHARDS`` Parquet files of consecutive rows under ``out/corpus``; returns their glob."""
    folder = out / "corpus"
    if not (folder / f"part-{SHARDS - 1:05d}.parquet").exists():
        table = paragraphs(docs)
        folder.mkdir(parents=True, exist_ok=True)
        bounds = [table.num_rows * i // SHARDS for i in range(SHARDS + 1)]
        for i in range(SHARDS):
            part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
            pq.write_table(part, folder / f"part-{i:05d}.parquet", row_group_size=5000)
    return str(folder / "*.parquet")


def pipeline(glob: str) -> hr.Dataset:
    def features(batch: dict[str, Any]) -> dict[str, Any]:
        return {"chars": np.fromiter((len(t) for t in batch["text"]), dtype=np.int64, count=len(batch["text"]))}

    return (
        hr.open(glob, columns=["id", "doc", "text"])
        .shuffle(seed=2026, buffer_size=10_000)
        .map(features, batched=True)
        .filter(lambda b: b["chars"] >= MIN_CHARS, batched=True)
        .batch(BATCH)
    )


def digest(batch: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(batch["id"].tobytes())
    h.update(batch["chars"].tobytes())
    return h.hexdigest()[:16]


def resume(glob: str, state_file: Path) -> None:
    """The second process: load the state and print one digest per remaining batch, as JSON."""
    loader = hr.Loader(pipeline(glob), num_workers=2, prefetch=4)
    loader.load_state_dict(json.loads(state_file.read_text()))
    t0 = time.perf_counter()
    out, first = [], None
    for batch in loader:
        first = first or time.perf_counter() - t0
        out.append(digest(batch))
    print(json.dumps({"digests": out, "first_batch_s": first}))


def demo(out: Path, docs: int | None) -> bool:
    """The whole demo in ``out``; True when the resumed batches are the uninterrupted run's."""
    glob = prepare(out, docs)
    print(f"headrace {hr.__version__} demo: {glob}")
    loader = hr.Loader(pipeline(glob), num_workers=2, prefetch=4)
    t0 = time.perf_counter()
    digests, rows, nbytes = [], 0, 0
    for batch in loader:
        digests.append(digest(batch))
        rows += len(batch["id"])
        nbytes += int(batch["chars"].sum())
    elapsed = time.perf_counter() - t0
    print(f"epoch 0: {len(digests)} batches, {rows:,} rows, {nbytes / 1e6:.1f} MB of text in {elapsed:.2f} s "
          f"-> {rows / elapsed:,.0f} rows/s, {nbytes / 1e6 / elapsed:.1f} MB/s")  # fmt: skip

    half = len(digests) // 2
    run = hr.Loader(pipeline(glob), num_workers=2, prefetch=4)
    for step, batch in enumerate(run):
        assert digest(batch) == digests[step], f"batch {step} differs between two runs of the same pipeline"
        if step + 1 == half:
            break
    state = run.state_dict()
    state_file = out / "state.json"
    state_file.write_text(json.dumps(state))
    print(f"checkpoint after batch {half}: {len(json.dumps(state))} bytes of JSON (shuffle buffer of 10,000 rows)")

    child = subprocess.run([sys.executable, __file__, "--out", str(out), "--resume", str(state_file)],
                           check=True, capture_output=True, text=True)  # fmt: skip
    resumed = json.loads(child.stdout)
    same = bool(resumed["digests"] == digests[half:])
    print(f"resumed in a new process: first batch after {resumed['first_batch_s']:.3f} s, "
          f"{len(resumed['digests'])} batches")  # fmt: skip
    print(f"continuation identical to the uninterrupted run: {'YES' if same else 'NO'}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for the Parquet shards and the state (default: a temporary "
                        "folder, removed at the end; a folder given is kept, and its shards reused)")  # fmt: skip
    parser.add_argument("--docs", type=int, default=None, help="only the first N documents (default: all)")
    parser.add_argument("--resume", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.resume:
        resume(prepare(args.out, args.docs), args.resume)
        return
    if args.out is not None:
        same = demo(args.out, args.docs)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="headrace-resume-demo-"))
        try:
            same = demo(scratch, args.docs)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
