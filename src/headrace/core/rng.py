"""Counter-based randomness: every random choice is a pure function of (seed, epoch, stage, index).

Nothing random is ever stored in a checkpoint: restoring recomputes the generator from its counter.

>>> a = rng(42, epoch=0, stage=1, index=7).permutation(5)
>>> b = rng(42, epoch=0, stage=1, index=7).permutation(5)
>>> (a == b).all()
np.True_
"""

from __future__ import annotations

import numpy as np

DEFAULT_SEED = 0


def rng(seed: int, epoch: int, stage: int, index: int) -> np.random.Generator:
    """A Philox generator keyed by (seed, epoch, stage, index); the same key always gives the same stream."""
    for name, value in (("seed", seed), ("epoch", epoch), ("stage", stage), ("index", index)):
        if value < 0:
            raise ValueError(f"rng {name} must be >= 0, got {value}")
    key = np.random.SeedSequence([seed, epoch, stage, index]).generate_state(2, np.uint64)
    return np.random.Generator(np.random.Philox(key=key))


def permutation(n: int, seed: int, epoch: int, stage: int, index: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on the key."""
    return rng(seed, epoch, stage, index).permutation(n)
