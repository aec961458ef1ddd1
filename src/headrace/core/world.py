"""Who is reading: the rank among ranks, and the worker among one rank's partitioning workers."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """A frozen description of one consumer of the data.

    ``rank``/``world_size`` are the distributed ranks; ``worker``/``num_workers`` split one rank's
    data further between independent copies of the pipeline (as ``torch.utils.data.DataLoader``
    worker processes do). headrace's own :class:`~headrace.Loader` threads never split the data, so
    its output does not depend on its worker count.

    >>> World(rank=1, world_size=4).consumer, World(rank=1, world_size=4).consumers
    (1, 4)
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank} world_size={self.world_size}")
        if self.num_workers < 1 or not 0 <= self.worker < self.num_workers:
            raise ValueError(f"need 0 <= worker < num_workers, got worker={self.worker} num_workers={self.num_workers}")

    @property
    def consumer(self) -> int:
        """This consumer's index among all ``consumers`` (rank-major)."""
        return self.rank * self.num_workers + self.worker

    @property
    def consumers(self) -> int:
        """How many independent pipelines split the data."""
        return self.world_size * self.num_workers

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> World:
        """The world from explicit values, else torch.distributed, else JAX, else the environment.

        Reads ``RANK``/``WORLD_SIZE`` (torchrun), then ``SLURM_PROCID``/``SLURM_NTASKS``. torch and
        JAX are only asked when the program has already imported them.
        """
        detected = _from_torch() or _from_jax() or _from_env()
        r = rank if rank is not None else detected[0]
        w = world_size if world_size is not None else detected[1]
        if rank is not None and world_size is None and detected == (0, 1):
            w = max(w, r + 1)
        return cls(rank=r, world_size=w)


def _from_torch() -> tuple[int, int] | None:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return int(dist.get_rank()), int(dist.get_world_size())


def _from_jax() -> tuple[int, int] | None:
    jax = sys.modules.get("jax")
    if jax is None:
        return None
    try:
        count = int(jax.process_count())
    except Exception:  # JAX present but no backend: not a multi-process JAX job
        return None
    return (int(jax.process_index()), count) if count > 1 else None


def _from_env() -> tuple[int, int]:
    for rank_var, size_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_var in os.environ and size_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[size_var])
    return 0, 1
