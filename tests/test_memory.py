"""Bounded memory: streaming a 10 GB dataset takes the same peak memory as streaming a 1 GB one.

The 1 GB dataset is 8 Parquet files of corpus text (about 128 MB each, row groups of 8 MB); the 10 GB
one is 80 shards: ten differently named symbolic links to each of those files (real, distinct shards
to headrace, no extra disk). Each pipeline runs in a fresh process that reports its peak resident
memory: ``VmHWM`` of ``/proc/self/status`` (file-backed pages of memory-mapped reads included). Not
``ru_maxrss``: a process started by ``subprocess`` (vfork + exec) inherits its parent's peak there, so it
would report pytest's memory, not its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.timeout(600)
FILES, FILE_BYTES = 8, 128 << 20

JOB = """
import json, sys
import headrace as hr
ds = hr.open(sys.argv[1], columns=["id", "text"])
if sys.argv[2] == "buffer":
    ds = ds.shuffle(seed=1, buffer_size=20_000)
else:
    ds = ds.shuffle(seed=1, buffer_size=None)
rows = 0
for batch in hr.Loader(ds.batch(1024), num_workers=2, prefetch=8):
    rows += len(batch["id"])
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(json.dumps({"rows": rows, "peak": int(status.split()[0]) * 1024}))
"""


@pytest.fixture(scope="module")
def gigabyte(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> tuple[Path, Path, int]:
    """(the 1 GB folder, the 10 GB folder, rows in the 1 GB one)."""
    small = tmp_path_factory.mktemp("1gb")
    large = tmp_path_factory.mktemp("10gb")
    texts = [t for t in corpus.column("text").to_pylist() if len(t) > 200]
    row_bytes = sum(len(t) for t in texts) / len(texts)
    per_file = int(FILE_BYTES / row_bytes)
    rows = 0
    for f in range(FILES):
        ids = pa.array(range(rows, rows + per_file), pa.int64())
        text = pa.array([texts[(i * 7919 + f) % len(texts)] for i in range(per_file)])
        table = pa.table({"id": ids, "text": text})
        pq.write_table(table, small / f"part-{f:03d}.parquet", row_group_size=max(1, per_file // 16),
                       compression="none", use_dictionary=False)  # fmt: skip
        rows += per_file
        for copy in range(10):
            (large / f"copy-{copy:02d}-part-{f:03d}.parquet").symlink_to(small / f"part-{f:03d}.parquet")
    return small, large, rows


def stream(folder: Path, order: str) -> dict[str, int]:
    run = subprocess.run([sys.executable, "-c", JOB, str(folder), order], capture_output=True, text=True, timeout=500)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("order", ["buffer", "global"])
def test_peak_memory_does_not_grow_with_the_dataset(gigabyte: tuple[Path, Path, int], order: str) -> None:
    small, large, rows = gigabyte
    assert sum(p.stat().st_size for p in small.iterdir()) > 1e9
    one = stream(small, order)
    ten = stream(large, order)
    assert (one["rows"], ten["rows"]) == (rows, 10 * rows)
    assert one["peak"] > 100 << 20, one  # its own peak: Python, numpy, pyarrow and the data in flight
    assert abs(ten["peak"] - one["peak"]) <= 0.10 * one["peak"], (one, ten)
