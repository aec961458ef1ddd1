"""Hugging Face ``transformers.Trainer``: headrace streams as ``train_dataset`` and ``eval_dataset``, resumed exactly.

:func:`for_trainer` returns the two things a ``Trainer`` takes for training: a :class:`TrainerDataset`
(the rows of a headrace :class:`~headrace.Dataset`, which the Trainer's collator batches) and a
:class:`HeadraceCallback` that saves the data position with every Trainer checkpoint.
``trainer.train(resume_from_checkpoint=...)`` then trains on exactly the rows the uninterrupted run would
have used next. :func:`for_eval` returns an :class:`EvalDataset`: one pass over its rows, the same rows
every evaluation, apart from the training position.

How: the Trainer's ``DataLoader`` (and accelerate's wrapper around it) read batches ahead of the training
step, so the position of the last row *read* is not the one to save. The stream keeps the loader state
after each row it hands out until the Trainer has trained on it; after each optimizer step the callback
takes the state after ``steps × rows per step`` rows and puts it in the Trainer's own state
(``trainer_state.json``, ``stateful_callbacks["headrace"]``, which every checkpoint saves and every rank
loads on resume). The Trainer must not skip batches itself on resume: the callback sets
``ignore_data_skip=True``.

Several processes (``torchrun``, ``accelerate launch``; DDP or FSDP): each rank reads its own part of the
data, the ranks agree on where each epoch ends (:mod:`headrace.agree`: every rank yields the same rows per
step), and before a checkpoint the ranks' positions are gathered (as JSON, over ``torch.distributed``) into
the ``trainer_state.json`` rank 0 writes: ``{"step", "world_size", "ranks": [one loader state per rank]}``.
A resume on the same number of ranks gives each rank its own position; on another number, pipelines in a
global order (``shuffle(buffer_size=None)`` on indexed data, per-row maps) continue the global order there
(elastic), others refuse, saying why. accelerate must not dispatch batches from rank 0 (its default for
iterable datasets): pass ``for_trainer(ds, args=training_args)``, which sets
``accelerator_config.dispatch_batches=False``, or set it yourself.

``dataloader_num_workers``, ``dataloader_prefetch_factor``: DataLoader worker processes would read ahead
out of sight of the position, so the callback moves them onto headrace's own worker threads (tokenizers
release the GIL) and read-ahead, and sets the DataLoader's to 0/None; the rows are the same for any
worker count. ``dataloader_pin_memory`` works as it is (the DataLoader pins in the main process).

The training stream is endless: epoch after epoch, as a :class:`~headrace.Loader` iterated again goes on
into the next epoch (a batch may hold the last rows of one epoch and the first of the next), and training
stops at ``max_steps``.

>>> import headrace as hr, tempfile, os
>>> from headrace.integrations.transformers import for_trainer
>>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
>>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(5)))
>>> train_dataset, callback = for_trainer(hr.open(path))
>>> train_dataset.restart()  # what the callback does when training begins
>>> rows = iter(train_dataset)
>>> [next(rows)["id"] for _ in range(7)]  # epoch 1 follows epoch 0
[0, 1, 2, 3, 4, 0, 1]
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.utils.data
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from headrace.core.errors import StateError
from headrace.core.world import World
from headrace.integrations.torch import to_tensors
from headrace.loader import Loader
from headrace.pipeline import Dataset

STATE_KEY = "headrace"  # in TrainerState.stateful_callbacks; not a class name, so the Trainer never rebuilds it

log = logging.getLogger("headrace")


class TrainerDataset(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """The rows of ``dataset`` for this rank, epoch after epoch without end, for ``Trainer(train_dataset=...)``.

    Its :class:`HeadraceCallback` starts it (:meth:`restart`) when training begins, on the rank's own part of
    the data (the world ``torch.distributed`` or the environment describe); iterated before, it refuses
    (a training stream never ends: an evaluation set is :func:`for_eval`'s). ``threads``/``prefetch`` are the
    inner :class:`~headrace.Loader`'s worker threads and read-ahead (rows); ``None``: taken from the Trainer's
    ``dataloader_num_workers``/``dataloader_prefetch_factor``. ``uneven`` is the Loader's policy for ranks
    whose epochs differ in length (``"stop"``: every rank starts its next epoch when the shortest ends).
    Integer arrays come out as ``int64`` tensors (what embeddings and losses take), other numeric arrays as
    tensors, lists and strings as they are, for the Trainer's collator. It has no ``len()`` (an endless
    stream) and no ``set_epoch`` (the loader state knows the real epoch).

    Pipelines in a global order (elastic, see :meth:`~headrace.Dataset.elastic`) are read one row per batch,
    so that a checkpoint can resume on another number of ranks; their rows' lists come out as tensors.

    :meth:`state_at` is the loader state after the ``rows``-th row handed out since :meth:`restart`
    (kept for every ``every``-th row: the callback asks at whole optimizer steps only).

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(10)))
    >>> stream = TrainerDataset(hr.open(path))
    >>> stream.restart()
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

    def __init__(
        self,
        dataset: Dataset,
        *,
        threads: int | None = None,
        prefetch: int | None = None,
        worker_type: str = "thread",
        uneven: str = "stop",
    ) -> None:
        super().__init__()
        if dataset.batched:
            raise ValueError(
                "for_trainer(ds): ds ends in batch(); the Trainer batches rows itself "
                "(per_device_train_batch_size and its data_collator): remove the batch() stage"
            )
        self.dataset = dataset
        one_per_batch = dataset.batch(1)  # the Loader resumes a global order on another world only over batches
        self.elastic = one_per_batch.elastic() is None
        self.pipeline = one_per_batch if self.elastic else dataset
        self.threads, self.prefetch, self.worker_type, self.uneven = threads, prefetch, worker_type, uneven
        self.loader: Loader | None = None
        self._rows, self._every = 0, 1  # rows handed out since the last restart; the states of every n-th kept
        self._states: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._iterating = False

    def _new_loader(self) -> Loader:
        prefetch = 2 if self.prefetch is None else self.prefetch
        return Loader(self.pipeline, num_workers=self.threads or 0, prefetch=prefetch, world=World.detect(),
                      worker_type=self.worker_type, uneven=self.uneven)  # fmt: skip

    def __iter__(self) -> Iterator[Any]:
        loader = self.loader
        if loader is None:
            raise ValueError(
                "this for_trainer() stream was iterated before training began: pass its callback too, "
                "Trainer(train_dataset=train_dataset, callbacks=[callback]) (it starts the stream at the saved "
                "position). A training stream never ends: for eval_dataset use for_eval(ds). To look at rows, "
                "iterate hr.Loader(ds)"
            )
        if self._iterating:
            raise ValueError(
                "this for_trainer() stream is already being iterated (it is the Trainer's train_dataset): "
                "for eval_dataset pass another stream, for_eval(ds), which ends and repeats"
            )
        self._iterating = True
        try:
            yield from self._rows_of(loader)
        finally:
            self._iterating = False

    def _rows_of(self, loader: Loader) -> Iterator[Any]:
        empty = 0  # passes in a row that yielded nothing: the rest of a restored epoch may be empty, not two
        while empty < 2:
            before = self._rows
            for row in loader:
                self._rows += 1
                if self._rows % self._every == 0:
                    self._states.append((self._rows, loader.state_dict()))
                yield to_tensors(_unbatch(row) if self.elastic else row)  # int64 ids; pixels stay uint8
            empty = empty + 1 if self._rows == before else 0
        w = loader.world
        if w.world_size > 1:  # the other ranks would wait for this one at their next step, forever
            raise ValueError(
                f"for_trainer(): rank {w.rank} of {w.world_size} has no rows in two epochs in a row: give every "
                "rank data (more shards or row groups than ranks, or fewer ranks)"
            )

    def restart(self, state: dict[str, Any] | None = None, every: int = 1) -> None:
        """Go on from ``state`` (a :meth:`state_at` result) at the next iteration (``None``: from the start of
        the data), keeping the state of every ``every``-th row from there. The rank's world is detected here."""
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.loader, self._iterating = self._new_loader(), False  # an iteration of a previous train() is over
        if state is not None:
            self.loader.load_state_dict(state)
        self._rows, self._every = 0, every
        self._states = collections.deque([(0, self.loader.state_dict())])

    def state_at(self, rows: int) -> dict[str, Any]:
        """The loader state right after the ``rows``-th row since :meth:`restart`; states before it are
        forgotten (a consumer asks for its positions in order)."""
        while len(self._states) > 1 and self._states[0][0] < rows:
            self._states.popleft()
        if not self._states:
            raise StateError("no loader state: the stream was not started (restart())")
        count, state = self._states[0]
        if count != rows:
            raise StateError(
                f"no loader state for row {rows} ({self._rows} rows handed out since the restart, the state of every "
                f"{self._every}-th kept, from row {count} on): is this stream the Trainer's train_dataset?"
            )
        return state

    def __len__(self) -> int:
        raise TypeError(
            "a for_trainer() stream has no len(): it goes on epoch after epoch until max_steps. Count training "
            "samples as max_steps × per_device_train_batch_size × gradient_accumulation_steps × world_size; "
            "for the rows of one epoch, count sum(1 for _ in hr.Loader(ds))"
        )


class EvalDataset(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """The rows of ``dataset`` once, from the start, every time it is iterated: ``Trainer(eval_dataset=...)``.

    Every evaluation sees the same rows in the same order (epoch 0's shuffle), and reading them never
    touches a training position. Every rank reads all of them (evaluation sets are small: cut one with
    ``take(n)``), and the Trainer's accelerate gives each rank its share of each batch, so every rank takes
    the same number of evaluation steps. ``len()`` is the row count (counted by one pass, once).

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(10)))
    >>> evaluation = for_eval(hr.open(path).shuffle(seed=0, buffer_size=4).take(3))
    >>> first = [row["id"] for row in evaluation]
    >>> [row["id"] for row in evaluation] == first, len(evaluation)
    (True, 3)
    """

    def __init__(self, dataset: Dataset, *, threads: int = 0, prefetch: int = 2) -> None:
        super().__init__()
        if dataset.batched:
            raise ValueError(
                "for_eval(ds): ds ends in batch(); the Trainer batches rows itself "
                "(per_device_eval_batch_size and its data_collator): remove the batch() stage"
            )
        self.dataset, self.threads, self.prefetch = dataset, threads, prefetch
        self._count: int | None = None

    def __iter__(self) -> Iterator[Any]:
        loader = Loader(self.dataset, num_workers=self.threads, prefetch=self.prefetch, world=World())
        count = 0
        for row in loader:  # a fresh loader: epoch 0 from its start, whatever was read before
            count += 1
            yield to_tensors(row)
        self._count = count

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in Loader(self.dataset, num_workers=self.threads, world=World()))
        return self._count


class HeadraceCallback(TrainerCallback):
    """Saves the position of ``stream`` (the ``Trainer``'s ``train_dataset``) with every checkpoint and
    restores it on ``trainer.train(resume_from_checkpoint=...)``.

    Pass it in ``Trainer(callbacks=[...])``: at the end of the Trainer's ``__init__`` it sets
    ``args.ignore_data_skip = True`` (the Trainer must not skip the trained batches itself: the position is
    restored already), moves ``dataloader_num_workers``/``dataloader_prefetch_factor`` onto the stream's
    threads and read-ahead, and checks the arguments (no ``auto_find_batch_size``; with several processes,
    accelerate must not dispatch batches). A checkpoint without a headrace position is refused on resume.
    Evaluation does not change the training: the global torch RNG (which an evaluation ``DataLoader`` draws
    from) is put back as it was before it.

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write('{"id": 0}\\n')
    >>> callback = HeadraceCallback(TrainerDataset(hr.open(path)))
    >>> args = TrainingArguments(dataloader_num_workers=2, report_to=[])
    >>> callback.on_init_end(args, TrainerState(), None)
    >>> args.dataloader_num_workers, callback.stream.threads
    (0, 2)
    """

    def __init__(self, stream: TrainerDataset) -> None:
        self.stream = stream
        self._start_step = 0  # the global step this train() call began at
        self._rows_per_step = 0
        self._rng: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the RNG before an evaluation

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        _check(args)  # before configure(): the Trainer's accelerator was built with these arguments
        configure(args, self.stream)

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
        world = World.detect()
        if (world.rank, world.world_size) != (args.process_index, args.world_size):
            raise ValueError(
                f"HeadraceCallback: the data would be split as rank {world.rank} of {world.world_size} (from "
                f"torch.distributed or the RANK/WORLD_SIZE environment), but the Trainer runs as process "
                f"{args.process_index} of {args.world_size}: under torchrun on CPUs pass --use_cpu true (the "
                "Trainer then starts a gloo process group); else start the process group before training"
            )
        loader = kwargs.get("train_dataloader")
        batch_size = args.train_batch_size
        if loader is not None:
            base = getattr(loader, "base_dataloader", loader)  # accelerate's DataLoaderShard/Dispatcher wrap one
            if _own_part(base, self.stream) is not self.stream:
                raise ValueError(
                    "HeadraceCallback: the Trainer's train_dataset is not this callback's stream; with "
                    "train_dataset, callback = for_trainer(ds), pass "
                    "Trainer(train_dataset=train_dataset, callbacks=[callback])"
                )
            if type(loader).__name__ == "DataLoaderDispatcher" and args.world_size > 1:
                raise ValueError(_DISPATCH)
            _private_seed(base)
            batch_size = base.batch_size or batch_size
        self.stream.restart(self._saved(args, state), every=batch_size * args.gradient_accumulation_steps)
        self._start_step = state.global_step
        self._rows_per_step = batch_size * args.gradient_accumulation_steps
        self._record(args, state, gather=False)

    def _saved(self, args: TrainingArguments, state: TrainerState) -> dict[str, Any] | None:
        """This rank's loader state in the checkpoint being resumed (``None``: a fresh start)."""
        if state.global_step == 0:
            return None
        saved = _stateful(state).get(STATE_KEY)
        if not isinstance(saved, dict) or saved.get("step") != state.global_step:
            raise StateError(
                f"the checkpoint of step {state.global_step} has no headrace data position (its trainer_state.json "
                f"has no stateful_callbacks[{STATE_KEY!r}] for that step): it was not saved with HeadraceCallback. "
                "Resume from a checkpoint that was, or start afresh"
            )
        ranks = saved.get("ranks", [saved.get("loader")])  # one "loader": saved by an older headrace, one rank
        if not isinstance(ranks, list) or not ranks or any(not isinstance(r, dict) for r in ranks):
            raise StateError(
                f"the checkpoint of step {state.global_step} has an incomplete headrace position (stateful_callbacks"
                f"[{STATE_KEY!r}]['ranks'] must hold one loader state per rank): was it saved with save_strategy="
                "'best' and no evaluation at that step? Resume from another checkpoint"
            )
        rank, world_size = args.process_index, args.world_size
        if len(ranks) == world_size:
            return dict(ranks[rank])
        if not self.stream.elastic:
            raise StateError(
                f"the checkpoint of step {state.global_step} was saved on {len(ranks)} rank(s), this run has "
                f"{world_size}: its pipeline cannot resume on another number of ranks ({self.stream.dataset.elastic()}"
                "). Resume on the same number of ranks, or read the data in a global order: "
                "shuffle(seed, buffer_size=None) on indexed data (Parquet, token shards), with per-row maps only"
            )
        return dict(ranks[0])  # every rank consumed the same rows: any rank's state holds the global position

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        # Every step, so the state is in place for any save (the Trainer saves after on_step_end). The ranks'
        # positions are gathered only for a step that may save (a collective: every rank decides alike).
        may_save = control.should_save or (control.should_evaluate and args.save_strategy == "best")
        self._record(args, state, gather=may_save)
        if control.should_evaluate:
            cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
            self._rng = (torch.get_rng_state(), cuda)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._rng is not None:  # an evaluation during training: the training goes on as without it
            cpu, cuda = self._rng
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda)
            self._rng = None

    def _record(self, args: TrainingArguments, state: TrainerState, *, gather: bool) -> None:
        rows = (state.global_step - self._start_step) * self._rows_per_step
        own = self.stream.state_at(rows)
        ranks: list[Any] = [own]
        if args.world_size > 1:
            ranks = _gather_json(own, args.device) if gather else [None] * args.world_size
            ranks[args.process_index] = own
        _stateful(state)[STATE_KEY] = {"step": state.global_step, "world_size": args.world_size, "ranks": ranks}


_DISPATCH = (
    "HeadraceCallback: accelerate dispatches the batches of an iterable dataset from rank 0 by default, but "
    "with headrace each rank reads its own part: pass for_trainer(ds, args=training_args) before building "
    "the Trainer, or TrainingArguments(accelerator_config={'dispatch_batches': False}) (command line: "
    "--accelerator_config '{\"dispatch_batches\": false}')"
)


def for_trainer(
    dataset: Dataset,
    args: TrainingArguments | None = None,
    *,
    threads: int | None = None,
    prefetch: int | None = None,
    worker_type: str = "thread",
    uneven: str = "stop",
) -> tuple[TrainerDataset, HeadraceCallback]:
    """``(train_dataset, callback)`` for ``Trainer(train_dataset=train_dataset, callbacks=[callback])``.

    ``dataset`` yields rows (no ``batch()`` stage: the Trainer's collator batches them); set ``max_steps``.
    ``args``: the ``TrainingArguments`` the Trainer will get, set up for headrace now (:func:`configure`:
    needed with several processes, for accelerate's ``dispatch_batches``). ``threads``/``prefetch``/
    ``worker_type``/``uneven``: see :class:`TrainerDataset`.

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write('{"id": 0}\\n')
    >>> args = TrainingArguments(max_steps=10, dataloader_num_workers=4, report_to=[])
    >>> train_dataset, callback = for_trainer(hr.open(path), args)
    >>> callback.stream is train_dataset, train_dataset.threads, args.accelerator_config.dispatch_batches
    (True, 4, False)
    """
    stream = TrainerDataset(dataset, threads=threads, prefetch=prefetch, worker_type=worker_type, uneven=uneven)
    if args is not None:
        configure(args, stream)
    return stream, HeadraceCallback(stream)


def for_eval(dataset: Dataset, *, threads: int = 0, prefetch: int = 2) -> EvalDataset:
    """An :class:`EvalDataset` for ``Trainer(eval_dataset=...)``: the rows of ``dataset``, once, the same every
    evaluation (cut a long stream with ``take(n)``).

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(10)))
    >>> [row["id"] for row in for_eval(hr.open(path).take(3))]
    [0, 1, 2]
    """
    return EvalDataset(dataset, threads=threads, prefetch=prefetch)


def configure(args: TrainingArguments, stream: TrainerDataset) -> None:
    """Set ``args`` up for ``stream``: the Trainer must not skip batches on resume (``ignore_data_skip``), nor
    dispatch them from rank 0 (``accelerator_config.dispatch_batches=False``: each rank reads its part), and
    ``dataloader_num_workers``/``dataloader_prefetch_factor`` become the stream's threads and read-ahead (the
    DataLoader's own workers would read ahead out of sight of the position).

    The dispatch setting takes effect only before the Trainer is built (its accelerator reads it then).
    """
    args.ignore_data_skip = True
    accelerator: Any = args.accelerator_config  # an AcceleratorConfig once TrainingArguments.__post_init__ ran
    if accelerator.dispatch_batches is None:
        accelerator.dispatch_batches = False
    workers = args.dataloader_num_workers
    if workers > 0:
        factor = args.dataloader_prefetch_factor or 2  # torch's default per worker
        if stream.threads is None:
            stream.threads = workers
        if stream.prefetch is None:
            stream.prefetch = factor * workers * args.per_device_train_batch_size  # the rows they would hold
        log.info("headrace: dataloader_num_workers=%d runs as %d headrace worker threads; the DataLoader reads "
                 "in the main process", workers, stream.threads)  # fmt: skip
        args.dataloader_num_workers = 0
        args.dataloader_prefetch_factor = None
        args.dataloader_persistent_workers = False


def _check(args: TrainingArguments) -> None:
    if args.auto_find_batch_size:
        raise ValueError(
            "HeadraceCallback: auto_find_batch_size restarts training with another batch size after rows were "
            "read; set per_device_train_batch_size instead"
        )
    accelerator: Any = args.accelerator_config
    if args.world_size > 1 and accelerator.dispatch_batches is not False:
        raise ValueError(_DISPATCH)


def _own_part(base: Any, stream: TrainerDataset) -> Any:
    """The dataset ``base`` reads; accelerate's ``IterableDatasetShard`` around ``stream`` made a pass-through.

    With several processes and no dispatching, accelerate wraps an iterable dataset so that every rank
    reads all of it and keeps every ``world_size``-th batch. A headrace stream is already this rank's part,
    so the wrapper is told there is one process (as the Trainer does for its own rank-aware samplers).
    """
    dataset: Any = getattr(base, "dataset", stream)
    if getattr(dataset, "dataset", None) is stream and hasattr(dataset, "num_processes"):
        dataset.num_processes, dataset.process_index = 1, 0
        return stream
    return dataset


def _gather_json(obj: Any, device: torch.device) -> list[Any]:
    """``obj`` of every rank, sent as JSON bytes (never pickled) over the default process group."""
    import torch.distributed as dist

    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=device))
    longest = max(int(size.item()) for size in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [json.loads(bytes(part[: int(size.item())].tolist())) for part, size in zip(parts, sizes, strict=True)]


def _stateful(state: TrainerState) -> dict[str, Any]:
    """``state.stateful_callbacks``: typed as a list, but ``TrainerState.__post_init__`` makes it a dict."""
    if not isinstance(state.stateful_callbacks, dict):
        raise TypeError(f"TrainerState.stateful_callbacks is a {type(state.stateful_callbacks).__name__}, not a dict")
    return state.stateful_callbacks


def _private_seed(loader: Any) -> None:
    # A DataLoader draws a seed for its workers from the global torch RNG when an epoch begins. On resume the
    # Trainer restores that RNG (with ignore_data_skip=True) just before, so the draw would shift the resumed
    # run's dropout masks off the uninterrupted run's. A generator of its own leaves the global RNG alone.
    if isinstance(loader, torch.utils.data.DataLoader) and loader.generator is None:
        loader.generator = torch.Generator()


def _unbatch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The one row of a ``batch(1)`` batch."""
    return {k: v[0] for k, v in batch.items()}


__all__ = ["EvalDataset", "HeadraceCallback", "TrainerDataset", "configure", "for_eval", "for_trainer"]
