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


# -- the cache touches only its own files, and reclaims what dead processes left (issue #14, items 1 and 4)


def user_files(folder: Path) -> dict[str, bytes]:
    """A user's files put in the cache folder: a checkpoint, notes, a ``.part`` of their own, a name that starts
    like an entry's, a file in a sub-folder; their contents by relative path."""
    files = {
        "model.ckpt": os.urandom(300),
        "notes.txt": b"do not delete\n" * 10,
        "video.part": b"p" * 200,
        f"{DiskCache.key('s3://b/x')}-mine": b"m" * 50,
        f"{'0' * 32}-{'1' * 16}.bak": b"b" * 70,
        "runs/run1.log": b"l" * 500,
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def test_eviction_never_deletes_or_counts_files_the_cache_did_not_write(tmp_path: Path) -> None:
    mine = user_files(tmp_path)
    cache = DiskCache(tmp_path, limit=100)  # the user's files alone are 1,130 bytes
    assert cache.usage() == 0
    paths = []
    for i in range(5):
        paths.append(cache.put(f"s3://b/{i}", 40, "v", lambda out: out.write(b"e" * 40)))
        os.utime(paths[-1], (1000 + i, 1000 + i))  # used in this order (file times are coarser than a put)
    assert cache.stats.evictions == 3 and cache.usage() == 80
    assert [os.path.exists(p) for p in paths] == [False, False, False, True, True]
    assert {name: (tmp_path / name).read_bytes() for name in mine} == mine
    # An older version of an object is removed when the new one lands: only the cache's entry, not a
    # file whose name merely starts with the object's key.
    assert cache.put("s3://b/x", 10, "v1", lambda out: out.write(b"1" * 10))
    assert cache.put("s3://b/x", 10, "v2", lambda out: out.write(b"2" * 10))
    assert len(list(tmp_path.glob(f"{DiskCache.key('s3://b/x')}-*"))) == 2  # v2 and the user's "-mine"
    assert {name: (tmp_path / name).read_bytes() for name in mine} == mine


DIES_DOWNLOADING = """
import os, signal, sys
from headrace.io.cache import DiskCache

def fill(out):
    out.write(b"x" * 10)
    out.flush()
    os.kill(os.getpid(), signal.SIGKILL)

DiskCache(sys.argv[1], limit=150).put("s3://b/dead", 100, "v1", fill)
"""


def test_a_download_killed_midway_is_reclaimed_by_the_next_process_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headrace.io.cache as module

    monkeypatch.setattr(module, "WAIT_FOR_ROOM_S", 0.3)  # before the fix: a 60 s wait per object
    killed = subprocess.run([sys.executable, "-c", DIES_DOWNLOADING, str(tmp_path)], capture_output=True, timeout=60)
    assert killed.returncode == -9, killed.stderr[-2000:]
    [part] = tmp_path.glob("*.part")
    assert part.stat().st_size == 100  # reserved at full size, then the process died
    cache = DiskCache(tmp_path, limit=150)
    assert not part.exists() and cache.stats.reclaimed == 1 and cache.usage() == 0
    part.write_bytes(b"y" * 100)  # one more left behind while this process runs: reclaimed when making room
    path = cache.put("s3://b/live", 100, "v1", lambda out: out.write(b"z" * 100))
    assert path is not None and Path(path).read_bytes() == b"z" * 100
    assert cache.stats.reclaimed == 2 and cache.stats.waited == 0 and cache.usage() == 100
    assert not list(tmp_path.glob("*.part"))


WAITS_DOWNLOADING = """
import sys
from headrace.io.cache import DiskCache

def fill(out):
    out.write(b"a" * 60)
    print("downloading", flush=True)
    sys.stdin.readline()
    out.write(b"b" * 40)

print(DiskCache(sys.argv[1], limit=1000).put("s3://b/slow", 100, "v1", fill), flush=True)
"""


def test_a_download_in_flight_in_another_process_or_thread_is_never_reclaimed(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", WAITS_DOWNLOADING, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "downloading\n"
        started, finish = threading.Event(), threading.Event()

        def slow(out: Any) -> None:
            out.write(b"c" * 30)
            started.set()
            finish.wait(60)

        here = DiskCache(tmp_path, limit=1000)
        thread = threading.Thread(target=here.put, args=("s3://b/thread", 30, "v1", slow))
        thread.start()
        assert started.wait(60)
        other = DiskCache(tmp_path, limit=1000)  # opening the cache reclaims dead downloads only
        assert sorted(p.stat().st_size for p in tmp_path.glob("*.part")) == [30, 100]
        assert other.stats.reclaimed == 0 and other.usage() == 130
        child.stdin.write("go\n")
        child.stdin.flush()
        finish.set()
        thread.join()
        path = child.stdout.readline().strip()
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
    assert Path(path).read_bytes() == b"a" * 60 + b"b" * 40
    assert not list(tmp_path.glob("*.part")) and other.usage() == 130


def test_an_entry_cut_short_is_downloaded_again(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    path = cache.put("s3://b/x", 8, "v1", lambda out: out.write(b"12345678"))
    assert path is not None
    os.truncate(path, 3)  # what a power cut before the disk had the data can leave
    assert cache.put("s3://b/x", 8, "v1", lambda out: out.write(b"abcdefgh")) == path
    assert Path(path).read_bytes() == b"abcdefgh" and (cache.stats.hits, cache.stats.misses) == (0, 2)


DISK_REFUSES = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))  # files over 1,000 bytes fail with EFBIG, like a full disk
from headrace.io.cache import DiskCache
cache = DiskCache(sys.argv[1])
print(cache.put("s3://b/big", 2000, "v", lambda out: out.write(b"x" * 2000)))  # its reservation fails
print(cache.put("s3://b/grew", 1000, "v", lambda out: out.write(b"y" * 1500)))  # its writes fail
print(cache.put("s3://b/fits", 1000, "v", lambda out: out.write(b"z" * 1000)) is not None, cache.stats.uncached)
"""


def test_a_disk_that_refuses_the_download_means_reading_it_uncached_not_failing(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", DISK_REFUSES, str(tmp_path)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == ["None", "None", "True 2"]
    for url in ("s3://b/big", "s3://b/grew"):
        assert f"{url}: cannot keep it in the cache at {tmp_path} ([Errno 27] File too large); reading it without " \
               "caching" in run.stderr  # fmt: skip
    assert not list(tmp_path.glob("*.part")) and len(list(tmp_path.glob("*-*"))) == 1
