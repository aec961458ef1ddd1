"""Hugging Face ``transformers.Trainer``: a headrace dataset as ``train_dataset``, resumed exactly from checkpoints.

:func:`for_trainer` returns the two things a ``Trainer`` takes: a :class:`TrainerDataset` (the rows of a
headrace :class:`~headrace.Dataset`, which the Trainer's collator batches) and a :class:`HeadraceCallback`
that saves the data position with every Trainer checkpoint. ``trainer.train(resume_from_checkpoint=...)``
then trains on exactly the rows the uninterrupted run would have used next.

How: the Trainer's ``DataLoader`` (and accelerate's wrapper around it) read a batch ahead of the training
step, so the position of the last row *read* is not the one to save. The stream keeps the loader state
after each row it hands out until the Trainer has trained on it; after each optimizer step the callback
takes the state after ``steps × train_batch_size × gradient_accumulation_steps`` rows and puts it in the
Trainer's own state (``trainer_state.json``, under ``stateful_callbacks["headrace"]``), which every
checkpoint saves and every resume loads. The Trainer must not skip batches itself on resume: the callback
sets ``ignore_data_skip=True``.

The stream is endless: epoch after epoch, as a :class:`~headrace.Loader` iterated again goes on into the
next epoch (a batch may hold the last rows of one epoch and the first of the next), and training stops
at ``max_steps``.

>>> import headrace as hr, tempfile, os
>>> from headrace.integrations.transformers import for_trainer
>>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
>>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(5)))
>>> train_dataset, callback = for_trainer(hr.open(path))
>>> rows = iter(train_dataset)
>>> [next(rows)["id"] for _ in range(7)]  # epoch 1 follows epoch 0
[0, 1, 2, 3, 4, 0, 1]
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.utils.data
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from headrace.core.errors import StateError
from headrace.core.world import World
from headrace.integrations.torch import to_tensors
from headrace.loader import Loader
from headrace.pipeline import Dataset

STATE_KEY = "headrace"  # in TrainerState.stateful_callbacks; not a class name, so the Trainer never rebuilds it


class TrainerDataset(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """The rows of ``dataset``, epoch after epoch without end, for ``Trainer(train_dataset=...)``.

    One process reads everything (the Trainer's ``dataloader_num_workers`` must be 0); ``threads`` and
    ``prefetch`` are the inner :class:`~headrace.Loader`'s worker threads and read-ahead. Integer arrays
    come out as ``int64`` tensors (what embeddings and losses take), other numeric arrays as tensors,
    and lists and strings as they are, for the Trainer's collator. It has no ``set_epoch``: the Trainer
    counts epochs from 0 again on resume, the loader state knows the real one.

    :meth:`state_at` is the loader state after the ``rows``-th row handed out since :meth:`restart`
    (kept for every ``every``-th row: the callback asks at whole optimizer steps only).

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(10)))
    >>> stream = TrainerDataset(hr.open(path))
    >>> rows = iter(stream)
    >>> [next(rows)["id"] for _ in range(6)]  # a consumer that reads ahead of what it has used
    [0, 1, 2, 3, 4, 5]
    >>> state = stream.state_at(4)  # it has used 4 rows
    >>> again = TrainerDataset(hr.open(path))
    >>> again.restart(state)
    >>> rows = iter(again)
    >>> [next(rows)["id"] for _ in range(3)]
    [4, 5, 6]
    """

    def __init__(self, dataset: Dataset, *, threads: int = 0, prefetch: int = 2) -> None:
        super().__init__()
        self.loader = Loader(dataset, num_workers=threads, prefetch=prefetch, world=World())
        self._origin = self.loader.state_dict()
        self._rows = 0  # handed out since the last restart
        self._every = 1
        self._states: collections.deque[tuple[int, dict[str, Any]]] = collections.deque([(0, self._origin)])

    def __iter__(self) -> Iterator[Any]:
        empty = 0  # passes in a row that yielded nothing: the rest of a restored epoch may be empty, not two
        while empty < 2:
            before = self._rows
            for row in self.loader:
                self._rows += 1
                if self._rows % self._every == 0:
                    self._states.append((self._rows, self.loader.state_dict()))
                yield _tensors(row)
            empty = empty + 1 if self._rows == before else 0

    def restart(self, state: dict[str, Any] | None = None, every: int = 1) -> None:
        """Go on from ``state`` (a :meth:`state_at` result) at the next iteration (``None``: from where this
        stream began), keeping the state of every ``every``-th row from there."""
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        state = state if state is not None else self._origin
        self.loader.load_state_dict(state)
        self._rows, self._every = 0, every
        self._states = collections.deque([(0, state)])

    def state_at(self, rows: int) -> dict[str, Any]:
        """The loader state right after the ``rows``-th row since :meth:`restart`; states before it are
        forgotten (a consumer asks for its positions in order)."""
        while len(self._states) > 1 and self._states[0][0] < rows:
            self._states.popleft()
        count, state = self._states[0]
        if count != rows:
            raise StateError(
                f"no loader state for row {rows} ({self._rows} rows handed out since the restart, the state of every "
                f"{self._every}-th kept, from row {count} on): is this stream the Trainer's train_dataset?"
            )
        return state


class HeadraceCallback(TrainerCallback):
    """Saves the position of ``stream`` (the ``Trainer``'s ``train_dataset``) with every checkpoint and
    restores it on ``trainer.train(resume_from_checkpoint=...)``.

    Pass it in ``Trainer(callbacks=[...])``: at the end of the Trainer's ``__init__`` it sets
    ``args.ignore_data_skip = True`` (the Trainer must not skip the trained batches itself: the position
    is restored already) and checks the arguments: one process, ``dataloader_num_workers=0``, no
    ``auto_find_batch_size``. A checkpoint without a headrace state is refused on resume.

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write('{"id": 0}\\n')
    >>> callback = HeadraceCallback(TrainerDataset(hr.open(path)))
    >>> callback.on_init_end(TrainingArguments(dataloader_num_workers=2, report_to=[]), TrainerState(), None)
    Traceback (most recent call last):
    ...
    ValueError: HeadraceCallback: dataloader_num_workers=2, ...
    """

    def __init__(self, stream: TrainerDataset) -> None:
        self.stream = stream
        self._start_step = 0  # the global step this train() call began at
        self._rows_per_step = 0

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        _check(args)
        args.ignore_data_skip = True

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        _check(args)
        if not args.ignore_data_skip:
            raise ValueError(
                "HeadraceCallback: the Trainer would skip the batches already trained on again, after headrace "
                "restored the position: pass the callback in Trainer(callbacks=[...]) (it then sets "
                "ignore_data_skip=True) or set TrainingArguments(ignore_data_skip=True)"
            )
        loader = kwargs.get("train_dataloader")
        if loader is not None and getattr(loader, "dataset", self.stream) is not self.stream:
            raise ValueError(
                "HeadraceCallback: the Trainer's train_dataset is not this callback's stream; with "
                "train_dataset, callback = for_trainer(ds), pass "
                "Trainer(train_dataset=train_dataset, callbacks=[callback])"
            )
        if loader is not None:
            _private_seed(loader)
        saved = None
        if state.global_step > 0:  # resumed: the Trainer loaded trainer_state.json of the checkpoint
            saved = _stateful(state).get(STATE_KEY)
            if not isinstance(saved, dict) or saved.get("step") != state.global_step or "loader" not in saved:
                raise StateError(
                    f"the checkpoint of step {state.global_step} has no headrace data position (its "
                    f"trainer_state.json has no stateful_callbacks[{STATE_KEY!r}] for that step): it was not saved "
                    "with HeadraceCallback. Resume from a checkpoint that was, or start afresh"
                )
        self._start_step = state.global_step
        self._rows_per_step = args.train_batch_size * args.gradient_accumulation_steps
        self.stream.restart(saved["loader"] if saved is not None else None, every=self._rows_per_step)
        self._record(state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._record(state)

    def _record(self, state: TrainerState) -> None:
        # Every step, so the state is in place for any save (Trainer saves after on_step_end).
        rows = (state.global_step - self._start_step) * self._rows_per_step
        _stateful(state)[STATE_KEY] = {"step": state.global_step, "loader": self.stream.state_at(rows)}


def for_trainer(dataset: Dataset, *, threads: int = 0, prefetch: int = 2) -> tuple[TrainerDataset, HeadraceCallback]:
    """``(train_dataset, callback)`` for ``Trainer(train_dataset=train_dataset, callbacks=[callback])``.

    ``dataset`` yields rows (no ``batch()`` stage: the Trainer's collator batches them); set ``max_steps``.

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write('{"id": 0}\\n')
    >>> train_dataset, callback = for_trainer(hr.open(path))
    >>> callback.stream is train_dataset
    True
    """
    if dataset.batched:
        raise ValueError(
            "for_trainer(ds): ds ends in batch(); the Trainer batches rows itself "
            "(per_device_train_batch_size and its data_collator): remove the batch() stage"
        )
    stream = TrainerDataset(dataset, threads=threads, prefetch=prefetch)
    return stream, HeadraceCallback(stream)


def _check(args: TrainingArguments) -> None:
    if args.dataloader_num_workers > 0:
        raise ValueError(
            f"HeadraceCallback: dataloader_num_workers={args.dataloader_num_workers}, but the data position is kept "
            "in the process that reads the rows, and DataLoader worker processes read ahead out of its sight: set "
            "TrainingArguments(dataloader_num_workers=0), and for parallel reading and tokenizing pass "
            "for_trainer(ds, threads=N) (headrace's worker threads)"
        )
    if args.world_size > 1:
        raise ValueError(
            f"HeadraceCallback: {args.world_size} training processes; it keeps the data position of one. For "
            "several ranks, give each its own hr.Loader (or torchdata's StatefulDataLoader over "
            "headrace.integrations.torch.IterableDataset) and save their states"
        )
    if args.auto_find_batch_size:
        raise ValueError(
            "HeadraceCallback: auto_find_batch_size restarts training with another batch size after rows were "
            "read; set per_device_train_batch_size instead"
        )


def _stateful(state: TrainerState) -> dict[str, Any]:
    """``state.stateful_callbacks``: typed as a list, but ``TrainerState.__post_init__`` makes it a dict."""
    if not isinstance(state.stateful_callbacks, dict):
        raise TypeError(f"TrainerState.stateful_callbacks is a {type(state.stateful_callbacks).__name__}, not a dict")
    return state.stateful_callbacks


def _private_seed(loader: Any) -> None:
    # A DataLoader draws a seed for its workers from the global torch RNG when an epoch begins. On resume the
    # Trainer restores that RNG (with ignore_data_skip=True) just before, so the draw would shift the resumed
    # run's dropout masks off the uninterrupted run's. A generator of its own leaves the global RNG alone.
    base = getattr(loader, "base_dataloader", loader)  # accelerate's DataLoaderShard/Dispatcher wrap one
    if isinstance(base, torch.utils.data.DataLoader) and base.generator is None:
        base.generator = torch.Generator()


def _tensors(row: Any) -> Any:
    if isinstance(row, Mapping):
        return {k: _tensors(v) for k, v in row.items()}
    if isinstance(row, np.ndarray) and row.dtype.kind in "iu":
        return torch.from_numpy(row.astype(np.int64))
    if isinstance(row, np.ndarray | np.generic):
        return to_tensors(row)
    return row  # lists, strings, Python numbers: as the collator takes them


__all__ = ["HeadraceCallback", "TrainerDataset", "for_trainer"]
