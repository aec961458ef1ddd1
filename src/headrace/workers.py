"""Loader workers: ``map``/``filter`` functions run in daemon threads or in forked processes, in order.

Threads are the default (Arrow, tokenizers and I/O release the GIL); processes are for Python-heavy user
functions. Both executors run ``submit(fn, block)`` as ``fn(block)`` and can be stopped at once with
:meth:`~ThreadExecutor.terminate`, even while a user function never returns: a :class:`ThreadExecutor`'s
threads are daemons, so one stuck in user code is left behind without keeping the process alive at exit
(its future fails right away); a :class:`ProcessExecutor`'s workers are killed.

A :class:`ProcessExecutor`'s functions are registered while the pipeline is built and the workers are
forked after that, so they inherit every function — lambdas and closures included, nothing is pickled but
the blocks. Workers ignore Ctrl-C (the main process handles it and stops them) and die with their parent
(``PR_SET_PDEATHSIG`` on Linux): no orphans after ``break``, an exception or a kill. A worker that dies
(a segfault, ``os._exit``, the out-of-memory killer) fails its calls with a :class:`WorkerError` saying
which call it was running and how it died; an exception that cannot cross back to the parent (it cannot
be pickled) is replaced by a :class:`WorkerError` carrying its type, message and traceback.

>>> from headrace.workers import ProcessExecutor
>>> double = lambda x: 2 * x
>>> with ProcessExecutor(2) as pool:
...     pool.register(double)
...     pool.start()
...     [pool.submit(double, i).result() for i in range(4)]
[0, 2, 4, 6]
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor, Future, InvalidStateError, ProcessPoolExecutor
from multiprocessing.reduction import ForkingPickler
from typing import Any

from headrace.core.errors import WorkerError

_FUNCTIONS: dict[int, Callable[..., Any]] = {}  # filled before the fork: the workers inherit it
_PR_SET_PDEATHSIG = 1
GRACE_S = 2.0  # how long stopping workers get to finish what they are doing before they are killed or left
_IDLE = -1


def describe_call(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """What a call is, for errors: the function's own ``describe_call(*args)`` (a stage and a block's place)."""
    describe = getattr(fn, "describe_call", None)
    if describe is not None:
        with contextlib.suppress(Exception):  # a description must never hide the error being described
            return str(describe(*args))
    return str(getattr(fn, "__qualname__", type(fn).__qualname__))


# -- threads --------------------------------------------------------------------------------------------
_THREAD_POOLS: weakref.WeakSet[ThreadExecutor] = weakref.WeakSet()


class ThreadExecutor(Executor):
    """``num_workers`` daemon threads running ``fn(*args)`` in submission order.

    Unlike ``ThreadPoolExecutor``, whose threads the interpreter joins at exit, a thread stuck in a user
    function never keeps the process alive: :meth:`terminate` fails its future at once and leaves it.
    """

    def __init__(self, num_workers: int, name: str = "headrace-worker") -> None:
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._running: set[Future[Any]] = set()
        self._closed = False
        self._cancelled = False  # terminate() or shutdown(cancel_futures=True): no call starts any more
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(num_workers)
        ]
        for thread in self._threads:
            thread.start()
        _THREAD_POOLS.add(self)

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn, args = item
            with self._lock:  # one step with terminate()'s snapshot of the running calls: none slips between
                start = not self._cancelled and future.set_running_or_notify_cancel()
                if start:
                    self._running.add(future)
            if not start:
                future.cancel()  # taken off the queue as terminate() emptied it: cancelled like the others
                del future, fn, args, item
                continue
            try:
                result = fn(*args)
            except BaseException as e:  # crosses to the waiting thread with its traceback
                with contextlib.suppress(InvalidStateError):  # terminate() failed it already
                    future.set_exception(e)
                del e
            else:
                with contextlib.suppress(InvalidStateError):
                    future.set_result(result)
                del result
            finally:
                with self._lock:
                    self._running.discard(future)
            del future, fn, args, item

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs:
            raise TypeError("ThreadExecutor.submit takes positional arguments only")
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[Any] = Future()
            self._work.put((future, fn, args))
        return future

    def _close(self, cancel_futures: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_futures:
                self._cancelled = True
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._work.put(None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._close(cancel_futures)
        if wait:
            for thread in self._threads:
                thread.join()

    def terminate(self) -> None:
        """Stop now: cancel the queued calls, fail the running ones (their threads are left to finish or hang)."""
        self._close(cancel_futures=True)
        with self._lock:
            running = list(self._running)
        for future in running:
            with contextlib.suppress(InvalidStateError):
                future.set_exception(WorkerError("the loader stopped its worker threads while this call ran"))

    def alive(self) -> list[threading.Thread]:
        """The worker threads still running: after :meth:`terminate`, those still inside a call (left behind)."""
        return [t for t in self._threads if t.is_alive()]


@atexit.register
def _stop_thread_pools() -> None:
    """At exit, let worker threads still running finish their call (a thread inside Arrow while the
    interpreter finalizes aborts the process), for at most GRACE_S: one stuck in user code is left."""
    for pool in list(_THREAD_POOLS):
        pool._close(cancel_futures=True)
    deadline = time.monotonic() + GRACE_S
    for pool in list(_THREAD_POOLS):
        for thread in pool.alive():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


# -- processes ------------------------------------------------------------------------------------------
_PROCESS_POOLS: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


def _stop_process_pools() -> None:
    """At exit, kill the workers of iterations never finished or closed: ``concurrent.futures`` would otherwise
    wait, at exit, for the calls they run (forever, for a function that never returns)."""
    for pool in list(_PROCESS_POOLS):
        if pool._pool is not None and pool._owner == os.getpid():  # not in a process forked from the owner
            pool.terminate()


# Runs at interpreter exit before concurrent.futures' own hook (those run last registered first), which joins
# its pools' threads; the atexit module's hooks run only after that. The hook is private to threading: without
# it, atexit's (too late for a worker that never returns, in time for every other exit).
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_stop_process_pools)
else:  # pragma: no cover - every CPython since 3.9 has it
    atexit.register(_stop_process_pools)

_SLOT: tuple[Any, int] | None = None  # in a worker: the shared (pid, call) table and this worker's row in it


def _init_worker(slots: Any) -> None:
    global _SLOT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # no glibc: the pipe to the parent still ends an orphaned worker
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    with slots.get_lock():  # claim a free row of the table
        table = slots.get_obj()
        row = next(i for i in range(len(table) // 2) if table[2 * i] == 0)
        table[2 * row], table[2 * row + 1] = os.getpid(), _IDLE
    _SLOT = (table, row)


def _call(key: int, token: int, args: tuple[Any, ...]) -> Any:
    slots, row = _SLOT if _SLOT is not None else (None, 0)
    if slots is not None:
        slots[2 * row + 1] = token  # if this worker dies, the parent knows which call killed it
    try:
        return _FUNCTIONS[key](*args)
    except BaseException as e:
        sendable = _sendable(e)
        if sendable is e:
            raise
        raise sendable from e  # the worker's traceback of ``e`` still travels, as the cause's text
    finally:
        if slots is not None:
            slots[2 * row + 1] = _IDLE


def _sendable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling both ways, else a :class:`WorkerError` with its type, text and notes."""
    try:
        ForkingPickler.loads(ForkingPickler.dumps(e))  # the round trip the pool makes (in memory, our object)
        return e
    except Exception as why:
        try:
            text = str(e)
        except Exception:
            text = "<str() of the exception failed>"
        name = f"{type(e).__module__}.{type(e).__qualname__}"
        replacement = WorkerError(
            f"{name}: {text} (raised in a worker process; it cannot be sent back to this process because "
            f"{type(why).__name__}: {why}. Make the exception picklable, or use worker_type='thread')"
        )
        for note in getattr(e, "__notes__", []):
            replacement.add_note(note)
        replacement.add_note("".join(traceback.format_exception(e)).rstrip())
        return replacement


def _death(code: int | None) -> str:
    if code is None:
        return "died"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"died with {signal.Signals(-code).name}"
        return f"died with signal {-code}"
    return f"exited with code {code}"


_ADVICE = {
    "SIGSEGV": "a crash in native code the function calls",
    "SIGBUS": "a crash in native code the function calls",
    "SIGABRT": "an abort in native code the function calls",
    "SIGKILL": "usually the out-of-memory killer (lower num_workers, prefetch or the block size) or a kill -9",
}


class ProcessExecutor(Executor):
    """``num_workers`` forked processes running registered functions (see the module docstring)."""

    def __init__(self, num_workers: int) -> None:
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("worker_type='process' needs the 'fork' start method (Linux, macOS); use threads")
        self.num_workers = num_workers
        self._keys: list[int] = []
        self._pool: ProcessPoolExecutor | None = None
        self._workers: list[Any] = []  # multiprocessing.Process objects, kept to read their exit codes
        self._slots: Any = None
        # token -> the call, while it is pending; described only if its worker dies (the pool holds the same
        # arguments as long)
        self._calls: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._failure: WorkerError | None = None
        self._terminating = False
        self._owner = os.getpid()

    def register(self, fn: Callable[..., Any]) -> None:
        """Make ``fn`` callable in the workers; only before :meth:`start`."""
        if self._pool is not None:
            raise RuntimeError("register every function before the workers start")
        key = id(fn)
        _FUNCTIONS[key] = fn
        self._keys.append(key)

    def start(self) -> None:
        """Fork the workers now (all of them: ``ProcessPoolExecutor`` starts them on the first task)."""
        if self._pool is None:
            context = multiprocessing.get_context("fork")
            self._slots = context.Array("q", 2 * self.num_workers)
            self._pool = ProcessPoolExecutor(
                self.num_workers, mp_context=context, initializer=_init_worker, initargs=(self._slots,)
            )
            self._pool.submit(os.getpid).result()
            self._workers = list((getattr(self._pool, "_processes", None) or {}).values())
            _PROCESS_POOLS.add(self)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs:
            raise TypeError("ProcessExecutor.submit takes positional arguments only")
        if id(fn) not in _FUNCTIONS:
            raise RuntimeError(f"{fn!r} was not registered before the workers started")
        self.start()
        assert self._pool is not None
        token = next(self._tokens)
        self._calls[token] = (fn, args)
        try:
            inner = self._pool.submit(_call, id(fn), token, args)
        except BrokenExecutor as e:  # a worker died before this call could be queued
            self._calls.pop(token, None)
            if self._terminating:
                raise
            raise self._diagnose(e) from e
        outer: Future[Any] = Future()
        outer.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)
        inner.add_done_callback(lambda f: self._settle(f, outer, token))
        return outer

    def _settle(self, inner: Future[Any], outer: Future[Any], token: int) -> None:
        """Pass ``inner``'s outcome to ``outer``; a broken pool becomes the diagnosis of the worker's death."""
        try:
            if inner.cancelled():
                outer.cancel()
                return
            error = inner.exception()
            if isinstance(error, BrokenExecutor) and not self._terminating:
                error = self._diagnose(error)
            with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
                if error is None:
                    outer.set_result(inner.result())
                else:
                    outer.set_exception(error)
        finally:
            self._calls.pop(token, None)

    def _diagnose(self, broken: BaseException) -> WorkerError:
        """Which worker died, how, and which call it was running (computed once, shared by every call)."""
        with self._lock:
            if self._failure is not None:
                return self._failure
            dead = self._dead_workers()
            if dead:
                pid, code = dead[0]
                token = self._running_call(pid)
                call = self._calls.get(token)
                what = describe_call(*call) if call is not None else "a call"
                doing = f"while running {what}" if token != _IDLE else "between calls"
                how = _death(code)
                why = _ADVICE.get(how.removeprefix("died with "), "os._exit() or exit() from native code")
                error = WorkerError(
                    f"worker process {pid} {how} {doing} ({why}). Rerun with num_workers=0 to see the failure "
                    "in this process, or with worker_type='thread'"
                )
            else:
                cause = broken.__cause__
                error = WorkerError(
                    "a worker process sent back a result or exception this process cannot read"
                    f"{' (' + str(cause).strip() + ')' if cause is not None else ''}; make the function return "
                    "plain data and raise exceptions that can be pickled, or use worker_type='thread'"
                )
            error.__cause__ = broken
            self._failure = error
            return error

    def _dead_workers(self) -> list[tuple[int, int | None]]:
        """(pid, exit code) of the workers that ended on their own (the pool terminates the others after)."""
        deadline = time.monotonic() + 1.0  # the pipe closes a moment before the exit status can be read
        while True:
            ended = [(p.pid, p.exitcode) for p in self._workers if p.exitcode is not None]
            if ended or time.monotonic() > deadline:
                own = [(pid, code) for pid, code in ended if code != -signal.SIGTERM]
                return own or ended
            time.sleep(0.01)

    def _running_call(self, pid: int) -> int:
        table = self._slots.get_obj()
        for i in range(self.num_workers):
            if table[2 * i] == pid:
                return int(table[2 * i + 1])
        return _IDLE

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
            self._pool = None
        for key in self._keys:
            _FUNCTIONS.pop(key, None)
        self._keys.clear()

    def terminate(self) -> None:
        """Stop now: cancel the queued calls, give the running ones GRACE_S to end, then kill the workers.

        The grace is not politeness: a worker killed while it writes a result leaves half a message in the
        pipe, and ``concurrent.futures`` then waits for the rest forever (at exit too). A worker still busy
        after GRACE_S is inside the user function, not writing.
        """
        self._terminating = True
        manager = getattr(self._pool, "_executor_manager_thread", None)
        workers = [p for p in self._workers if p.exitcode is None]
        self.shutdown(wait=False, cancel_futures=True)
        if manager is not None:
            manager.join(timeout=GRACE_S)  # it ends when the running calls have and the workers have left
        for p in workers:
            if p.exitcode is None:
                with contextlib.suppress(OSError):
                    p.terminate()
        deadline = time.monotonic() + GRACE_S
        for p in workers:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                with contextlib.suppress(OSError):
                    p.kill()
                p.join(timeout=GRACE_S)

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and monitoring)."""
        return sorted(p.pid for p in self._workers if p.exitcode is None)
