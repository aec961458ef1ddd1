"""The disk cache under hostile conditions: a real process reading a dataset through the cache (from the
loopback HTTP server) is SIGKILLed at seeded points of its downloads — before the first byte, midway,
after the last byte but before the rename, or from outside while downloads run in the background — twice
in a row; then a rerun delivers exactly the same rows in order, reclaims every ``.part`` the dead left,
never waits for room (the dead's reservations no longer count), serves the finished entries as hits, and
stays within its limit. And the user's own files in the cache folder survive eviction byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
import headrace.io.cache as cache_module
from headrace.io.cache import ENTRY, PART, DiskCache
from servers import Store

pytestmark = pytest.mark.timeout(240)
FILES, PER = 6, 300
FAST = hr.Retry(backoff=0.01, max_wait=0.05)
ROWS = list(range(FILES * PER))

# Reads the dataset through the cache. argv: urls, cache_dir, limit, then either "die <nth> <fraction>": the
# nth download to start SIGKILLs the process after writing that fraction of the object, or "report": print
# a line per batch (the parent kills it from outside).
CHILD = """
import json, os, signal, sys, threading
import headrace as hr
from headrace.io import cache as cache_module

urls, cache_dir, limit, mode = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
if mode == "die":
    nth, fraction = int(sys.argv[5]), float(sys.argv[6])
    started, lock, put = [], threading.Lock(), cache_module.DiskCache.put

    def dying_put(self, url, size, version, fill):
        def fill_or_die(out):
            with lock:
                started.append(url)
                n = len(started)
            if n != nth:
                return fill(out)
            at, written = round(fraction * size), 0
            if at == 0:
                os.kill(os.getpid(), signal.SIGKILL)

            class Dying:
                def write(self, data):
                    nonlocal written
                    if written + len(data) >= at:
                        out.write(data[: at - written])
                        out.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
                    written += out.write(data)

            fill(Dying())

        return put(self, url, size, version, fill_or_die)

    cache_module.DiskCache.put = dying_put
ds = hr.open(urls, columns=["id"], cache_dir=cache_dir, cache_limit=limit, cache_ahead=2,
             retry=hr.Retry(backoff=0.01, max_wait=0.05))
for b in ds.batch(100):
    if mode == "report":
        print(b["id"][0], flush=True)
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def served(http_store: Store, tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> tuple[list[str], int]:
    """6 Parquet shards of 300 rows (ids 0..1799, with text) on the HTTP server: their URLs and total size."""
    folder = tmp_path_factory.mktemp("hostile-cache")
    texts = corpus.column("text").to_pylist()
    for f in range(FILES):
        ids = list(range(f * PER, (f + 1) * PER))
        table = pa.table({"id": ids, "text": [texts[(i * 5) % len(texts)] for i in ids]})
        pq.write_table(table, folder / f"part-{f}.parquet", row_group_size=100, compression="none")
    http_store.put(folder, "hostile-cache")
    total = sum(p.stat().st_size for p in folder.iterdir())
    return [http_store.url(f"hostile-cache/part-{f}.parquet") for f in range(FILES)], total


def child(urls: list[str], cache: Path, limit: int, *mode: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", CHILD, json.dumps(urls), str(cache), json.dumps(limit), *mode]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def own(cache: Path) -> tuple[list[Path], list[Path]]:
    """The cache's entries and its ``.part`` files (by the names it gives them)."""
    files = sorted(cache.iterdir())
    return [p for p in files if ENTRY.fullmatch(p.name)], [p for p in files if PART.fullmatch(p.name)]


def kill_during_download(urls: list[str], cache: Path, limit: int, rng: random.Random, where: int) -> None:
    """A run that dies in one of the downloads it still has to make (chosen by ``rng``): before its first
    byte (``where`` 0), after its last but before the rename (1), or at a point chosen by ``rng`` (2)."""
    left = FILES - len(own(cache)[0])
    assert left > 0
    fraction = [0.0, 1.0, rng.random()][where]
    run = child(urls, cache, limit, "die", str(1 + rng.randrange(left)), f"{fraction:.3f}")
    _, err = run.communicate(timeout=120)
    assert run.returncode == -signal.SIGKILL, err[-2000:]


def kill_from_outside(urls: list[str], cache: Path, limit: int, rng: random.Random, where: int) -> None:
    """A run killed from outside after a seeded number of batches, its next shards downloading meanwhile."""
    run = child(urls, cache, limit, "report")
    assert run.stdout is not None
    try:
        for _ in range(rng.randrange(1 + FILES * PER // 100)):
            assert run.stdout.readline().strip().isdigit()
        run.send_signal(signal.SIGKILL)
    finally:
        _, err = run.communicate(timeout=120)
    assert run.returncode in (-signal.SIGKILL, 0), err[-2000:]  # 0: it finished before the signal


def rerun(urls: list[str], cache: Path, limit: int) -> tuple[list[int], DiskCache]:
    ds = hr.open(urls, columns=["id"], cache_dir=cache, cache_limit=limit, cache_ahead=2, retry=FAST)
    disk: Any = ds.root.source.fs.cache
    assert isinstance(disk, DiskCache)
    return [i for b in ds.batch(100) for i in b["id"].tolist()], disk


@pytest.mark.parametrize(("seed", "how"), [(1, "inside"), (2, "inside"), (3, "outside")])
def test_a_rerun_after_two_sigkills_is_exact_reclaims_the_dead_downloads_and_never_waits(
    seed: int, how: str, served: tuple[list[str], int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls, total = served
    # Room for every shard, not for two dead full-size reservations more: counted, they would make the
    # rerun wait for room that never comes (60 s each, then read remotely, uncached).
    limit = total + total // (2 * FILES)
    monkeypatch.setattr(cache_module, "WAIT_FOR_ROOM_S", 2.0)  # keeps the code before the fix from taking minutes
    cache = tmp_path / "cache"
    cache.mkdir()
    rng = random.Random(seed)
    kill = kill_during_download if how == "inside" else kill_from_outside
    for k in range(2):
        if len(own(cache)[0]) < FILES:
            kill(urls, cache, limit, rng, (seed + k) % 3)  # seed 1: the end, then midway; 2: midway, the start
    finished, dead = own(cache)
    if how == "inside":
        assert dead  # the last run died holding a reservation
    inodes = {p: p.stat().st_ino for p in finished}
    ids, disk = rerun(urls, cache, limit)
    assert ids == ROWS
    entries, parts = own(cache)
    assert parts == [] and len(entries) == FILES and disk.usage() == total <= limit
    assert disk.stats.reclaimed == len(dead) and disk.stats.waited == 0
    # What the dead finished is read from disk (the same files: hits); only the rest is downloaded, once each.
    assert {p: p.stat().st_ino for p in finished} == inodes
    assert disk.stats.misses == FILES - len(finished) and disk.stats.hits >= len(finished)


def test_user_files_in_the_cache_folder_survive_eviction_byte_identical(
    served: tuple[list[str], int], tmp_path: Path
) -> None:
    urls, total = served
    cache = tmp_path / "cache"
    (cache / "checkpoints").mkdir(parents=True)
    mine = {
        "model.ckpt": os.urandom(3 * total),  # alone bigger than the limit
        "notes.txt": b"experiment notes\n",
        "upload.part": os.urandom(1000),
        "checkpoints/step-100.pt": os.urandom(2000),
    }
    for name, data in mine.items():
        (cache / name).write_bytes(data)
    limit = total * 2 // 3  # about four shards of six: every pass evicts
    for _ in range(2):
        ids, disk = rerun(urls, cache, limit)
        assert ids == ROWS
        assert disk.stats.evictions >= FILES - 4 and disk.usage() <= limit
    assert {name: (cache / name).read_bytes() for name in mine} == mine
    entries, parts = own(cache)
    assert parts == [] and sum(p.stat().st_size for p in entries) == disk.usage()


DISK_REFUSES = """
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # bigger files fail with EFBIG, like a full disk
import headrace as hr
ds = hr.open(json.loads(sys.argv[1]), columns=["id"], cache_dir=sys.argv[2],
             retry=hr.Retry(backoff=0.01, max_wait=0.05))
print(json.dumps([i for b in ds.batch(100) for i in b["id"].tolist()]))
"""


def test_a_cache_disk_that_refuses_every_download_is_read_around_exactly(
    served: tuple[list[str], int], tmp_path: Path
) -> None:
    urls, total = served
    cache = tmp_path / "cache"
    run = subprocess.run([sys.executable, "-c", DISK_REFUSES, json.dumps(urls), str(cache), str(total // (3 * FILES))],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == ROWS  # every shard read remotely instead
    for url in urls:
        assert f"{url}: cannot keep it in the cache at {cache} ([Errno 27] File too large)" in run.stderr
    assert own(cache) == ([], [])
