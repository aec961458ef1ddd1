"""PyTorch: batches as tensors, a ``torch.utils.data.IterableDataset`` view, and a device prefetcher.

:class:`IterableDataset` is a headrace :class:`~headrace.Dataset` as PyTorch sees datasets. Under
``DataLoader(view, batch_size=None, num_workers=N)`` each worker process reads its own part (the world
is ranks × workers), and its ``state_dict()``/``load_state_dict()`` are what ``torchdata``'s
``StatefulDataLoader`` saves per worker, so ``StatefulDataLoader`` resumes exactly. Without a
``batch()`` stage it yields rows, for loaders that batch themselves (``transformers.Trainer``).

:class:`DevicePrefetcher` moves the batches of an :class:`~headrace.Loader` (or any iterable of dicts) to
a device ahead of the training step: pinned host memory and non-blocking copies on a side CUDA stream,
so the copy of batch k+1 overlaps the compute of batch k. Its ``state_dict()`` is the state of the last
batch *handed to the caller*, not of the batches it holds ahead.

>>> import headrace as hr, tempfile, os, torch
>>> from headrace.integrations.torch import IterableDataset
>>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
>>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(8)))
>>> view = IterableDataset(hr.open(path).batch(4))
>>> [b["id"].tolist() for b in torch.utils.data.DataLoader(view, batch_size=None)]
[[0, 1, 2, 3], [4, 5, 6, 7]]
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.utils.data

from headrace.core.errors import StateError
from headrace.core.world import World
from headrace.loader import Loader
from headrace.pipeline import Dataset


def to_tensors(item: Any, pin_memory: bool = False) -> Any:
    """numpy arrays (in dicts and lists) as ``torch.Tensor`` s, sharing memory where numpy allows; strings
    and other objects as they are. ``pin_memory`` pins the tensors (page-locked, for fast async copies)."""
    if isinstance(item, np.ndarray):
        if item.dtype.kind in "biufc":
            tensor = torch.from_numpy(item if item.flags.writeable else item.copy())
            return tensor.pin_memory() if pin_memory and torch.cuda.is_available() else tensor
        return item.tolist() if item.dtype.kind in "OUS" else item
    if isinstance(item, np.generic):
        return item.item()
    if isinstance(item, Mapping):
        return {k: to_tensors(v, pin_memory) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(to_tensors(v, pin_memory) for v in item)
    return item


class IterableDataset(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """``dataset`` as a PyTorch iterable dataset, split between ranks and ``DataLoader`` workers.

    Each ``DataLoader`` worker is one consumer of the world (``rank * num_workers + worker``), so the
    batches differ with the worker count — as with any sharded ``IterableDataset`` — but are the same
    for the same world. ``threads``/``prefetch`` are the inner :class:`~headrace.Loader`'s (headrace's
    own worker threads, inside each ``DataLoader`` worker). ``tensors=False`` yields numpy.

    ``state_dict()`` is the state of the items this process (or ``DataLoader`` worker) has yielded;
    ``load_state_dict()`` makes the next iteration continue from there. ``history`` keeps the states of
    the last items yielded, for :meth:`state_at` (loaders that read ahead of the training step).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        remainder: str = "drop",
        threads: int = 0,
        prefetch: int = 2,
        tensors: bool = True,
        history: int = 0,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.rank, self.world_size, self.remainder = rank, world_size, remainder
        self.threads, self.prefetch, self.tensors = threads, prefetch, tensors
        self.history = history
        self._loader: Loader | None = None
        self._pending: dict[str, Any] | None = None  # a state loaded before the next iteration
        self._yielded = 0  # items yielded in this process since the epoch began (restored with the state)
        self._states: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(maxlen=max(1, history))
        self._epoch = 0

    def _world(self) -> World:
        world = World.detect(self.rank, self.world_size)
        info = torch.utils.data.get_worker_info()
        if info is not None:
            world = replace(world, worker=info.id, num_workers=info.num_workers)
        return world

    def loader(self) -> Loader:
        """The inner :class:`~headrace.Loader` for this process's part of the world."""
        if self._loader is None:
            self._loader = Loader(self.dataset, num_workers=self.threads, prefetch=self.prefetch,
                                  remainder=self.remainder, world=self._world())  # fmt: skip
            self._loader.set_epoch(self._epoch)
        return self._loader

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` at the next iteration (``DistributedSampler``'s convention)."""
        self._epoch = epoch
        self._pending, self._yielded = None, 0
        if self._loader is not None:
            self._loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        loader = self.loader()
        if self._pending is not None:
            loader.load_state_dict(self._pending["loader"])
            self._yielded = int(self._pending["yielded"])
            self._pending = None
        self._states.clear()
        for item in loader:
            self._yielded += 1
            if self.history:
                self._states.append((self._yielded, loader.state_dict()))
            yield to_tensors(item) if self.tensors else item
        self._yielded = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON: where this process's yielded items end (and how many it yielded this epoch)."""
        if self._pending is not None:
            return dict(self._pending)
        return {"loader": self.loader().state_dict(), "yielded": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next iteration."""
        if not isinstance(state, Mapping) or "loader" not in state:
            raise StateError("not a headrace IterableDataset state; pass what its state_dict() returned")
        self._pending = {"loader": state["loader"], "yielded": int(state.get("yielded", 0))}
        self._states.clear()

    def state_at(self, yielded: int) -> dict[str, Any]:
        """The state right after the ``yielded``-th item of this epoch, from the last ``history`` items:
        for a consumer (a ``DataLoader`` in the main process, accelerate) that reads ahead of its steps."""
        if yielded == self._yielded and self._loader is not None:
            return self.state_dict()
        for count, state in self._states:
            if count == yielded:
                return {"loader": state, "yielded": count}
        have = [c for c, _ in self._states]
        raise StateError(
            f"no state for item {yielded}: the last {len(have)} states kept cover items {have[:1]}..{have[-1:]}; "
            "raise history= to keep more"
        )


class DevicePrefetcher:
    """The batches of ``batches`` on ``device``, ``prefetch`` of them copied ahead of the caller.

    On CUDA the host tensors are pinned and copied with ``non_blocking=True`` on a side stream; the
    caller's stream waits for the copy only when it takes the batch. On CPU it converts to tensors (and
    moves nothing). ``state_dict()``/``load_state_dict()`` pass through to ``batches`` (a
    :class:`~headrace.Loader`), taken for the last batch handed out.

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(6)))
    >>> batches = DevicePrefetcher(hr.Loader(hr.open(path).batch(3)), device="cpu")
    >>> [b["id"].tolist() for b in batches]
    [[0, 1, 2], [3, 4, 5]]
    """

    def __init__(self, batches: Iterable[Any], device: str | torch.device = "cuda", prefetch: int = 2) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.batches, self.device, self.prefetch = batches, torch.device(device), prefetch
        self._state: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _move(self, batch: Any, stream: Any) -> Any:
        cuda = self.device.type == "cuda"
        host = to_tensors(batch, pin_memory=cuda)
        if not cuda:
            return host
        with torch.cuda.stream(stream):
            return _apply(host, lambda t: t.to(self.device, non_blocking=True))

    def __iter__(self) -> Iterator[Any]:
        stateful = hasattr(self.batches, "state_dict")
        if stateful and self._state is not None:  # after a break: on from the last batch handed out, not
            self.batches.load_state_dict(self._state)  # type: ignore[attr-defined]  # past those held ahead
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        ahead: collections.deque[tuple[Any, Any, dict[str, Any] | None]] = collections.deque()
        it = iter(self.batches)
        exhausted = False
        while True:
            while not exhausted and len(ahead) < self.prefetch:
                try:
                    batch = next(it)
                except StopIteration:
                    exhausted = True
                    break
                moved = self._move(batch, stream)
                event = None
                if cuda:
                    event = torch.cuda.Event()
                    event.record(stream)
                ahead.append((moved, event, self.batches.state_dict() if stateful else None))  # type: ignore[attr-defined]
            if not ahead:
                self._state = None  # the epoch is over: the inner loader's own state is the next epoch's
                return
            moved, event, state = ahead.popleft()
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
                _apply(moved, lambda t: t.record_stream(torch.cuda.current_stream(self.device)))
            self._state = state
            yield moved

    def state_dict(self) -> dict[str, Any]:
        """The inner loader's state as of the last batch handed out."""
        if self._state is not None:
            return self._state
        return self.batches.state_dict()  # type: ignore[attr-defined,no-any-return]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = None
        self.batches.load_state_dict(state)  # type: ignore[attr-defined]


def _apply(item: Any, fn: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return fn(item)
    if isinstance(item, Mapping):
        return {k: _apply(v, fn) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(_apply(v, fn) for v in item)
    return item


__all__ = ["DevicePrefetcher", "IterableDataset", "to_tensors"]
