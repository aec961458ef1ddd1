"""``Loader``: iterates a pipeline's batches for one rank, with worker threads, prefetch, epochs and state.

Worker threads run map/filter blocks in order (so the output never depends on ``num_workers``); a
background thread keeps ``prefetch`` batches ready. Every batch travels with the state taken right
after it was made, and ``state_dict()`` returns the state of the last batch *delivered* to the caller:
prefetched batches are neither lost nor repeated on resume.

Stopping never waits on user code: Ctrl-C, an exception, a ``break`` or a ``timeout`` stops the workers at
once (processes are killed; a thread stuck in a function that never returns is left behind as a daemon,
which does not keep the process alive), and the prefetch thread gets ``GRACE_S`` to finish its batch. One still
in a slow stage after that (a big shuffle window, a remote read with retries) finishes in the background, and
the interpreter's exit waits for it (see :mod:`headrace.prefetch`).
"""

from __future__ import annotations

import atexit
import inspect
import logging
import queue
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

from headrace import agree
from headrace.agree import Agreement
from headrace.core import state as states
from headrace.core.errors import LoaderTimeout, StateError
from headrace.core.node import Node, State, line
from headrace.core.policy import ErrorLog
from headrace.core.world import World
from headrace.pipeline import REMAINDERS, Context, Dataset
from headrace.prefetch import prefetched
from headrace.stages.batch import RowNode
from headrace.stages.mix_schedule import sums_to_one, weights_by_name
from headrace.stages.partition import elastic_start
from headrace.stats import StageTimer, Stats, instrument, measure, own_times, sources, stage_name
from headrace.workers import ProcessExecutor, ThreadExecutor

_END = object()  # the last item an iteration produces: it carries the final skipped count
# The iterations not yet finished: closed at exit, while the modules they use are still whole (a generator left
# suspended by a `while True` training loop would otherwise be closed by the garbage collector at the very end,
# after the interpreter has started tearing modules down, and print "Exception ignored in ...").
_OPEN: weakref.WeakSet[Generator[Any, None, None]] = weakref.WeakSet()

log = logging.getLogger("headrace")


class Loader:
    """Batches of ``dataset`` for this rank, resumable exactly from ``state_dict()``.

    ``rank``/``world_size`` default to what ``torch.distributed``, JAX or the environment say.
    ``remainder`` decides what happens to rows that do not split evenly between ranks: ``"drop"``
    them, or ``"pad"`` by repeating rows from the start. Iterating yields the rest of the current epoch;
    the next iteration starts the next epoch. Without a ``batch()`` stage it yields rows (dicts), one at
    a time.

    Every rank yields the same number of batches, whatever the pipeline (:mod:`headrace.agree`): with
    several ranks the loaders agree before each batch, over ``torch.distributed``, JAX or ``agreement=``
    (a :class:`~headrace.agree.FileAgreement`); ranks that have none of these (no process group) cannot,
    and a warning says so. ``uneven`` says what happens when a ``pack``, ``filter``,
    ``mix``, batched ``map`` or skipped records leave the ranks with different counts: ``"stop"`` all at
    the shortest rank, ``"pad"`` the shorter ranks by repeating their part of the epoch from its start,
    or ``"off"`` (no agreement: a loader iterated on one rank only).

    ``timeout`` (seconds, ``None``: wait forever) bounds how long the training loop waits for one batch
    (the first included): past it, :class:`~headrace.core.errors.LoaderTimeout` names the stage and the
    block it is stuck on (a user function that never returns), and the workers are stopped.

    >>> import headrace as hr, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = open(path, "w").write("".join(f'{{"id": {i}}}\\n' for i in range(10)))
    >>> loader = hr.Loader(hr.open(path).shuffle(seed=1, buffer_size=4).batch(2), num_workers=2)
    >>> first = next(iter(loader)); state = loader.state_dict()
    >>> rest = [b["id"].tolist() for b in loader]
    >>> again = hr.Loader(hr.open(path).shuffle(seed=1, buffer_size=4).batch(2))
    >>> again.load_state_dict(state)
    >>> [b["id"].tolist() for b in again] == rest
    True
    """

    def __init__(
        self,
        dataset: Dataset,
        num_workers: int = 0,
        prefetch: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        *,
        remainder: str = "drop",
        world: World | None = None,
        worker_type: str = "thread",
        log_every: float | None = None,
        progress: bool = False,
        timeout: float | None = None,
        uneven: str = "stop",
        agreement: Agreement | None = None,
    ) -> None:
        if num_workers < 0 or prefetch < 0:
            raise ValueError("num_workers and prefetch must be >= 0")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
        self.timeout = timeout
        if worker_type not in ("thread", "process"):
            raise ValueError(f"worker_type must be 'thread' or 'process', got {worker_type!r}")
        self.worker_type = worker_type
        if remainder not in REMAINDERS:
            raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.world = world or World.detect(rank, world_size)
        self.remainder = remainder
        if uneven not in agree.POLICIES:
            raise ValueError(f"uneven must be one of {agree.POLICIES}, got {uneven!r}")
        if agreement is not None and agreement.consumers != self.world.consumers:
            raise ValueError(f"agreement= is between {agreement.consumers} consumers, but this loader's world has "
                             f"{self.world.consumers} ({self.world})")  # fmt: skip
        self.uneven, self.agreement = uneven, agreement
        self._padding = False  # this rank ran out and repeats its part of the epoch (uneven="pad")
        self._before: dict[str, Any] | None = None  # the position before the last batch delivered
        self._epoch = 0
        self._node_state: State | None = None  # None: the start of the epoch
        self._batches = 0  # delivered in this epoch
        self._skipped = 0
        self._logs: list[ErrorLog] = []
        self._weights: dict[str, float] | None = None  # a re-weighting of the mixture, by name
        self._start, self._start_batches = 0, 0  # where the global order started this run (elastic resume)
        self.log_every, self.progress = log_every, progress
        self._stats = Stats()
        self._timers: list[StageTimer] = []
        self._queue: queue.Queue[Any] | None = None
        self._began = time.perf_counter()
        self._node: Node[Any] | None = None
        self._hooks: list[tuple[Callable[[Stats], None], int]] = []

    # -- state -------------------------------------------------------------------------------------
    def _world_description(self) -> dict[str, Any]:
        w = self.world
        world = {"rank": w.rank, "world_size": w.world_size, "worker": w.worker, "num_workers": w.num_workers,
                 "remainder": self.remainder}  # fmt: skip
        if w.num_workers > 1:  # the workers split their rank's range (before: the order, leaving rows out)
            world["workers_split"] = "rank"
        return world

    def _position(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "node": self._node_state, "batches": self._batches, "skipped": self._skipped,
                "start": self._start, "start_batches": self._start_batches, "padding": self._padding}  # fmt: skip

    def state_dict(self, *, before_last: bool = False) -> dict[str, Any]:
        """Plain JSON: where the delivered batches end. Kilobytes, never the data.

        ``before_last=True``: where they ended before the last batch delivered, for a loop that fetches the
        next batch before it checkpoints (nanoGPT's ``X, Y = get_batch()`` ahead of the step): resuming from
        it yields that batch again first. Before any batch of this loader, the same as ``before_last=False``.
        """
        at = (self._before if before_last else None) or self._position()
        return states.wrap(
            at["node"] or {},
            pipeline=self.dataset.describe(),
            world=self._world_description(),
            epoch=at["epoch"],
            batches=at["batches"],
            started=at["node"] is not None,
            weights=self._weights,
            elastic={"start": at["start"], "start_batches": at["start_batches"]},
            skipped=at["skipped"],  # for the record: after the end of an epoch, all that epoch skipped
            uneven={"padding": at["padding"]},
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken; a state of another pipeline is refused.

        A state from another world (rank count, workers, remainder) is accepted by elastic pipelines
        (global order, see :meth:`Dataset.elastic`): the global order continues right after the
        samples all ranks consumed. Other pipelines refuse it and say why.
        """
        if isinstance(state, dict) and state.get("world") != self._world_description():
            self._load_elastic(state)
            return
        states.check(state, pipeline=self.dataset.describe(), world=self._world_description())
        field = states.field
        epoch, batches, started = field(state, "epoch"), field(state, "batches"), field(state, "started", bool)
        node = field(state, "node", dict)
        if started != bool(node):  # a started epoch has a node state; one not started (yet, or again) has none
            raise states.refuse("started", f"{started} does not go with a node state of {len(node)} field(s)")
        elastic = field(state, "elastic", dict)
        with states.within("elastic"):
            start, start_batches = field(elastic, "start"), field(elastic, "start_batches", hi=batches)
        weights = self._saved_weights(state)
        self._epoch, self._batches, self._node_state = epoch, batches, dict(node) if started else None
        self._weights, self._start, self._start_batches = weights, start, start_batches
        self._skipped = field(state, "skipped") if "skipped" in state else 0  # older states lack it
        self._padding, self._before = self._saved_padding(state), None

    @staticmethod
    def _saved_padding(state: dict[str, Any]) -> bool:
        if "uneven" not in state:  # older states: never padding
            return False
        with states.within("uneven"):
            return bool(states.field(states.field(state, "uneven", dict), "padding", bool))

    def _saved_weights(self, state: dict[str, Any]) -> dict[str, float] | None:
        """The mixture's weights of ``state`` (``None``: as built), checked against this pipeline's mixture."""
        saved = state.get("weights")
        if saved is None:
            return None
        weights = states.field(state, "weights", dict)
        names = getattr(self.dataset.root, "names", None)
        if names is None or set(weights) != set(names):
            want = "null (this pipeline has no mix() at its root)" if names is None else f"one per source {names}"
            raise states.refuse("weights", f"must be {want}, got {states.shown(weights)}")
        with states.within("weights"):
            values = {n: float(states.field(weights, n, float, hi=1)) for n in names}
        if not sums_to_one(list(values.values())):  # set_weights() normalizes them
            raise states.refuse("weights", f"must sum to 1, got {values}")
        return values

    def _load_elastic(self, state: dict[str, Any]) -> None:
        def any_batch_size(pipeline: list[Any]) -> list[Any]:  # a new world may batch the same global batch
            return [{**s, "size": None} if isinstance(s, dict) and s.get("stage") == "batch" else s for s in pipeline]

        saved_pipeline = list(state.get("pipeline", [])) if isinstance(state.get("pipeline"), list) else []
        states.check_digest(state)
        unsigned = {k: v for k, v in state.items() if k != states.DIGEST}
        states.check({**unsigned, "pipeline": any_batch_size(saved_pipeline)},
                     pipeline=any_batch_size(self.dataset.describe()), world=None)  # fmt: skip
        saved, now = state.get("world", {}), self._world_description()
        reason = self.dataset.elastic()
        if reason is not None:
            changed = "; ".join(states.differences(saved, now, "world"))
            raise StateError(
                f"the state was saved on another world ({changed}); this pipeline cannot resume on another "
                f"world because {reason}. Resume on the same world, or start afresh"
            )
        if state.get("fingerprint") != states.fingerprint([saved_pipeline, saved]):  # the saved world, as saved
            raise states.refuse("world", "does not match the state's fingerprint of its pipeline and world")
        field = states.field
        with states.within("world"):
            consumers = field(saved, "world_size", lo=1, hi=1 << 24) * field(saved, "num_workers", lo=1, hi=1 << 16)
        with states.within("pipeline[-1]"):
            size = field(saved_pipeline[-1] if saved_pipeline else {}, "size", lo=1)
        epoch, batches, elastic = field(state, "epoch"), field(state, "batches"), field(state, "elastic", dict)
        with states.within("elastic"):
            start, start_batches = field(elastic, "start"), field(elastic, "start_batches", hi=batches)
        self._epoch, self._batches = epoch, batches
        self._start, self._start_batches = elastic_start(start, batches, start_batches, size, consumers), batches
        self._weights = self._saved_weights(state)
        self._node_state = None  # a fresh start at the global position, on this world
        self._padding, self._before = False, None  # a new world splits the rest of the epoch afresh

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next iteration (shard order and shuffles change)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch, self._node_state, self._batches = epoch, None, 0
        self._start, self._start_batches, self._padding, self._before = 0, 0, False, None

    def set_weights(self, weights: dict[str, float]) -> None:
        """Re-weight the mixture by source name from the next ``iter(loader)`` on; every source keeps its position.

        Applying at an iteration boundary keeps resume exact (batches already prefetched were made
        with the old weights). The new weights are part of the state, so a checkpoint resumes with them.
        """
        root = self.dataset.root
        names = getattr(root, "names", None)
        if names is None:
            raise ValueError("set_weights(): this pipeline has no mix() at its root")
        self._weights = dict(zip(names, weights_by_name(names, weights, "set_weights()"), strict=True))

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def skipped(self) -> int:
        """Malformed records skipped so far in this epoch under ``errors="skip"``/``"warn"`` (kept across resume);
        once an iteration ends, all of that epoch's, those after its last batch included."""
        return self._skipped

    @property
    def skipped_where(self) -> list[str]:
        """Where the first skipped records were (``"file:line: reason"``), for the last iteration."""
        return [w for log in self._logs for w in log.where]

    # -- observability -----------------------------------------------------------------------------
    def stats(self) -> Stats:
        """Throughput, data wait, per-stage time, queue depth, retries and cache hits of the current (or
        last) iteration: see :class:`headrace.stats.Stats`."""
        s = replace(self._stats, stages=own_times(self._timers), elapsed_s=time.perf_counter() - self._began)
        if self._queue is not None:
            s.queue_depth, s.queue_capacity = self._queue.qsize(), self._queue.maxsize
        if self._node is not None:
            for fs in sources(self._node):
                s.retries += fs.stats.retries
                if fs.cache is not None:
                    s.cache_hits += fs.cache.stats.hits
                    s.cache_misses += fs.cache.stats.misses
        return s

    def add_hook(self, hook: Callable[[Stats], None], every: int = 100) -> None:
        """Call ``hook(loader.stats())`` every ``every`` batches delivered (a TensorBoard / W&B logger:
        ``loader.add_hook(lambda s: wandb.log(s.scalars()), every=50)``)."""
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self._hooks.append((hook, every))

    # -- iteration ---------------------------------------------------------------------------------
    def _build(self, pool: Executor | None, *, fresh: bool = False) -> Node[Any]:
        """The pipeline's nodes for this epoch, at the saved position (``fresh``: at the epoch's start)."""
        node_state = None if fresh else self._node_state
        ctx = Context(world=self.world, epoch=self._epoch, remainder=self.remainder,  # type: ignore[arg-type]
                      pool=pool, depth=max(1, self.num_workers), start=self._start)  # fmt: skip
        node = self.dataset.build(ctx)
        if not self.dataset.batched:
            node = RowNode(node)
        if node_state is not None:
            try:
                with states.within("node"):
                    node.load_state_dict(node_state)
            except BaseException:
                node.close()
                raise
        if self._weights is not None:
            mixer: Any = next((n for n in line(node) if hasattr(n, "set_weights")), None)
            if mixer is not None:
                mixer.set_weights(self._weights)
        return node

    def _pool(self) -> ProcessExecutor | ThreadExecutor | None:
        if not self.num_workers:
            return None
        if self.worker_type == "process":
            return ProcessExecutor(self.num_workers)
        return ThreadExecutor(self.num_workers, name="headrace-worker")

    def _agreeing(self) -> Agreement | None:
        """Who this loader agrees with on each batch (``None``: no one, alone or ``uneven="off"``)."""
        if self.uneven == "off" or (self.world.world_size == 1 and self.agreement is None):
            return None  # one rank's DataLoader workers need not agree: their sum is the rank's count
        if self.dataset.equal_counts:  # (a rank's workers' parts may differ by a row, not their sum)
            return None
        if self.agreement is not None:
            return self.agreement
        found = agree.detect(self.world)
        if found is None:
            agree.warn_alone(self.world)
        return found

    def __iter__(self) -> Iterator[Any]:
        iteration = self._iterate()
        _OPEN.add(iteration)
        return iteration

    def _iterate(self) -> Generator[Any, None, None]:
        agreement = self._agreeing()
        pool = self._pool()
        self._began, self._stats, self._queue = time.perf_counter(), Stats(), None
        try:
            node = self._build(pool)
        except BaseException:  # a state refused while restoring: no worker left behind
            if pool is not None:
                pool.terminate()
            raise
        items: Generator[tuple[Any, State | None, int], None, None] | None = None
        padding: _Padding | None = None
        display: _Display | None = None
        finished = False
        stats, logged = self._stats, time.perf_counter()
        try:  # from here on, whatever fails stops the workers and closes the node
            if isinstance(pool, ProcessExecutor):
                pool.start()  # fork now, from this thread, with every function registered by the build
            self._node, self._timers = node, instrument(node)
            self._logs = node.error_logs()
            display = _Display(self) if self.progress else None
            inline = self.num_workers == 0 and self.prefetch == 0 and self.timeout is None  # a timeout needs a thread
            if inline:
                items = self._produce(node)
            else:
                self._queue = queue.Queue(maxsize=max(1, self.prefetch))
                items = prefetched(self._produce(node), node, pool, self._queue, last=lambda item: item[0] is _END,
                                   timeout=self.timeout, timed_out=lambda: self._timed_out(node))  # fmt: skip
            asked = time.perf_counter()
            while True:
                item, node_state, skipped = next(items, (_END, None, self._skipped))
                if item is _END:  # records skipped after the last batch count too
                    self._skipped = skipped if not self._padding else self._skipped
                real = item is not _END and not self._padding
                if agreement is not None:
                    total = agreement.count(int(real))
                    if total == 0 or (total < agreement.consumers and self.uneven == "stop"):
                        break  # every rank has run out, or one has and the others stop with it
                    if item is _END:  # the others go on: repeat this rank's part of the epoch from its start
                        padding = padding or _Padding(self)
                        item, node_state = padding.next()
                elif not real:
                    break
                got = time.perf_counter()
                stats.wait_s += got - asked
                if stats.first_batch_s is None:
                    stats.first_batch_s = got - self._began
                rows, tokens, size = measure(item)
                stats.batches, stats.rows, stats.tokens, stats.bytes = (
                    stats.batches + 1, stats.rows + rows, stats.tokens + tokens, stats.bytes + size)  # fmt: skip
                self._before = self._position()
                self._node_state, self._batches = node_state, self._batches + 1
                if real:
                    self._skipped = skipped
                else:
                    self._padding = True
                self._after_batch(stats.batches, display, got, logged)
                if self.log_every is not None and got - logged >= self.log_every:
                    logged = got
                handed = time.perf_counter()
                yield item
                asked = time.perf_counter()
                stats.step_s += asked - handed
            finished = True
        finally:
            if pool is not None and not finished:
                pool.terminate()  # Ctrl-C, an error or a break never waits on a worker stuck in user code
            if items is not None and inspect.getgeneratorstate(items) != inspect.GEN_CREATED:
                items.close()  # the producer closes the node
            else:  # it never ran, so it cannot
                node.close()
            if padding is not None:
                padding.close()
            if display is not None:
                display.close()
            if pool is not None and finished:
                pool.shutdown(wait=True)
        if finished:
            self._epoch, self._node_state, self._batches = self._epoch + 1, None, 0
            self._start, self._start_batches, self._padding = 0, 0, False

    def _after_batch(self, batches: int, display: _Display | None, now: float, logged: float) -> None:
        for hook, every in self._hooks:
            if batches % every == 0:
                hook(self.stats())
        if self.log_every is not None and now - logged >= self.log_every:
            log.info("%s", self.stats().line())
        if display is not None:
            display.update(now)

    def _produce(self, node: Node[Any]) -> Generator[tuple[Any, State | None, int], None, None]:
        """``(batch, state after it, skipped so far)``, then ``(_END, None, skipped in all)``; closes ``node``."""
        try:
            while True:
                try:
                    item = node.next()
                except StopIteration:
                    break
                yield item, node.state_dict(), sum(log.skipped for log in node.error_logs())
            yield _END, None, sum(log.skipped for log in node.error_logs())
        finally:
            node.close()

    def _timed_out(self, node: Node[Any]) -> LoaderTimeout:
        busy = node.busy()
        if busy is not None:
            return LoaderTimeout(
                f"no batch within Loader(timeout={self.timeout:g}) seconds: {busy} has not returned. A function "
                "that never returns (a deadlock, a network call without a timeout) stops the loader; fix it, or "
                "raise timeout= if it is only slow"
            )
        stages = " <- ".join(stage_name(n) for n in _chain(node))
        return LoaderTimeout(
            f"no batch within Loader(timeout={self.timeout:g}) seconds, and no map or filter function was running: "
            f"the pipeline ({stages}) is waiting for its data. Check that the files or the server are reachable, "
            "or raise timeout= if reading is only slow"
        )


class _Padding:
    """The batches a rank that ran out repeats while the others finish (``uneven="pad"``): its part of the epoch
    again from its start, made inline (no workers). Its state is the loader's while it pads, so a checkpoint taken
    then resumes padding at the same batch (the loader's main producer then makes the pad batches, until it ends).
    """

    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self.node: Node[Any] | None = None

    def next(self) -> tuple[Any, State]:
        """The next pad batch and the state after it; a new pass from the epoch's start when one ends."""
        for _fresh in range(2):
            if self.node is None:
                self.node = self.loader._build(None, fresh=True)
            try:
                return self.node.next(), self.node.state_dict()
            except StopIteration:
                self.close()
        w = self.loader.world
        raise StateError(
            f"Loader(uneven='pad'): rank {w.rank} (worker {w.worker}) has no batch in epoch {self.loader.epoch} to pad "
            "with while other ranks still have some; use uneven='stop', or give every rank data (fewer ranks, "
            "smaller batches)"
        )

    def close(self) -> None:
        if self.node is not None:
            node, self.node = self.node, None
            node.close()


def _chain(node: Node[Any]) -> Iterator[Node[Any]]:
    return line(node)


@atexit.register
def _close_open_iterations() -> None:
    for iteration in list(_OPEN):
        try:
            iteration.close()
        except Exception:  # an iteration that cannot stop cleanly must not keep the others open
            log.debug("headrace: closing a loader iteration at exit failed", exc_info=True)


class _Display:
    """A rich live line under the training loop's output: the :meth:`Stats.line` of the loader, twice a second."""

    def __init__(self, loader: Loader) -> None:
        try:
            from rich.live import Live
        except ImportError:
            raise ImportError("Loader(progress=True) needs rich: pip install 'headrace[cli]'") from None
        self.loader = loader
        self._live = Live("", refresh_per_second=4, transient=False)
        self._live.start()
        self._shown = 0.0

    def update(self, now: float) -> None:
        if now - self._shown >= 0.5:
            self._shown = now
            self._live.update(self.loader.stats().line())

    def close(self) -> None:
        self._live.update(self.loader.stats().line())
        self._live.stop()
