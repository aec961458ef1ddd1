"""Loader workers: threads and forked processes give the same batches for any worker count, resume exactly
with deep prefetch, re-raise a worker's exception with its place, and leave no process behind after
``break``, an exception, or Ctrl-C."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import pytest

import headrace as hr
import headrace.workers as workers_module
from headrace.testing import check_resume
from headrace.workers import ProcessExecutor, ThreadExecutor

pytestmark = pytest.mark.timeout(120)


def pipeline(parquet_dir: Path, pid: bool = False) -> hr.Dataset:
    """A Python-heavy row map and a filter, both lambdas: processes inherit them, nothing is pickled.
    ``pid``: also say which process ran the map."""
    return (
        hr.open(str(parquet_dir), columns=["id", "text"], block_rows=256)
        .shuffle(seed=2, buffer_size=500)
        .map(lambda r: {"words": len(r["text"].split()), **({"pid": os.getpid()} if pid else {})})
        .filter(lambda r: r["id"] % 7 != 3)
        .batch(100)
    )


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def wait_gone(pids: set[int]) -> set[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        if not alive:
            return set()
        time.sleep(0.05)
    return alive


def test_threads_and_processes_give_the_same_batches_for_any_worker_count(parquet_dir: Path) -> None:
    ds = pipeline(parquet_dir)
    want = [(b["id"].tolist(), b["words"].tolist()) for b in hr.Loader(ds)]
    assert sum(len(i) for i, _ in want) == sum(1 for i in range(5000) if i % 7 != 3)
    for kind in ("thread", "process"):
        for workers in (1, 2, 4):
            loader = hr.Loader(ds, num_workers=workers, worker_type=kind)
            got = [(b["id"].tolist(), b["words"].tolist()) for b in loader]
            assert got == want, (kind, workers)
    loader = hr.Loader(pipeline(parquet_dir, pid=True), num_workers=2, worker_type="process")
    pids = {p for b in loader for p in b["pid"].tolist()}
    assert len(pids) == 2 and os.getpid() not in pids  # the map ran in the two workers


def test_process_workers_resume_exactly_with_deep_prefetch(parquet_dir: Path) -> None:
    report = check_resume(pipeline(parquet_dir), num_workers=2, prefetch=8, every=7, worker_type="process")
    assert report.steps == 43 and report.restores >= 6


def test_no_worker_process_is_left_after_break(parquet_dir: Path) -> None:
    before = children()
    loader = hr.Loader(pipeline(parquet_dir), num_workers=3, worker_type="process", prefetch=8)
    for step, _ in enumerate(loader):
        if step == 0:
            workers = children() - before
        if step == 5:
            break
    assert len(workers) == 3
    assert wait_gone(workers) == set()
    assert json.loads(json.dumps(loader.state_dict()))["batches"] == 6


def boom(row: dict[str, Any]) -> dict[str, Any]:
    if row["id"] == 1234:
        raise ValueError("bad row 1234")
    return {}


def test_a_worker_exception_is_raised_here_with_its_place_and_no_worker_is_left(parquet_dir: Path) -> None:
    before = children()
    loader = hr.Loader(hr.open(str(parquet_dir), columns=["id"]).map(boom).batch(10), num_workers=2,
                       worker_type="process")  # fmt: skip
    with pytest.raises(ValueError, match="bad row 1234") as e:
        for _ in loader:
            pass
    notes = " ".join(getattr(e.value, "__notes__", []))
    assert "raised by map(boom) on a block starting at" in notes and "part-00001.parquet" in notes
    assert "in boom" in str(e.value.__cause__)  # the worker's traceback
    assert wait_gone(children() - before) == set()


SIGINT_JOB = """
import json, os, signal, sys, time
import headrace as hr

# Python leaves SIGINT ignored when it starts with it ignored, as the background jobs of a shell script do
signal.signal(signal.SIGINT, signal.default_int_handler)

def slow(row):
    time.sleep(0.01)
    return {}

loader = hr.Loader(hr.open(sys.argv[1], columns=["id"]).map(slow).batch(10), num_workers=2,
                   worker_type="process", prefetch=4)
import psutil
for step, batch in enumerate(loader):
    if step == 2:
        pids = [p.pid for p in psutil.Process().children(recursive=True)]
        print(json.dumps(pids), flush=True)
"""


def test_ctrl_c_stops_the_loader_and_its_workers(parquet_dir: Path) -> None:
    run = subprocess.Popen([sys.executable, "-c", SIGINT_JOB, str(parquet_dir)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert run.stdout is not None
    workers = set(json.loads(run.stdout.readline()))
    assert len(workers) == 2
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode != 0 and "KeyboardInterrupt" in err
    assert wait_gone(workers) == set()


def test_workers_die_with_a_killed_parent(parquet_dir: Path) -> None:
    run = subprocess.Popen([sys.executable, "-c", SIGINT_JOB, str(parquet_dir)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert run.stdout is not None
    workers = set(json.loads(run.stdout.readline()))
    run.kill()
    run.wait(timeout=30)
    assert wait_gone(workers) == set()


def test_bad_worker_type_is_refused(parquet_dir: Path) -> None:
    with pytest.raises(ValueError, match="worker_type must be 'thread' or 'process'"):
        hr.Loader(hr.open(str(parquet_dir)), worker_type="fiber")


def test_thread_executor_terminate_does_not_wait_for_a_call_that_never_returns() -> None:
    release = threading.Event()
    pool = ThreadExecutor(2, name="headrace-test")
    stuck = pool.submit(release.wait)
    queued = [pool.submit(time.sleep, 0) for _ in range(4)]
    while not stuck.running():
        time.sleep(0.01)
    pool.terminate()  # returns at once: the stuck thread is a daemon, left behind
    with pytest.raises(hr.WorkerError, match="the loader stopped its worker threads while this call ran"):
        stuck.result(timeout=10)
    assert all(f.cancelled() or f.done() for f in queued)
    assert all(t.daemon for t in pool.alive())
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(time.sleep, 0)
    release.set()
    pool.shutdown(wait=True)
    assert pool.alive() == []


def test_a_worker_process_killed_mid_call_is_named_with_its_signal() -> None:
    running = multiprocessing.get_context("fork").Value("q", 0)

    def stall(x: int) -> int:
        running.value = os.getpid()
        time.sleep(60)
        return x

    pool = ProcessExecutor(2)
    pool.register(stall)
    pool.start()
    future = pool.submit(stall, 7)
    deadline = time.monotonic() + 30
    while running.value == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(running.value, signal.SIGKILL)  # the out-of-memory killer's way: no goodbye
    with pytest.raises(hr.WorkerError) as e:
        future.result(timeout=30)
    assert f"worker process {running.value} died with SIGKILL while running " in str(e.value)
    assert "<locals>.stall (usually the out-of-memory killer" in str(e.value)
    pool.terminate()
    assert wait_gone(set(pool.pids())) == set()


def test_terminate_fails_a_call_that_a_worker_is_just_starting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``terminate()`` snapshotting the running calls right as a worker marks one running still fails it."""
    release = threading.Event()
    pools: list[ThreadExecutor] = []

    class Starting(Future):  # type: ignore[type-arg]
        def set_running_or_notify_cancel(self) -> bool:
            running = super().set_running_or_notify_cancel()
            stopped = threading.Event()
            threading.Thread(target=lambda: (pools[0].terminate(), stopped.set()), daemon=True).start()
            stopped.wait(timeout=0.5)  # terminate() either runs now or waits for the worker's lock
            return running

    monkeypatch.setattr(workers_module, "Future", Starting)
    pools.append(ThreadExecutor(1, name="headrace-test"))
    call = pools[0].submit(release.wait)
    try:
        with pytest.raises(hr.WorkerError, match="the loader stopped its worker threads while this call ran"):
            call.result(timeout=10)
    finally:
        release.set()


EXIT_HOOK_WITHOUT_PRIVATE_API = """
import atexit, threading
import concurrent.futures.process, concurrent.futures.thread  # they use threading's hook, as they are
del threading._register_atexit
seen = []
register = atexit.register
atexit.register = lambda fn, *args, **kwargs: (seen.append(fn.__name__), register(fn, *args, **kwargs))[1]
import headrace.workers
print(seen)
"""


def test_the_process_exit_hook_falls_back_to_atexit_without_threadings_private_hook() -> None:
    job = subprocess.run([sys.executable, "-c", EXIT_HOOK_WITHOUT_PRIVATE_API], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert "'_stop_process_pools'" in job.stdout


class Described:
    """Returns its argument; its description of a call is recorded (in this process) each time it is asked for."""

    def __init__(self) -> None:
        self.described: list[int] = []

    def __call__(self, x: int) -> int:
        if x == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    def describe_call(self, x: int) -> str:
        self.described.append(x)
        return f"described({x})"


def test_a_call_is_described_only_when_its_worker_dies() -> None:
    fn = Described()
    pool = ProcessExecutor(1)
    pool.register(fn)
    pool.start()
    try:
        assert [pool.submit(fn, i).result(timeout=30) for i in range(3)] == [0, 1, 2]
        assert fn.described == []
        with pytest.raises(hr.WorkerError, match=r"died with SIGKILL while running described\(3\) "):
            pool.submit(fn, 3).result(timeout=30)
        assert fn.described == [3]
    finally:
        pool.terminate()
