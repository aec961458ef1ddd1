"""PyTorch: batches as tensors, a ``torch.utils.data.IterableDataset`` view, and a device prefetcher.

Integer columns (token ids, labels, positions, masks) become ``int64`` tensors in every torch path
(:func:`to_tensors`, :class:`IterableDataset`, :class:`DevicePrefetcher`): what ``F.cross_entropy``,
embeddings and Hugging Face models take. The numpy batches of :class:`~headrace.Loader` keep their
compact dtypes (``int32`` token ids move half the bytes); ``int_dtype=None`` keeps them in torch too.

:class:`IterableDataset` is a headrace :class:`~headrace.Dataset` as PyTorch sees datasets. Under
``DataLoader(view, batch_size=None, num_workers=N)`` each worker process reads its own part (the world
is ranks × workers), and its ``state_dict()``/``load_state_dict()`` are what ``torchdata``'s
``StatefulDataLoader`` saves per worker, so ``StatefulDataLoader`` resumes exactly. Without a
``batch()`` stage it yields rows of tensors, for loaders that batch themselves:
``DataLoader(view, batch_size=16)`` stacks them into ``[16, seq_len]`` tensors. Each new pass over the
view (each ``for batch in loader``) starts the next epoch, persistent workers or not.

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

from headrace import agree
from headrace.core.errors import StateError
from headrace.core.world import World
from headrace.loader import Loader
from headrace.pipeline import Dataset

KEEP_INT32 = frozenset({"cu_seqlens"})  # flash-attention's varlen kernels take int32 offsets, nothing else
MAX_WORKERS = 1024  # DataLoader workers whose next epoch the view keeps (in memory shared with them)


def to_tensors(item: Any, pin_memory: bool = False, *, int_dtype: torch.dtype | None = torch.int64) -> Any:
    """numpy arrays (in dicts and lists) as ``torch.Tensor`` s; strings and other objects as they are.

    Integer arrays become ``int_dtype`` (``int64``: what losses, embeddings and Hugging Face models
    take), except ``uint8`` ones (image pixels) and a ``cu_seqlens`` column (flash-attention wants
    ``int32``); ``int_dtype=None`` keeps numpy's dtype, sharing its memory where numpy allows.
    ``pin_memory`` pins the tensors (page-locked, for fast async copies).

    >>> import numpy as np
    >>> batch = to_tensors({"input_ids": np.arange(4, dtype=np.int32).reshape(2, 2), "text": np.array(["a", "b"])})
    >>> batch["input_ids"].dtype, batch["text"]
    (torch.int64, ['a', 'b'])
    >>> to_tensors(np.arange(2, dtype=np.int32), int_dtype=None).dtype
    torch.int32
    """
    return _tensors(item, pin_memory, int_dtype, "")


def _tensors(item: Any, pin_memory: bool, int_dtype: torch.dtype | None, name: str) -> Any:
    if isinstance(item, np.ndarray):
        if item.dtype.kind in "biufc":
            tensor = torch.from_numpy(item if item.flags.writeable else item.copy())
            if int_dtype is not None and _widened(item.dtype, name):
                tensor = tensor.to(int_dtype)
            return tensor.pin_memory() if pin_memory and torch.cuda.is_available() else tensor
        return item.tolist() if item.dtype.kind in "OUS" else item
    if isinstance(item, np.generic):
        return item.item()
    if isinstance(item, Mapping):
        return {k: _tensors(v, pin_memory, int_dtype, str(k)) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(_tensors(v, pin_memory, int_dtype, name) for v in item)
    return item


def _widened(dtype: np.dtype[Any], name: str) -> bool:
    """Whether an integer column of ``dtype`` named ``name`` becomes ``int_dtype``."""
    return dtype.kind in "iu" and dtype != np.uint8 and name not in KEEP_INT32


def row_tensors(row: Mapping[str, Any], int_dtype: torch.dtype | None = torch.int64) -> dict[str, Any]:
    """A row of :class:`~headrace.Loader` (Python lists for sequences) with its number lists as tensors,
    so that ``default_collate`` stacks rows into ``[batch, seq_len]`` tensors instead of transposing lists.

    Lists of ints become ``int_dtype`` tensors (``int64`` also for ``None``: a Python list has no compact
    dtype), lists of floats ``float32``; strings, ragged or empty lists and scalars stay as they are.

    >>> row_tensors({"input_ids": [5, 6, 7], "text": "hi", "id": 3})
    {'input_ids': tensor([5, 6, 7]), 'text': 'hi', 'id': 3}
    """
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, np.ndarray | np.generic):
            out[name] = _tensors(value, False, int_dtype, name)
            continue
        if not isinstance(value, list) or not value or isinstance(value[0], str | bytes | dict):
            out[name] = value
            continue
        try:
            tensor = torch.tensor(value)
        except (TypeError, ValueError, RuntimeError):  # ragged, mixed or not numbers: the collator decides
            out[name] = value
            continue
        if tensor.dtype == torch.int64 and name in KEEP_INT32:
            tensor = tensor.to(torch.int32)
        elif tensor.dtype == torch.int64 and int_dtype is not None:
            tensor = tensor.to(int_dtype)
        out[name] = tensor
    return out


class IterableDataset(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """``dataset`` as a PyTorch iterable dataset, split between ranks and ``DataLoader`` workers.

    Each ``DataLoader`` worker is one consumer of the world (``rank * num_workers + worker``), so the
    batches differ with the worker count — as with any sharded ``IterableDataset`` — but are the same
    for the same world. ``threads``/``prefetch`` are the inner :class:`~headrace.Loader`'s (headrace's
    own worker threads, inside each ``DataLoader`` worker). ``tensors=False`` yields numpy batches (and
    the Loader's rows as they are); ``int_dtype`` is what integer columns become (``int64``; ``None``
    keeps the compact dtypes, see :func:`to_tensors`). Without a ``batch()`` stage the view yields rows
    whose sequences are tensors (:func:`row_tensors`), for ``DataLoader(view, batch_size=16)``.

    Epochs: each new pass over the view starts the next epoch (its own shard order and shuffles), in
    this process and in ``DataLoader`` workers, persistent or not: the next epoch of each worker is kept
    in memory shared with the workers, and a pass resumed from a state continues that state's epoch.
    ``set_epoch(e)`` (``DistributedSampler``'s convention) makes the next pass epoch ``e``.

    ``uneven`` is the inner loader's (:class:`~headrace.Loader`); by default ``"off"`` when there is one
    rank (``DataLoader`` workers of one process need no equal counts: none of their rows is dropped to
    equalize them) and the Loader's default otherwise. With several ranks, ``DataLoader`` worker processes
    have no process group: for a pipeline whose counts can differ they agree through files
    (:class:`~headrace.agree.FileAgreement`) in a folder named by rank 0 when the view is made (so make the
    view on every rank, after ``init_process_group``): on one machine a temporary folder of this user's, on
    several machines one under ``HEADRACE_AGREE_DIR`` on a file system they share
    (:func:`~headrace.agree.job_folder`).

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
        int_dtype: torch.dtype | None = torch.int64,
        uneven: str | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.rank, self.world_size, self.remainder = rank, world_size, remainder
        self.threads, self.prefetch, self.tensors = threads, prefetch, tensors
        self.history, self.int_dtype, self.uneven = history, int_dtype, uneven
        self._loader: Loader | None = None
        self._pending: dict[str, Any] | None = None  # a state loaded before the next iteration
        self._yielded = 0  # items yielded in this process since the epoch began (restored with the state)
        self._states: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(maxlen=max(1, history))
        # The epoch of the next pass, per process: [0] this one, [1 + w] DataLoader worker w. Shared memory, so
        # workers started afresh for each pass (persistent_workers=False) go on from their predecessors' epoch.
        self._next_epochs = torch.zeros(1 + MAX_WORKERS, dtype=torch.int64).share_memory_()
        self._passes = torch.zeros(1 + MAX_WORKERS, dtype=torch.int64).share_memory_()  # passes begun, the same way
        self._agree_folder = self._agreement_folder()

    def _agreement_folder(self) -> str | None:
        """Where the ``DataLoader`` workers of several ranks agree (see the class docstring), drawn now, in the
        main process of every rank; ``None`` where they need not or cannot (then the Loader says so)."""
        dist = torch.distributed
        ranks = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not ranks or self.uneven == "off" or self.dataset.equal_counts:
            return None
        folder = agree.job_folder(agree.shared_nonce(), dist.get_world_size())
        return None if folder is None else str(folder)

    def _world(self) -> World:
        world = World.detect(self.rank, self.world_size)
        info = torch.utils.data.get_worker_info()
        if info is not None:
            world = replace(world, worker=info.id, num_workers=info.num_workers)
        return world

    def _slot(self) -> int:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return 0
        if info.num_workers > MAX_WORKERS:
            raise ValueError(f"headrace IterableDataset: {info.num_workers} DataLoader workers, more than the "
                             f"{MAX_WORKERS} whose epochs it keeps; use fewer (or headrace threads=)")  # fmt: skip
        return 1 + info.id

    def loader(self) -> Loader:
        """The inner :class:`~headrace.Loader` for this process's part of the world."""
        if self._loader is None:
            world = self._world()
            uneven = self.uneven or ("off" if world.world_size == 1 else "stop")
            self._loader = Loader(self.dataset, num_workers=self.threads, prefetch=self.prefetch,
                                  remainder=self.remainder, world=world, uneven=uneven)  # fmt: skip
            self._loader.set_epoch(int(self._next_epochs[self._slot()]))
        return self._loader

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` at the next pass (``DistributedSampler``'s convention); without it each new pass
        starts the epoch after the last one."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._next_epochs.fill_(epoch)
        self._pending, self._yielded = None, 0
        if self._loader is not None:
            self._loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        # Not a generator itself: where the pass starts is decided now, so that a state_dict() taken before the
        # first item (StatefulDataLoader takes one as the iterator is made) already names this pass's epoch.
        loader, slot = self.loader(), self._slot()
        if self._pending is not None:
            loader.load_state_dict(self._pending["loader"])
            self._yielded = int(self._pending["yielded"])
            self._pending = None
        else:
            loader.set_epoch(int(self._next_epochs[slot]))
            self._yielded = 0
        self._next_epochs[slot] = loader.epoch + 1
        passes = int(self._passes[slot])
        self._passes[slot] = passes + 1
        world = loader.world
        if world.world_size > 1 and world.num_workers > 1 and self._agree_folder is not None:
            # every worker of every rank makes the same passes over the view: one run of calls each
            loader.agreement = agree.FileAgreement(self._agree_folder, world.consumers, world.consumer,
                                                   run=f"e{loader.epoch}-p{passes}")  # fmt: skip
        self._states.clear()
        return self._items(loader)

    def _items(self, loader: Loader) -> Iterator[Any]:
        rows = not self.dataset.batched
        for item in loader:
            self._yielded += 1
            if self.history:
                self._states.append((self._yielded, loader.state_dict()))
            if not self.tensors:
                yield item
            elif rows and isinstance(item, Mapping):
                yield row_tensors(item, self.int_dtype)
            else:
                yield to_tensors(item, int_dtype=self.int_dtype)
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
    moves nothing). Integer columns arrive as ``int_dtype`` (``int64``; ``None``: as numpy had them,
    see :func:`to_tensors`); on CUDA the compact ids are copied and widened on the device (half the
    bytes over the bus). ``state_dict()``/``load_state_dict()`` pass through to ``batches`` (a
    :class:`~headrace.Loader`), taken for the last batch handed out.

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(6)))
    >>> batches = DevicePrefetcher(hr.Loader(hr.open(path).batch(3)), device="cpu")
    >>> [b["id"].tolist() for b in batches]
    [[0, 1, 2], [3, 4, 5]]
    """

    def __init__(
        self,
        batches: Iterable[Any],
        device: str | torch.device = "cuda",
        prefetch: int = 2,
        *,
        int_dtype: torch.dtype | None = torch.int64,
    ) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.batches, self.device, self.prefetch = batches, torch.device(device), prefetch
        self.int_dtype = int_dtype
        self._state: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _move(self, batch: Any, stream: Any) -> Any:
        cuda = self.device.type == "cuda"
        if not cuda:
            return to_tensors(batch, int_dtype=self.int_dtype)
        host = to_tensors(batch, pin_memory=True, int_dtype=None)  # compact over the bus, widened on the device
        with torch.cuda.stream(stream):
            return _widen(_apply(host, lambda t: t.to(self.device, non_blocking=True)), self.int_dtype, "")

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


def _widen(item: Any, int_dtype: torch.dtype | None, name: str) -> Any:
    """Integer tensors as ``int_dtype``, by :func:`to_tensors`' rule (on whatever device they are)."""
    if int_dtype is None:
        return item
    if isinstance(item, torch.Tensor):
        integer = not item.dtype.is_floating_point and not item.dtype.is_complex and item.dtype != torch.bool
        keep = item.dtype == torch.uint8 or name in KEEP_INT32
        return item.to(int_dtype) if integer and not keep else item
    if isinstance(item, Mapping):
        return {k: _widen(v, int_dtype, str(k)) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(_widen(v, int_dtype, name) for v in item)
    return item


def _apply(item: Any, fn: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return fn(item)
    if isinstance(item, Mapping):
        return {k: _apply(v, fn) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(_apply(v, fn) for v in item)
    return item


__all__ = ["DevicePrefetcher", "IterableDataset", "row_tensors", "to_tensors"]
