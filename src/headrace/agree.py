"""Agreement between ranks on how many batches an epoch has, so that every rank yields the same number.

A pipeline that keeps the row count (open, shuffle, map, batch) gives every rank the same number of
batches by construction. One that changes it (``pack``, ``filter``, ``mix``, a batched ``map``, records
skipped as malformed) cannot know its count ahead, and ranks differ by a few batches at the end of an
epoch: a DDP job then hangs in the first collective after the shortest rank stops. So before each batch,
the :class:`~headrace.Loader` of every rank says whether it has one, in one small sum over the ranks
(:meth:`Agreement.count`), and all ranks act on the same answer:

- ``uneven="stop"`` (the default): when any rank has run out, every rank ends the epoch there (the
  longer ranks' last batches are dropped, as ``remainder="drop"`` drops rows);
- ``uneven="pad"``: the ranks that ran out repeat their part of the epoch from its start until the last
  rank ends (as ``remainder="pad"`` repeats rows);
- ``uneven="off"``: no agreement (a loader iterated on one rank only, such as an evaluation on rank 0).

The sum goes over ``torch.distributed`` (its own gloo group, so it never interleaves with the model's
NCCL collectives), over JAX's processes, or over files in a shared folder (:class:`FileAgreement`, for
consumers that have no process group, such as ``DataLoader`` worker processes).

>>> agreement = FileAgreement(__import__("tempfile").mkdtemp(), consumers=1, consumer=0)
>>> agreement.count(1), agreement.count(0)
(1, 0)
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, Protocol

from headrace.core.errors import HeadraceError
from headrace.core.world import World

POLICIES = ("stop", "pad", "off")

log = logging.getLogger("headrace")


class Agreement(Protocol):
    """A sum over all consumers, called by every consumer in the same order (one call per batch)."""

    consumers: int

    def count(self, have: int) -> int:
        """The sum of ``have`` (0 or 1: whether this consumer has a next batch) over all consumers."""
        ...


class AgreementError(HeadraceError):
    """The consumers could not agree (one of them is gone, or the folder is not shared)."""


class TorchAgreement:
    """The sum over ``torch.distributed``, in a gloo group of its own (created once per process and reused)."""

    _groups: ClassVar[dict[tuple[int, int], Any]] = {}

    def __init__(self, consumers: int) -> None:
        import torch
        import torch.distributed as dist

        self.consumers = consumers
        self._torch, self._dist = torch, dist
        self._group = self.group(consumers)

    @classmethod
    def group(cls, consumers: int) -> Any:
        """The gloo group of this process group's ranks, created once (a collective: every rank creates it at
        the same point, its first agreeing loader) and kept while the default process group lives."""
        import torch.distributed as dist

        key = (id(dist.group.WORLD), consumers)  # a new init_process_group() after a destroy: a new group
        if key not in cls._groups:
            cls._groups[key] = dist.new_group(backend="gloo")
        return cls._groups[key]

    def count(self, have: int) -> int:
        value = self._torch.tensor([have], dtype=self._torch.int64)
        try:
            self._dist.all_reduce(value, op=self._dist.ReduceOp.SUM, group=self._group)
        except RuntimeError as e:
            raise AgreementError(
                f"the {self.consumers} ranks could not agree on the next batch ({e}). Every rank must iterate an "
                "agreeing loader in step: a loader iterated on some ranks only (an evaluation on rank 0) needs "
                "Loader(uneven='off')"
            ) from e
        return int(value.item())


class JaxAgreement:
    """The sum over JAX's processes (``multihost_utils.process_allgather``)."""

    def __init__(self, consumers: int) -> None:
        from jax.experimental import multihost_utils

        self.consumers = consumers
        self._gather = multihost_utils.process_allgather

    def count(self, have: int) -> int:
        import numpy as np

        return int(np.asarray(self._gather(np.array([have], dtype=np.int32))).sum())


class FileAgreement:
    """The sum over files in a folder every consumer can see (a local folder for one machine's processes,
    a shared file system across machines).

    Consumer ``consumer`` of ``consumers`` writes one small file per call and waits until every other
    consumer has written its own for the same call; ``timeout`` seconds without one raises an
    :class:`AgreementError` naming the consumers that did not answer. Each call's files are removed by
    the consumer that wrote them one call later, so the folder holds at most two calls' files.
    Use a fresh folder (or ``run=``) per run: files of another run with the same names would be read.

    >>> import tempfile
    >>> FileAgreement(tempfile.mkdtemp(), consumers=1, consumer=0).count(1)
    1
    """

    def __init__(self, folder: str | os.PathLike[str], consumers: int, consumer: int, *, run: str = "",
                 timeout: float = 1800.0) -> None:  # fmt: skip
        if not 0 <= consumer < consumers:
            raise ValueError(f"need 0 <= consumer < consumers, got consumer={consumer} consumers={consumers}")
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # this user's
        self.consumers, self.consumer, self.timeout = consumers, consumer, timeout
        self._prefix = f"agree{('-' + run) if run else ''}"
        self._calls = 0

    def _path(self, call: int, consumer: int) -> Path:
        return self.folder / f"{self._prefix}.{call}.{consumer}"

    def count(self, have: int) -> int:
        call, self._calls = self._calls, self._calls + 1
        mine = self._path(call, self.consumer)
        part = mine.with_name(mine.name + ".part")
        part.write_text(str(int(have)))
        os.replace(part, mine)  # whole or absent: a reader never sees half a file
        total, waiting, pause = 0, set(range(self.consumers)), 0.0005
        deadline = time.monotonic() + self.timeout
        while waiting:
            for other in sorted(waiting):
                try:
                    total += int(self._path(call, other).read_text())
                except FileNotFoundError:
                    continue
                waiting.discard(other)
            if waiting:
                if time.monotonic() > deadline:
                    raise AgreementError(
                        f"{self.folder}: consumer(s) {sorted(waiting)} of {self.consumers} did not answer call {call} "
                        f"within {self.timeout:g} s (a process died, or the folder is not shared between them)"
                    )
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        if call >= 1:  # every consumer wrote its file of this call, so it has read all of the previous one's
            self._path(call - 1, self.consumer).unlink(missing_ok=True)
        return total


def detect(world: World) -> Agreement | None:
    """The agreement for ``world``'s ranks: torch.distributed, else JAX, else ``None`` (nothing to agree over).

    Only frameworks the program has already imported are asked. A world of one rank needs none.
    """
    if world.consumers == 1:
        return None
    if world.num_workers > 1:  # worker processes of one rank: no process group reaches them
        return None
    dist = sys.modules.get("torch.distributed")
    if (
        dist is not None
        and dist.is_available()
        and dist.is_initialized()
        and (dist.get_world_size(), dist.get_rank()) == (world.world_size, world.rank)
    ):
        return TorchAgreement(world.world_size)
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            if (jax.process_count(), jax.process_index()) == (world.world_size, world.rank):
                return JaxAgreement(world.world_size)
        except Exception:  # JAX present but no backend
            pass
    return None


def job_folder(nonce: str, world_size: int) -> Path | None:
    """The folder of one view's :class:`FileAgreement` between ``DataLoader`` worker processes of several ranks
    (they have no process group), named by ``nonce`` (:func:`shared_nonce`: fresh for each view of each launch,
    so that no file of another view or an earlier launch is ever read); ``None`` where there is none.

    ``HEADRACE_AGREE_DIR/nonce`` (a file system shared by the nodes, for several machines); without it, on one
    machine (``LOCAL_WORLD_SIZE`` or ``SLURM_NNODES`` says so), a folder of this user's in the temporary directory.

    >>> str(job_folder("abc", 1)).endswith("abc")
    True
    """
    env = os.environ
    base = env.get("HEADRACE_AGREE_DIR")
    if base:
        return Path(base) / nonce
    if env.get("LOCAL_WORLD_SIZE") == str(world_size) or env.get("SLURM_NNODES") == "1" or world_size == 1:
        return Path(tempfile.gettempdir()) / f"headrace-agree-{os.getuid()}" / nonce
    return None


def shared_nonce() -> str:
    """A random name drawn on rank 0 and sent to every rank over ``torch.distributed`` (a collective: every rank
    calls it at the same point), as 16 random bytes in a tensor of a gloo group, never a pickle."""
    import torch
    import torch.distributed as dist

    group = TorchAgreement.group(dist.get_world_size())
    value = torch.tensor(list(os.urandom(16)) if dist.get_rank() == 0 else [0] * 16, dtype=torch.int64)
    dist.broadcast(value, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return bytes(int(v) for v in value.tolist()).hex()


_warned: set[tuple[int, int]] = set()


def warn_alone(world: World) -> None:
    """Say once per world that the ranks cannot agree (no process group): counts may differ at the epoch's end."""
    key = (world.world_size, world.num_workers)
    if key not in _warned:
        _warned.add(key)
        log.warning(
            "headrace: %d consumers (rank %d of %d, worker %d of %d) but no process group to agree over "
            "(torch.distributed not initialized, no JAX processes): a pipeline that changes the row count "
            "(pack, filter, mix, batched map, skipped records) can give ranks different batch counts. Call "
            "torch.distributed.init_process_group() before iterating; for DataLoader workers on several "
            "machines set HEADRACE_AGREE_DIR to a shared folder; or pass Loader(agreement=FileAgreement(...)), "
            "or uneven='off' to silence this",
            world.consumers, world.rank, world.world_size, world.worker, world.num_workers,
        )  # fmt: skip


__all__ = [
    "POLICIES",
    "Agreement",
    "AgreementError",
    "FileAgreement",
    "JaxAgreement",
    "TorchAgreement",
    "detect",
    "job_folder",
]
