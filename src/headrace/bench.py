"""``headrace bench``: run a pipeline for N batches and report what a user needs to know about it.

Throughput (rows/s, batches/s, and tokens/s when the batches hold ``input_ids``), time to the first
batch, peak resident memory, and — given an id and a group column — how random the order is
(:mod:`headrace.quality`). Everything is measured in this process on this machine.

>>> import headrace as hr, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp(), "rows.jsonl")
>>> _ = path.write_text("".join(f'{{"id": {i}, "g": {i // 10}}}\\n' for i in range(100)))
>>> report = run(hr.open(str(path)).batch(10), batches=5, quality=("id", "g"))
>>> report["batches"], report["rows"], round(report["quality"]["rank_correlation"], 2)
(5, 50, 1.0)
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import numpy as np

from headrace.loader import Loader
from headrace.pipeline import Dataset
from headrace.quality import shuffle_quality


def peak_rss_bytes() -> int:
    """This process's peak resident memory (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def run(
    ds: Dataset,
    *,
    batches: int,
    num_workers: int = 0,
    prefetch: int = 2,
    quality: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Iterate up to ``batches`` batches of ``ds`` (which must end with ``batch()``) and measure."""
    if not ds.batched:
        raise ValueError("bench needs a batched pipeline (end it with .batch(n))")
    loader = Loader(ds, num_workers=num_workers, prefetch=prefetch)
    ids: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    rows = tokens = count = 0
    first = None
    start = time.perf_counter()
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        count += 1
        some = next(iter(batch.values()))
        rows += len(some)
        if "input_ids" in batch:
            tokens += int(np.asarray(batch["input_ids"]).size)
        if quality is not None:
            for name in quality:
                if name not in batch:
                    raise ValueError(f"bench --quality: no column {name!r} in the batches ({sorted(batch)})")
            ids.append(np.asarray(batch[quality[0]]))
            groups.append(np.asarray(batch[quality[1]]))
        if count >= batches:
            break
    elapsed = time.perf_counter() - start
    report: dict[str, Any] = {
        "batches": count,
        "rows": rows,
        "seconds": elapsed,
        "first_batch_s": first,
        "rows_per_s": rows / elapsed if elapsed else None,
        "batches_per_s": count / elapsed if elapsed else None,
        "tokens_per_s": tokens / elapsed if elapsed and tokens else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "quality": None,
    }
    if quality is not None and ids:
        batch_size = len(ids[0])
        report["quality"] = shuffle_quality(np.concatenate(ids), groups=np.concatenate(groups), batch_size=batch_size)
    return report
