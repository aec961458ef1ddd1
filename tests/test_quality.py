"""Shuffle quality figures: they tell an unshuffled order, a buffer shuffle and the global order apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import headrace as hr
from headrace.quality import batch_mix_distance, noise_floor, rank_correlation, shuffle_quality


def test_figures_on_known_orders() -> None:
    n = 10_000
    assert rank_correlation(np.arange(n)) == pytest.approx(1.0)
    assert rank_correlation(np.arange(n)[::-1]) == pytest.approx(-1.0)
    assert abs(rank_correlation(np.random.default_rng(0).permutation(n))) < 0.05
    groups = np.repeat(np.arange(10), n // 10)  # sorted by group: each batch holds one group
    assert batch_mix_distance(groups, 100) == pytest.approx(0.9)
    assert noise_floor(groups, 100) < 0.25


def test_global_order_reaches_the_noise_floor_on_real_documents(parquet_dir: Path) -> None:
    def quality(ds: hr.Dataset) -> dict[str, float]:
        batches = list(hr.Loader(ds.batch(256)))
        ids = np.concatenate([b["id"] for b in batches])
        docs = np.concatenate([b["doc"] for b in batches])
        return shuffle_quality(ids, groups=docs, batch_size=256)

    base = hr.open(str(parquet_dir))
    none, buffered = quality(base), quality(base.shuffle(seed=0, buffer_size=1000))
    best = quality(base.shuffle(seed=0, buffer_size=None, window=32))  # 32 row groups: the whole corpus
    assert none["rank_correlation"] == pytest.approx(1.0) and none["batch_mix_distance"] > 0.5
    assert best["batch_mix_distance"] < 1.5 * best["noise_floor"] < buffered["batch_mix_distance"]
    assert abs(best["rank_correlation"]) < 0.1
