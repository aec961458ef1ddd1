"""The prefetch thread: a pipeline's items made ahead of the training loop, and stopped without waiting on user code.

:func:`prefetched` runs a producer in a background thread, ``depth`` items ahead, and hands its items (and its
exception, with its traceback) to the caller. Stopping (Ctrl-C, an exception, a ``break``, a timeout) stops the
workers first, then gives the thread ``GRACE_S`` to finish its item; one still in a slow stage after that (a big
shuffle window, a remote read with retries) finishes in the background, and the interpreter's exit waits for it
(:func:`_stop_prefetching`): a daemon thread still inside Arrow when Python finalizes aborts the process.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from headrace.core.node import Node
from headrace.workers import GRACE_S, ProcessExecutor, ThreadExecutor

# The prefetch threads still running, each with its stop event and the node it drives; a thread removes itself
# when it ends (not when its iteration does: it may still be in a slow stage then).
_LIVE: dict[int, tuple[threading.Event, threading.Thread, Node[Any]]] = {}
POLL_S = 0.1  # how often a training loop waiting for an item looks for a Ctrl-C caught by another thread
EXIT_WAIT_S = 10.0  # how long the exit waits for prefetch threads still in a stage

log = logging.getLogger("headrace")


@atexit.register
def _stop_prefetching() -> None:
    """At exit, stop the prefetch threads still running (an iteration left suspended by a ``break`` whose
    generator was never closed, or one whose thread was still in a slow stage when it stopped) and wait for them.

    They get ``EXIT_WAIT_S`` in all; once every thread left is waiting for a user function's call
    (``node.busy()`` names one), only ``GRACE_S``: a function that never returns must not keep the process
    from exiting, and a thread inside one is not inside Arrow."""
    for stop, _, _ in list(_LIVE.values()):
        stop.set()
    began = time.monotonic()
    while True:
        left = [(thread, node) for _, thread, node in list(_LIVE.values()) if thread.is_alive()]
        waited = time.monotonic() - began
        if not left or waited >= EXIT_WAIT_S or (waited >= GRACE_S and all(busy(n) for _, n in left)):
            return
        left[0][0].join(timeout=0.05)


def busy(node: Node[Any]) -> str | None:
    """``node.busy()``, from another thread than the one driving the node; ``None`` if it cannot say."""
    try:
        return node.busy()
    except Exception:
        return None


def prefetched(
    produced: Generator[Any, None, None],
    node: Node[Any],
    pool: ProcessExecutor | ThreadExecutor | None,
    q: queue.Queue[Any],
    *,
    last: Callable[[Any], bool],
    timeout: float | None,
    timed_out: Callable[[], BaseException],
) -> Generator[Any, None, None]:
    """The items of ``produced`` (a generator that closes ``node``), made by a background thread into ``q``.
    ``last(item)``: the producer's final item, after which nothing is stopped; ``timeout``: seconds to wait for
    one item before raising ``timed_out()``."""
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produced:
                if not put(item):
                    return
        except BaseException as e:  # crosses to the consumer with its traceback
            put(e)
        finally:
            try:
                produced.close()  # closes the node, in the thread that uses it
            finally:
                _LIVE.pop(key, None)  # only now: until here, the exit waits for this thread

    thread = threading.Thread(target=run, name="headrace-prefetch", daemon=True)
    key = id(stop)
    _LIVE[key] = (stop, thread, node)
    try:
        thread.start()
    except BaseException:
        _LIVE.pop(key, None)
        raise
    ended = False
    try:
        while True:
            item = _next(q, timeout, timed_out)
            if isinstance(item, BaseException):
                raise item
            ended = last(item)
            yield item
            if ended:
                return
    finally:
        if not ended and pool is not None:
            pool.terminate()  # unblocks the prefetch thread if it waits for a worker stuck in user code
        stop.set()
        thread.join(timeout=GRACE_S)
        if thread.is_alive():  # it stays in _LIVE until it ends: the exit waits for it (see _stop_prefetching)
            call = busy(node)
            if call is not None:  # a user function that does not return (num_workers=0) is left, a daemon
                log.warning("headrace: the prefetch thread is still inside %s after %g s; leaving it", call, GRACE_S)
            else:
                log.warning("headrace: the prefetch thread has not ended yet; it ends in the background (a slow "
                            "stage: a big shuffle buffer, a remote read, a close)")  # fmt: skip


def _next(q: queue.Queue[Any], timeout: float | None, timed_out: Callable[[], BaseException]) -> Any:
    """The next item of ``q`` within ``timeout``. Waits in slices of ``POLL_S``: a Ctrl-C that the kernel hands
    to another thread only sets a flag, which the main thread reads when it wakes up; a wait with no end would
    never see it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
        if wait <= 0:
            raise timed_out()
        try:
            return q.get(timeout=wait)
        except queue.Empty:
            continue
