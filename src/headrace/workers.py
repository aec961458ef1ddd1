"""Worker processes for the Loader: ``map``/``filter`` functions run in forked processes, in order.

Threads are the default (Arrow, tokenizers and I/O release the GIL); processes are for Python-heavy user
functions. A :class:`ProcessExecutor` is an executor whose ``submit(fn, block)`` runs ``fn(block)`` in a
worker process. The functions are registered while the pipeline is built and the workers are forked
after that, so they inherit every function — lambdas and closures included, nothing is pickled but the
blocks. Workers ignore Ctrl-C (the main process handles it and shuts them down) and die with their
parent (``PR_SET_PDEATHSIG`` on Linux): no orphans after ``break``, an exception or a kill.

>>> from headrace.workers import ProcessExecutor
>>> double = lambda x: 2 * x
>>> with ProcessExecutor(2) as pool:
...     pool.register(double)
...     pool.start()
...     [pool.submit(double, i).result() for i in range(4)]
[0, 2, 4, 6]
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

_FUNCTIONS: dict[int, Callable[..., Any]] = {}  # filled before the fork: the workers inherit it
_PR_SET_PDEATHSIG = 1


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # no glibc: the pipe to the parent still ends an orphaned worker
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _call(key: int, args: tuple[Any, ...]) -> Any:
    return _FUNCTIONS[key](*args)


class ProcessExecutor(Executor):
    """``num_workers`` forked processes running registered functions (see the module docstring)."""

    def __init__(self, num_workers: int) -> None:
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("worker_type='process' needs the 'fork' start method (Linux, macOS); use threads")
        self.num_workers = num_workers
        self._keys: list[int] = []
        self._pool: ProcessPoolExecutor | None = None

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
            self._pool = ProcessPoolExecutor(self.num_workers, mp_context=context, initializer=_init_worker)
            self._pool.submit(os.getpid).result()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs:
            raise TypeError("ProcessExecutor.submit takes positional arguments only")
        if id(fn) not in _FUNCTIONS:
            raise RuntimeError(f"{fn!r} was not registered before the workers started")
        self.start()
        assert self._pool is not None
        return self._pool.submit(_call, id(fn), args)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
            self._pool = None
        for key in self._keys:
            _FUNCTIONS.pop(key, None)
        self._keys.clear()

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and monitoring)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return sorted(processes)
