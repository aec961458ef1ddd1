"""JAX: batches as ``jax.Array`` s laid out by a sharding, placed on the devices ahead of the training step.

:class:`JaxLoader` wraps a :class:`~headrace.Loader`. Each numeric column of a batch becomes one global
``jax.Array`` through ``jax.make_array_from_process_local_data``: on one process the batch is the whole
array; in a multi-process JAX job each process's :class:`~headrace.Loader` reads its own part of the
data (its rank is JAX's process index) and contributes it as its local part. Transfers are issued
``prefetch`` batches ahead (JAX copies asynchronously), and ``state_dict()`` is the state of the last
batch *yielded*, never of the batches placed ahead.

>>> import headrace as hr, tempfile, os, jax
>>> from headrace.integrations.jax import JaxLoader
>>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
>>> _ = open(path, "w").write("".join(f'{{"id": {i}, "name": "r{i}"}}\\n' for i in range(8)))
>>> loader = JaxLoader(hr.Loader(hr.open(path).batch(jax.device_count())))
>>> batch = next(iter(loader))
>>> isinstance(batch["id"], jax.Array), type(batch["name"]).__name__
(True, 'ndarray')
>>> batch["id"].tolist() == list(range(jax.device_count()))
True
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from headrace.loader import Loader

NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: what JAX arrays can hold


def data_sharding(axis: str = "data") -> NamedSharding:
    """The default layout: the batch dimension split over all devices (of all processes), the rest whole.

    >>> data_sharding().spec == PartitionSpec("data")
    True
    """
    return NamedSharding(Mesh(np.array(jax.devices()), (axis,)), PartitionSpec(axis))


class JaxLoader:
    """The batches of ``loader`` as dicts of ``jax.Array`` s laid out by ``sharding``, ``prefetch`` placed ahead.

    ``sharding`` is one ``jax.sharding.Sharding`` for every column, or a mapping from column name to
    sharding (columns it does not name get :func:`data_sharding`); ``None`` is :func:`data_sharding`.
    The batch dimension must divide over the devices it is split across (use a batch size that is a
    multiple of that count, or ``batch(..., drop_last=True)`` for the short last batch). Columns that are
    not numeric (strings, objects) stay numpy arrays. 64-bit columns follow JAX's dtype rules (32-bit
    unless ``jax_enable_x64``).

    ``state_dict()`` is the inner loader's state as of the last batch yielded (prefetched batches are
    neither lost nor repeated on resume); ``load_state_dict()`` passes it to the inner loader. Iterating
    again after a ``break`` continues right after the last batch yielded, as the :class:`~headrace.Loader`
    does. In a multi-process job, import JAX (and call ``jax.distributed.initialize()``) before building
    the :class:`~headrace.Loader`, so that it detects its rank.
    """

    def __init__(
        self, loader: Loader, sharding: Sharding | Mapping[str, Sharding] | None = None, prefetch: int = 2
    ) -> None:
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        if not loader.dataset.batched:
            raise ValueError("JaxLoader needs batches: end the pipeline with .batch(size)")
        self.loader, self.sharding, self.prefetch = loader, sharding, prefetch
        self._default: Sharding | None = None
        self._splits: dict[tuple[Sharding, int], tuple[int, int]] = {}
        self._state: dict[str, Any] | None = None  # None: nothing yielded since the last (re)start

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The inner loader's state as of the last batch yielded: plain JSON, resumable exactly."""
        return self._state if self._state is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a :meth:`state_dict` of this or a plain :class:`~headrace.Loader`)."""
        self.loader.load_state_dict(state)
        self._state = None

    # -- iteration ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._state is not None:  # a previous iteration stopped early: the loader had read ahead of it
            self.loader.load_state_dict(self._state)
        self._state = self.loader.state_dict()
        batches = iter(self.loader)
        ahead: collections.deque[tuple[Any, dict[str, Any]]] = collections.deque()
        failed = False

        def place_next() -> bool:
            nonlocal failed
            if failed:
                return False
            try:
                batch = next(batches, None)
                if batch is None:
                    return False
                ahead.append((self.place(batch), self.loader.state_dict()))
            except Exception as e:  # raised in its turn: the batches before it are still yielded
                ahead.append((e, {}))
                failed = True
            return True

        try:
            while True:
                while len(ahead) <= self.prefetch and place_next():  # `prefetch` stay ahead while the caller computes
                    pass
                if not ahead:
                    break
                placed, state = ahead.popleft()
                if isinstance(placed, Exception):
                    raise placed
                self._state = state
                yield placed
            self._state = None  # the epoch is over: the inner loader's own state says so
        finally:
            batches.close()  # type: ignore[attr-defined]

    def place(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """One batch's numeric columns as global ``jax.Array`` s (this process's rows as its local part)."""
        placed: dict[str, Any] = {}
        for name, value in batch.items():
            array = np.asarray(value)
            if array.dtype.kind not in NUMERIC_KINDS:
                placed[name] = value
                continue
            sharding = self._sharding_for(name)
            self._check_divisible(name, array, sharding)
            try:
                placed[name] = jax.make_array_from_process_local_data(sharding, array)
            except Exception as e:
                e.add_note(f"while placing column {name!r} (shape {array.shape}, {array.dtype}) with {sharding}")
                raise
        return placed

    def _sharding_for(self, column: str) -> Sharding:
        if isinstance(self.sharding, Sharding):
            return self.sharding
        if self.sharding is not None and column in self.sharding:
            return self.sharding[column]
        if self._default is None:
            self._default = data_sharding()
        return self._default

    def _check_divisible(self, column: str, array: np.ndarray, sharding: Sharding) -> None:
        if array.ndim == 0:
            raise ValueError(f"column {column!r} is a scalar, not a batch: JaxLoader needs a batch dimension")
        total, local = self._batch_splits(column, array, sharding)
        if array.shape[0] % local:
            devices = len(sharding.addressable_devices)
            mine = " of this process" if local != total else ""
            raise ValueError(
                f"column {column!r}: a batch of {array.shape[0]} rows does not divide into the {local} equal parts "
                f"that the sharding cuts the batch dimension into on the {devices} devices{mine} ({sharding}). "
                f"Make the batch size a multiple of {local}, or use batch(..., drop_last=True) if only the last "
                "batch of an epoch is short"
            )

    def _batch_splits(self, column: str, array: np.ndarray, sharding: Sharding) -> tuple[int, int]:
        """How many parts ``sharding`` cuts the batch dimension into: overall, and on this process's devices."""
        key = (sharding, array.ndim)
        if key not in self._splits:
            spec = getattr(sharding, "spec", ())
            if len(spec) > array.ndim:
                raise ValueError(
                    f"column {column!r} has {array.ndim} dimension(s) (shape {array.shape}) but the sharding names "
                    f"{len(spec)} ({spec}). Pass sharding={{column: ...}} to give each column its own, e.g. "
                    "PartitionSpec('data') for 1-D columns"
                )
            probe = (sharding.num_devices,) * array.ndim  # every split count divides the device count
            parts = {d: _bounds(i[0]) for d, i in sharding.devices_indices_map(probe).items()}
            local = {parts[d] for d in sharding.addressable_devices}
            self._splits[key] = (len(set(parts.values())), len(local))
        return self._splits[key]


def _bounds(index: Any) -> tuple[int | None, int | None]:
    return (index.start, index.stop) if isinstance(index, slice) else (index, index)
