"""The global sample order of an indexed source: a pure function of (seed, epoch).

Rows are cut into chunks of ``chunk_rows`` consecutive rows of a shard; the chunks are permuted,
then taken ``window`` chunks at a time and the rows of each window are permuted. Sample ``i`` of an
epoch is found without reading samples ``0..i-1`` (a binary search and one window permutation), and
memory is bounded by one window. Quality: rows travel anywhere in the epoch at chunk granularity and
are fully mixed within ``window * chunk_rows`` rows (MosaicML's py1b/py1br and Grain's index shuffle
are the same family).

>>> order = GlobalOrder(counts=[5, 3], seed=0, epoch=0, chunk_rows=2, window=2)
>>> sorted(order.locate(range(order.total)))  # every (shard, row) exactly once
[(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2)]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from headrace.core.rng import permutation

STAGE = 0  # rng stage id of the source's order (index 0: chunk permutation; 1 + w: window w)


class GlobalOrder:
    """``counts[s]`` rows per shard, cut into ``chunk_rows`` chunks — or into ``chunks[s]`` (row counts of
    each shard's natural read units, e.g. Parquet row groups) where given."""

    def __init__(
        self,
        counts: Sequence[int],
        *,
        seed: int | None,
        epoch: int,
        chunk_rows: int,
        window: int,
        chunks: Sequence[Sequence[int] | None] | None = None,
    ) -> None:
        shard_of, start_of, size_of = [], [], []
        for shard, n in enumerate(counts):
            natural = chunks[shard] if chunks is not None else None
            sizes = list(natural) if natural else [min(chunk_rows, int(n) - s) for s in range(0, int(n), chunk_rows)]
            start = 0
            for size in sizes:
                if size > 0:
                    shard_of.append(shard)
                    start_of.append(start)
                    size_of.append(int(size))
                start += int(size)
        n_chunks = len(size_of)
        perm = np.arange(n_chunks) if seed is None else permutation(n_chunks, seed, epoch, STAGE, 0)
        self.shard_of = np.asarray(shard_of, dtype=np.int64)[perm]
        self.start_of = np.asarray(start_of, dtype=np.int64)[perm]
        self.size_of = np.asarray(size_of, dtype=np.int64)[perm]
        self.seed, self.epoch, self.window = seed, epoch, window
        self.chunk_end = np.cumsum(self.size_of)
        n_windows = -(-n_chunks // window)
        window_last = np.minimum(np.arange(1, n_windows + 1) * window, n_chunks) - 1
        self.window_end = self.chunk_end[window_last] if n_chunks else np.zeros(0, dtype=np.int64)
        self.total = int(self.chunk_end[-1]) if n_chunks else 0

    def _window_perm(self, w: int) -> np.ndarray:
        return _cached_perm(self.seed, self.epoch, w, int(self.window_size(w)))

    def window_size(self, w: int) -> int:
        return int(self.window_end[w] - (self.window_end[w - 1] if w else 0))

    def locate(self, positions: Iterable[int]) -> list[tuple[int, int]]:
        """``(shard, row)`` of each global position."""
        pos = np.fromiter(positions, dtype=np.int64)
        shards, rows = self.locate_array(pos)
        return list(zip(shards.tolist(), rows.tolist(), strict=True))

    def locate_array(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorized ``locate``: arrays of shards and rows for an array of positions."""
        shards, rows, _ = self.locate_chunks(pos)
        return shards, rows

    def locate_chunks(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``locate_array`` and the index of each position's chunk in this epoch's chunk order."""
        w = np.searchsorted(self.window_end, pos, side="right")
        flat = np.empty_like(pos)
        for wi in np.unique(w):
            sel = w == wi
            base = int(self.window_end[wi - 1]) if wi else 0
            flat[sel] = base + self._window_perm(int(wi))[pos[sel] - base]
        chunk = np.searchsorted(self.chunk_end, flat, side="right")
        chunk_base = self.chunk_end[chunk] - self.size_of[chunk]
        return self.shard_of[chunk], self.start_of[chunk] + (flat - chunk_base), chunk


@lru_cache(maxsize=4)
def _cached_perm(seed: int | None, epoch: int, w: int, n: int) -> np.ndarray:
    return np.arange(n) if seed is None else permutation(n, seed, epoch, STAGE, 1 + w)
