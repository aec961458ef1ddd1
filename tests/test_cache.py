"""The disk cache (``hr.open(..., cache_dir=, cache_limit=, cache_ahead=)``) in front of a real S3 server
(SeaweedFS) reached through our proxy, which counts the requests: each shard is fetched once and then read
from disk; the files never add up to more than the limit, least recently used go first; two processes
filling one cache at once both read everything exactly; a changed object is fetched again; the next
shards download while the current one is read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from faultproxy import FaultProxy
from headrace.core.errors import SourceError
from headrace.io.cache import DiskCache
from servers import Store

pytestmark = pytest.mark.timeout(180)
FILES, PER = 12, 400
FAST = hr.Retry(backoff=0.01, max_wait=0.05)


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> Path:
    """12 Parquet files of 400 rows (ids 0..4799) with corpus text: about 100 KB each."""
    folder = tmp_path_factory.mktemp("cached")
    texts = corpus.column("text").to_pylist()
    for f in range(FILES):
        ids = list(range(f * PER, (f + 1) * PER))
        table = pa.table({"id": ids, "text": [texts[(i * 7) % len(texts)] for i in ids]})
        pq.write_table(table, folder / f"part-{f:05d}.parquet", row_group_size=100, compression="none")
    return folder


@pytest.fixture(scope="session")
def s3_shards(s3_store: Store, shards: Path) -> Store:
    s3_store.put(shards, "cached")
    return s3_store


def sizes(shards: Path) -> list[int]:
    return [(shards / f"part-{f:05d}.parquet").stat().st_size for f in range(FILES)]


def read_ids(store: Store, pattern: str = "cached/*.parquet", **options: Any) -> list[int]:
    ds = hr.open(store.url(pattern), columns=["id"], storage_options=store.storage_options, retry=FAST, **options)
    return [i for b in ds.batch(100) for i in b["id"].tolist()]


def data_gets(proxy: FaultProxy) -> dict[str, int]:
    """GETs of shard bytes, by shard name."""
    return {k.rsplit("/", 1)[1]: n for k, n in proxy.paths.items() if k.startswith("GET ") and ".parquet" in k}


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.is_file() and not p.name.endswith(".part"))


def entry_of(cache_dir: Path, store: Store, name: str) -> list[Path]:
    found = cache_dir.glob(f"{DiskCache.key(store.url(f'cached/{name}'))}-*")
    return sorted(p for p in found if not p.name.endswith(".part"))  # whole entries, not downloads in flight


@pytest.fixture
def watch() -> Iterator[Callable[[Path], list[int]]]:
    """``watch(cache_dir)`` samples the bytes in the directory every 2 ms until the test ends: the list."""
    stop = threading.Event()
    threads = []

    def start(folder: Path) -> list[int]:
        seen: list[int] = []

        def poll() -> None:
            lock = folder / ".locks" / "cache.lock"  # scan between the cache's own changes, as it does
            while not stop.is_set():
                total = 0
                if lock.exists():
                    with open(lock, "a+b") as f:
                        fcntl.flock(f, fcntl.LOCK_EX)
                        for p in list(folder.glob("*")):
                            with contextlib.suppress(FileNotFoundError):
                                total += p.stat().st_size if p.is_file() else 0
                        fcntl.flock(f, fcntl.LOCK_UN)
                seen.append(total)
                time.sleep(0.002)

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        threads.append(t)
        return seen

    yield start
    stop.set()
    for t in threads:
        t.join()


def test_each_shard_is_fetched_once_then_read_from_disk(
    s3_shards: Store, tmp_path: Path, fault_proxy: Callable[..., tuple[FaultProxy, Store]]
) -> None:
    proxy, proxied = fault_proxy(s3_shards)
    cache = tmp_path / "cache"
    assert read_ids(proxied, cache_dir=cache) == list(range(FILES * PER))
    assert data_gets(proxy) == {f"part-{f:05d}.parquet": 1 for f in range(FILES)}  # whole, in one GET each
    assert len(entries(cache)) == FILES
    proxy.reset_counts()
    assert read_ids(proxied, cache_dir=cache) == list(range(FILES * PER))
    assert data_gets(proxy) == {}  # every byte from disk; the listing (and HEADs) only


def test_the_cache_never_exceeds_its_limit_and_evicts_the_least_recently_used(
    s3_shards: Store, shards: Path, tmp_path: Path, watch: Callable[[Path], list[int]]
) -> None:
    cache = tmp_path / "cache"
    limit = sum(sorted(sizes(shards))[-4:])  # room for any 4 shards, never 5
    cache.mkdir()
    seen = watch(cache)
    assert read_ids(s3_shards, cache_dir=cache, cache_limit=limit) == list(range(FILES * PER))
    kept = [name for name in (f"part-{f:05d}.parquet" for f in range(FILES)) if entry_of(cache, s3_shards, name)]
    assert len(kept) == 4 and kept[-1] == "part-00011.parquet"  # the most recent (read ahead may hold others)
    # Use part-00008 again (a hit makes it the most recent), then read a new one: the least recently used
    # other entry makes room, part-00008 stays.
    recent = kept[0]
    assert read_ids(s3_shards, f"cached/{recent}", cache_dir=cache, cache_limit=limit, cache_ahead=0)[:1] == [
        int(recent[5:10]) * PER
    ]
    lru = sorted(entries(cache), key=lambda p: p.stat().st_mtime)[0]
    assert read_ids(s3_shards, "cached/part-00000.parquet", cache_dir=cache, cache_limit=limit)[0] == 0
    assert entry_of(cache, s3_shards, recent) and entry_of(cache, s3_shards, "part-00000.parquet")
    assert not lru.exists()
    assert len(entries(cache)) == 4
    assert max(seen) <= limit and len(seen) > 10


TWO_JOB = """
import json, sys
import headrace as hr
options, limit = json.loads(sys.argv[2]), json.loads(sys.argv[4])
ds = hr.open(sys.argv[1], columns=["id"], storage_options=options, cache_dir=sys.argv[3], cache_limit=limit,
             cache_ahead=3, retry=hr.Retry(backoff=0.01, max_wait=0.05))
print(json.dumps([i for epoch in range(2) for b in ds.batch(100) for i in b["id"].tolist()]))
"""


@pytest.mark.parametrize("limited", [True, False])
def test_two_processes_filling_one_cache_at_once_read_everything_exactly(
    limited: bool,
    s3_shards: Store,
    shards: Path,
    tmp_path: Path,
    fault_proxy: Callable[..., tuple[FaultProxy, Store]],
    watch: Callable[[Path], list[int]],
) -> None:
    proxy, proxied = fault_proxy(s3_shards)
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    limit = sum(sorted(sizes(shards))[-5:]) if limited else None
    seen = watch(cache)
    argv = [proxied.url("cached/*.parquet"), json.dumps(proxied.storage_options), str(cache), json.dumps(limit)]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_JOB, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=150) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    for out, _ in outputs:
        assert json.loads(out) == list(range(FILES * PER)) * 2
    assert not list(cache.glob("*.part"))
    if limited:
        assert max(seen) <= limit  # type: ignore[operator]
        assert len(entries(cache)) <= 5
    else:  # one download per shard for both processes and both epochs: the second waits on the lock and hits
        assert data_gets(proxy) == {f"part-{f:05d}.parquet": 1 for f in range(FILES)}
        assert len(entries(cache)) == FILES


def test_a_changed_object_is_fetched_again_not_served_stale(s3_store: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    local = tmp_path / "v.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3]}), local)
    s3_store.put(local, "changing/v.parquet")
    assert read_ids(s3_store, "changing/v.parquet", cache_dir=cache) == [1, 2, 3]
    first = entries(cache)
    pq.write_table(pa.table({"id": [7, 8, 9]}), local)  # the same size: only the ETag tells them apart
    s3_store.put(local, "changing/v.parquet")
    assert read_ids(s3_store, "changing/v.parquet", cache_dir=cache) == [7, 8, 9]
    second = entries(cache)
    assert len(first) == len(second) == 1 and first != second  # the old copy is gone


def test_the_next_shards_download_in_the_background(
    s3_shards: Store, tmp_path: Path, fault_proxy: Callable[..., tuple[FaultProxy, Store]]
) -> None:
    proxy, proxied = fault_proxy(s3_shards)
    cache = tmp_path / "cache"
    ds = hr.open(proxied.url("cached/*.parquet"), columns=["id"], storage_options=proxied.storage_options,
                 cache_dir=cache, cache_ahead=2)  # fmt: skip
    it = iter(ds.batch(100))
    assert next(it)["id"][0] == 0  # reading shard 0; shards 1 and 2 download meanwhile
    for _ in range(500):
        if all(entry_of(cache, s3_shards, f"part-{f:05d}.parquet") for f in (1, 2)):
            break
        time.sleep(0.01)
    assert [bool(entry_of(cache, s3_shards, f"part-{f:05d}.parquet")) for f in range(5)] == [True, True, True] + [
        False
    ] * 2
    assert set(data_gets(proxy)) == {f"part-{f:05d}.parquet" for f in range(3)}


def test_downloads_into_the_cache_survive_faults(
    s3_shards: Store, shards: Path, tmp_path: Path, fault_proxy: Callable[..., tuple[FaultProxy, Store]]
) -> None:
    proxy, proxied = fault_proxy(s3_shards, rate=0.2, seed=3, kinds=("reset", "truncate", "503"), stall_s=0.0)
    cache = tmp_path / "cache"
    assert read_ids(proxied, cache_dir=cache) == list(range(FILES * PER))
    assert sum(proxy.counts.values()) >= 2
    assert sorted(p.stat().st_size for p in entries(cache)) == sorted(sizes(shards))


def test_cache_settings_are_checked(s3_shards: Store, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"part-00000.parquet: \d+ bytes do not fit in the cache \(cache_limit=10\)"):
        read_ids(s3_shards, cache_dir=tmp_path / "c", cache_limit=10)
    with pytest.raises(ValueError, match="cache_limit needs cache_dir"):
        read_ids(s3_shards, cache_limit=10)
    with pytest.raises(ValueError, match="cache_limit must be a positive"):
        DiskCache(tmp_path / "d", limit=0)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(SourceError, match="cannot create the cache directory"):
        read_ids(s3_shards, cache_dir=blocked / "sub")
    assert os.path.isfile(blocked)
