"""Stream the real corpora through a shuffled, mapped, batched pipeline; checkpoint half-way; resume elsewhere.

Run with ``make demo``. The corpora (Shakespeare and the Python docs, ``corpora/``) are
converted to Parquet shards in ``.demo/``; an uninterrupted epoch is timed and fingerprinted batch by
batch; then a run stops half-way, saves its JSON state, and a *new process* resumes from it. The
demo checks that the resumed batches are identical to the uninterrupted run's second half.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import headrace as hr

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".demo"
sys.path.insert(0, str(ROOT / "tests"))


def prepare() -> str:
    from corpora import paragraphs, write_parquet

    folder = WORK / "corpus"
    if not (folder / "part-00007.parquet").exists():
        table = paragraphs()
        write_parquet(table, folder, shards=8, row_group_size=5000)
    return str(folder / "*.parquet")


def pipeline(glob: str) -> hr.Dataset:
    def features(batch: dict[str, Any]) -> dict[str, Any]:
        return {"chars": np.fromiter((len(t) for t in batch["text"]), dtype=np.int64, count=len(batch["text"]))}

    return (
        hr.open(glob, columns=["id", "doc", "text"])
        .shuffle(seed=2026, buffer_size=10_000)
        .map(features, batched=True)
        .filter(lambda b: b["chars"] >= 20, batched=True)
        .batch(256)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resume", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    glob = prepare()
    if args.resume:
        resume(glob, args.resume)
        return

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
    state_file = WORK / "state.json"
    state_file.write_text(json.dumps(state))
    print(f"checkpoint after batch {half}: {len(json.dumps(state))} bytes of JSON (shuffle buffer of 10,000 rows)")

    child = subprocess.run([sys.executable, __file__, "--resume", str(state_file)], check=True,
                           capture_output=True, text=True)  # fmt: skip
    resumed = json.loads(child.stdout)
    same = resumed["digests"] == digests[half:]
    print(f"resumed in a new process: first batch after {resumed['first_batch_s']:.3f} s, "
          f"{len(resumed['digests'])} batches")  # fmt: skip
    print(f"continuation identical to the uninterrupted run: {'YES' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
