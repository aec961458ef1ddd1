"""``headrace bench``: run a pipeline for N batches and report what a user needs to know about it.

Throughput (rows/s, batches/s, bytes/s, and tokens/s when the batches hold ``input_ids``), time to the
first batch, peak resident memory, each stage's own time, and — given a step time — whether the loader
keeps up with a training loop; given an id and a group column, how random the order is
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
    ds: Dataset | Loader,
    *,
    batches: int,
    num_workers: int = 0,
    prefetch: int = 2,
    quality: tuple[str, str] | None = None,
    step_time: float = 0.0,
) -> dict[str, Any]:
    """Iterate up to ``batches`` batches of ``ds`` (a batched pipeline, or a Loader) and measure.

    ``step_time`` > 0 plays a training loop that spends that many seconds per step: the report then
    says how much of the loop's time would be spent waiting for data (``data_wait``) and whether the
    loader keeps up (``keeps_up``: data wait at most 1%).
    """
    loader = ds if isinstance(ds, Loader) else Loader(ds, num_workers=num_workers, prefetch=prefetch)
    if not loader.dataset.batched:
        raise ValueError("bench needs a batched pipeline (end it with .batch(n))")
    ids: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    count = 0
    for batch in loader:
        count += 1
        if quality is not None:
            for name in quality:
                if name not in batch:
                    raise ValueError(f"bench --quality: no column {name!r} in the batches ({sorted(batch)})")
            ids.append(np.asarray(batch[quality[0]]))
            groups.append(np.asarray(batch[quality[1]]))
        if count >= batches:
            break
        if step_time > 0:
            time.sleep(step_time)
    s = loader.stats()
    elapsed = s.elapsed_s
    report: dict[str, Any] = {
        "batches": count,
        "rows": s.rows,
        "seconds": elapsed,
        "first_batch_s": s.first_batch_s,
        "rows_per_s": s.rows / elapsed if elapsed else None,
        "batches_per_s": count / elapsed if elapsed else None,
        "tokens_per_s": s.tokens / elapsed if elapsed and s.tokens else None,
        "bytes_per_s": s.bytes / elapsed if elapsed else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "stages": [{"stage": name, "seconds": seconds} for name, seconds in s.stages],
        "workers": loader.num_workers,
        "retries": s.retries,
        "quality": None,
    }
    if step_time > 0:
        report.update(step_time=step_time, data_wait=s.data_wait, keeps_up=s.data_wait <= 0.01)
    if quality is not None and ids:
        batch_size = len(ids[0])
        report["quality"] = shuffle_quality(np.concatenate(ids), groups=np.concatenate(groups), batch_size=batch_size)
    return report
