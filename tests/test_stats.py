"""Loader observability: counts, tokens, per-stage time, data wait, queue depth, hooks, log lines, the live
display, and the retries and cache hits of remote sources."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import headrace as hr
from faultproxy import FaultProxy
from servers import Store


def test_counts_and_stages_of_a_token_pipeline(parquet_dir: Path, bpe_path: str) -> None:
    ds = hr.open(str(parquet_dir), columns=["text"]).take(500).tokenize(bpe_path).pack(seq_len=64).batch(8)
    loader = hr.Loader(ds, num_workers=2)
    batches = list(loader)
    s = loader.stats()
    assert s.batches == len(batches)
    assert s.rows == sum(len(b["input_ids"]) for b in batches)
    assert s.tokens == sum(b["input_ids"].size for b in batches) == s.rows * 64
    assert s.bytes == sum(sum(v.nbytes for v in b.values()) for b in batches)
    assert [name for name, _ in s.stages] == ["batch", "pack", "tokenize", "limit", "source"]
    assert all(seconds >= 0 for _, seconds in s.stages) and sum(t for _, t in s.stages) > 0
    assert s.first_batch_s is not None and 0 < s.first_batch_s <= s.elapsed_s
    assert s.tokens_per_s > 0 and s.queue_capacity == 2
    scalars = s.scalars()
    assert {"rows_per_s", "tokens_per_s", "data_wait", "queue_depth", "stage_s/source"} <= set(scalars)


def test_data_wait_tells_a_slow_pipeline_from_a_slow_training_step(parquet_dir: Path) -> None:
    """Margins of 10x either way: a pipeline sleeping 40 ms per batch under a loop that does nothing, and a
    loop sleeping 40 ms per step over a pipeline that is ready in microseconds."""
    ds = hr.open(str(parquet_dir), columns=["id"], block_rows=50).take(400)
    slow = hr.Loader(ds.map(lambda b: (time.sleep(0.04), {})[1], batched=True).batch(50), prefetch=2)
    for _ in slow:
        pass
    assert slow.stats().data_wait > 0.8
    fast = hr.Loader(ds.batch(50), prefetch=4)
    for _ in fast:
        time.sleep(0.04)
    assert fast.stats().data_wait < 0.2


def test_hooks_log_lines_and_the_live_display(parquet_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    loader = hr.Loader(hr.open(str(parquet_dir), columns=["id"]).batch(100), log_every=0.0, progress=True)
    loader.add_hook(lambda s: seen.append(s.batches), every=10)
    with caplog.at_level(logging.INFO, logger="headrace"):
        assert len(list(loader)) == 50
    assert seen == [10, 20, 30, 40, 50]
    lines = [r.getMessage() for r in caplog.records if r.name == "headrace"]
    assert len(lines) == 50 and lines[-1].startswith("batches 50 | ") and "data wait" in lines[-1]
    with pytest.raises(ValueError, match="every must be >= 1"):
        loader.add_hook(print, every=0)


def test_remote_retries_and_cache_hits_show_in_the_stats(
    s3_store: Store, parquet_dir: Path, tmp_path: Path, fault_proxy: Callable[..., tuple[FaultProxy, Store]]
) -> None:
    s3_store.put(parquet_dir, "stats")
    proxy, proxied = fault_proxy(s3_store)

    def loader(**options: Any) -> hr.Loader:
        ds = hr.open(proxied.url("stats/*.parquet"), columns=["id"], storage_options=proxied.storage_options,
                     retry=hr.Retry(backoff=0.01), **options)  # fmt: skip
        return hr.Loader(ds.batch(500))

    proxy.inject("reset", times=2, match="part-00002")
    first = loader()
    assert sum(len(b["id"]) for b in first) == 5000
    assert first.stats().retries == 2 and first.stats().cache_hit_rate is None
    cached = loader(cache_dir=tmp_path / "cache")
    list(cached)
    again = loader(cache_dir=tmp_path / "cache")
    list(again)
    # 7 shards downloaded once; the first one's footer was read at hr.open (for the schema): one more look-up
    assert (cached.stats().cache_misses, cached.stats().cache_hits) == (7, 1)
    assert (again.stats().cache_misses, again.stats().cache_hits, again.stats().cache_hit_rate) == (0, 8, 1.0)
