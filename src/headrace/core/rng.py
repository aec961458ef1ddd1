"""Counter-based randomness: every random choice is a pure function of (seed, epoch, stage, index).

Nothing random is ever stored in a checkpoint: restoring recomputes the generator from its counter.

>>> a = rng(42, epoch=0, stage=1, index=7).permutation(5)
>>> b = rng(42, epoch=0, stage=1, index=7).permutation(5)
>>> (a == b).all()
np.True_
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DEFAULT_SEED = 0
_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment (odd: i * GAMMA is a bijection of uint64)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def rng(seed: int, epoch: int, stage: int, index: int) -> np.random.Generator:
    """A Philox generator keyed by (seed, epoch, stage, index); the same key always gives the same stream."""
    _check_key("rng", seed=seed, epoch=epoch, stage=stage, index=index)
    key = np.random.SeedSequence([seed, epoch, stage, index]).generate_state(2, np.uint64)
    return np.random.Generator(np.random.Philox(key=key))


def permutation(n: int, seed: int, epoch: int, stage: int, index: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on the key."""
    return rng(seed, epoch, stage, index).permutation(n)


def uniforms(seed: int, epoch: int, stage: int, indices: np.ndarray, draws: int) -> np.ndarray:
    """``draws`` numbers in [0, 1) for each of ``indices``, as a ``float64`` array ``[len(indices), draws]``.

    Row ``i`` is a pure function of ``(seed, epoch, stage, indices[i])`` — not of the other indices, their
    order or how many there are — so a whole block draws at once and still gets what each index would
    alone. It is SplitMix64, vectorized: each index seeds its own stream from a key that SeedSequence
    derives from ``(seed, epoch, stage)``. Cheaper than one :func:`rng` per index; a stream of its own,
    not the values ``rng`` gives.

    >>> u = uniforms(42, epoch=0, stage=1, indices=np.array([7, 8]), draws=3)
    >>> u.shape, bool(((u >= 0) & (u < 1)).all())
    ((2, 3), True)
    >>> bool((uniforms(42, 0, 1, np.array([8]), 3)[0] == u[1]).all())  # the same index, the same draws
    True
    """
    _check_key("uniforms", seed=seed, epoch=epoch, stage=stage)
    if draws < 0:
        raise ValueError(f"uniforms draws must be >= 0, got {draws}")
    at = np.asarray(indices)
    if at.dtype.kind == "i" and (at < 0).any():
        raise ValueError(f"uniforms indices must be >= 0, got {int(at.min())}")
    if at.size and at.dtype.kind not in "iu":
        raise TypeError(f"uniforms indices must be integers, got {at.dtype}")
    streams = _mix(_stream_key(seed, epoch, stage) + (at.astype(np.uint64).reshape(-1, 1) + np.uint64(1)) * _GAMMA)
    bits = _mix(streams + np.arange(1, draws + 1, dtype=np.uint64) * _GAMMA)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53  # the top 53 bits: exact doubles in [0, 1)


@lru_cache(maxsize=64)
def _stream_key(seed: int, epoch: int, stage: int) -> np.uint64:
    """The key of :func:`uniforms` for one ``(seed, epoch, stage)``; computed once, SeedSequence being slow."""
    return np.random.SeedSequence([seed, epoch, stage]).generate_state(1, np.uint64)[0]


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer, element-wise (a bijection of uint64; arrays wrap around, as it needs)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _check_key(function: str, **parts: int) -> None:
    for name, value in parts.items():
        if value < 0:
            raise ValueError(f"{function} {name} must be >= 0, got {value}")
