"""How random is an order? Two numbers, measured on the order a loader actually produced.

- ``batch_mix_distance``: on data sorted by group (e.g. source or document), how far each batch's
  group mix is from the whole epoch's mix — the mean total-variation distance, 0 for a perfect
  shuffle (up to sampling noise), 1 when every batch holds a single group of a balanced dataset.
- ``rank_correlation``: Spearman's correlation between the position in the output and the original
  index — 1 for no shuffle, about 0 for a good one.
``noise_floor`` gives the distance a truly uniform shuffle would show for the same batch size.

>>> import numpy as np
>>> q = shuffle_quality(np.arange(1000), groups=np.arange(1000) // 100, batch_size=50)
>>> round(q["rank_correlation"], 3), round(q["batch_mix_distance"], 2)
(1.0, 0.9)
"""

from __future__ import annotations

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x))
    return ranks


def rank_correlation(original_index: np.ndarray) -> float:
    """Spearman's rho between output position and ``original_index`` (the order the data was stored in)."""
    x = np.asarray(original_index)
    if len(x) < 2:
        return 1.0
    a, b = np.arange(len(x), dtype=np.float64), _ranks(x)
    return float(np.corrcoef(a, b)[0, 1])


def batch_mix_distance(groups: np.ndarray, batch_size: int) -> float:
    """Mean total-variation distance between each full batch's group mix and the whole order's mix."""
    g = np.asarray(groups)
    _, codes = np.unique(g, return_inverse=True)
    k = int(codes.max()) + 1 if len(codes) else 0
    overall = np.bincount(codes, minlength=k) / max(len(codes), 1)
    n = len(codes) // batch_size
    if n == 0:
        return 0.0
    counts = np.zeros((n, k))
    np.add.at(counts, (np.repeat(np.arange(n), batch_size), codes[: n * batch_size]), 1)
    return float((0.5 * np.abs(counts / batch_size - overall).sum(axis=1)).mean())


def noise_floor(groups: np.ndarray, batch_size: int, seed: int = 0) -> float:
    """``batch_mix_distance`` of a uniform random permutation of the same groups."""
    g = np.asarray(groups)
    return batch_mix_distance(g[np.random.default_rng(seed).permutation(len(g))], batch_size)


def shuffle_quality(original_index: np.ndarray, *, groups: np.ndarray, batch_size: int) -> dict[str, float]:
    """Both figures for an output order: ``original_index[i]`` and ``groups[i]`` of the i-th row delivered."""
    return {
        "batch_mix_distance": batch_mix_distance(groups, batch_size),
        "noise_floor": noise_floor(groups, batch_size),
        "rank_correlation": rank_correlation(original_index),
    }
