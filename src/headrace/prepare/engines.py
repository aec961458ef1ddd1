"""Where the units run: in this process, in a pool of worker processes, or on a Ray cluster (Ray Data).

Every engine runs the same :func:`~headrace.prepare.work.run_unit`, and a unit writes its own files
and completion record, so the engines produce the same bytes and any of them can resume another's run.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import queue as queues
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from headrace.core.redact import redact_notes
from headrace.prepare.job import Job, PrepareError, Unit
from headrace.prepare.progress import Progress
from headrace.prepare.work import init_worker, run_in_worker, run_unit

Done = Callable[[Unit, dict[str, Any]], None]


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_serial(job: Job, units: Sequence[Unit], progress: Progress, on_done: Done) -> None:
    """Run every unit here, one after another (``--workers 1``)."""
    for unit in units:
        on_done(unit, run_unit(job, unit, progress.advance))


def run_local(job: Job, units: Sequence[Unit], workers: int, progress: Progress, on_done: Done) -> None:
    """Run the units on a pool of ``workers`` processes (``spawn``: safe with threads in this process).

    The first failure stops the run: units not started are cancelled and running ones stop at their
    next batch (their partial files are cleared when the run is restarted).
    """
    if workers <= 1 or len(units) <= 1:
        run_serial(job, units, progress, on_done)
        return
    ctx = multiprocessing.get_context("spawn")
    reports: Any = ctx.Queue()
    stop = ctx.Event()
    draining = threading.Event()

    def drain() -> None:
        while True:
            try:
                item = reports.get(timeout=0.1)
            except queues.Empty:
                if draining.is_set():
                    return
                continue
            if item is None:
                return
            progress.advance(*item)

    drainer = threading.Thread(target=drain, daemon=True, name="headrace-prepare-progress")
    drainer.start()
    pool = ProcessPoolExecutor(min(workers, len(units)), mp_context=ctx, initializer=init_worker,
                               initargs=(job, reports, stop, os.getpid()))  # fmt: skip
    try:
        futures: dict[Future[dict[str, Any]], Unit] = {pool.submit(run_in_worker, u): u for u in units}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in finished:
                if f.exception() is None:
                    on_done(futures[f], f.result())
            for f in finished:
                error = f.exception()
                if error is not None:
                    redact_notes(error)  # its worker's traceback travels as text: no credentials in it
                    raise error
    except BrokenProcessPool:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise PrepareError("a worker process died (killed, out of memory, or the script that called prepare() "
                           "has no `if __name__ == \"__main__\":` guard, which spawned workers need); run the "
                           "same command again to resume") from None  # fmt: skip
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        reports.put(None)
        draining.set()
        drainer.join()
        reports.close()


def _ray_unit(row: dict[str, Any], job: Job) -> dict[str, Any]:
    """Ray Data ``map`` function: one row = one unit; returns its record as JSON text."""
    unit = Unit(int(row["index"]), int(row["source"]), int(row["lo"]), int(row["hi"]))
    return {"index": unit.index, "record": json.dumps(run_unit(job, unit))}


def run_ray(job: Job, units: Sequence[Unit], workers: int | None, progress: Progress, on_done: Done,
            address: str | None = None) -> None:  # fmt: skip
    """Run the units as a Ray Data job: ``from_items(units).map(run_unit)``, one block per unit.

    Uses the Ray instance this process is connected to; otherwise connects to ``address`` (or
    ``RAY_ADDRESS``), or starts a local one whose every listener stays on 127.0.0.1. On a cluster,
    the output folder must be a filesystem every node sees (the workers write the shards).
    """
    local = not (address or os.environ.get("RAY_ADDRESS"))
    if local and "ray" not in sys.modules:  # read when ray is imported: a local Ray then listens on loopback only
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise PrepareError("--engine ray needs Ray Data: pip install 'headrace[ray]'") from None
    started = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # else lines per operator, run and disabled bar
    if not ray.is_initialized():
        if not local:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:  # a Ray for this run only
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     _node_ip_address="127.0.0.1")  # fmt: skip
        started = True
    try:
        if not units:
            return
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        items = [{"index": u.index, "source": u.source, "lo": u.lo, "hi": u.hi} for u in units]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        results = ds.map(functools.partial(_ray_unit, job=job), num_cpus=1)
        by_index = {u.index: u for u in units}
        for row in results.iter_rows():
            record = json.loads(row["record"])
            progress.advance(int(record["documents"]), int(record["tokens"]))
            on_done(by_index[int(row["index"])], record)
    finally:
        if started:
            ray.shutdown()
