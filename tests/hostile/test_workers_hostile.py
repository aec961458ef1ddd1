"""Hostile user functions in loader workers: they hang, die, raise odd exceptions or return the wrong thing.

Whatever the function does, with threads or processes, the loader never hangs: Ctrl-C stops it and its
workers, ``Loader(timeout=...)`` names the stuck stage and block, a dead worker process is diagnosed (its
stage, its block, its exit code or signal), and every error names the stage and the place.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import headrace as hr

pytestmark = pytest.mark.timeout(120)
KINDS = [("thread", 2), ("process", 2), ("thread", 0)]


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Three JSONL shards of 100 rows: a.jsonl ids 0-99, b.jsonl 100-199, c.jsonl 200-299."""
    for n, name in enumerate("abc"):
        rows = (json.dumps({"id": i}) for i in range(100 * n, 100 * n + 100))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    return tmp_path


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def wait_gone(pids: set[int]) -> set[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = set()
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.add(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return set()
        time.sleep(0.05)
    return alive


def run(shards: Path, fn: Callable[[Any], Any], kind: str, workers: int, **options: Any) -> list[int]:
    loader = hr.Loader(hr.open(str(shards)).map(fn, **options).batch(10), num_workers=workers, worker_type=kind)
    return [i for b in loader for i in b["id"].tolist()]


def notes(e: BaseException) -> str:
    return " ".join(getattr(e, "__notes__", []))


@pytest.fixture
def no_worker_left() -> Iterator[None]:
    before = children()
    yield
    assert wait_gone(children() - before) == set()


# -- hangs ----------------------------------------------------------------------------------------------
HUNG_JOB = """
import os, signal, sys, threading, time
import headrace as hr

signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with it ignored

def hang(row):
    if row["id"] == 150:
        print("hanging", flush=True)
        threading.Event().wait()  # never returns
    return {}

def ctrl_c_caught_by_another_thread():  # the kernel hands a process's SIGINT to any thread not blocking it
    while not os.path.exists(sys.argv[5]):  # no stdin: a forked worker closing it would wait for this thread
        time.sleep(0.05)
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)

if sys.argv[4] == "elsewhere":
    threading.Thread(target=ctrl_c_caught_by_another_thread, daemon=True).start()
loader = hr.Loader(hr.open(sys.argv[1]).map(hang).batch(10), num_workers=int(sys.argv[3]),
                   worker_type=sys.argv[2], prefetch=2)
for batch in loader:
    pass
"""


@pytest.mark.parametrize("caught_by", ["main", "elsewhere"])
@pytest.mark.parametrize("kind,workers", KINDS)
def test_ctrl_c_stops_a_loader_whose_map_never_returns(shards: Path, kind: str, workers: int, caught_by: str) -> None:
    go = shards / "go"
    job = subprocess.Popen([sys.executable, "-c", HUNG_JOB, str(shards), kind, str(workers), caught_by, str(go)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert job.stdout is not None
    assert job.stdout.readline() == "hanging\n"
    workers_of_job = {p.pid for p in psutil.Process(job.pid).children(recursive=True)}
    assert len(workers_of_job) == (workers if kind == "process" else 0)
    if caught_by == "main":
        job.send_signal(signal.SIGINT)  # one Ctrl-C
    else:  # one Ctrl-C that another thread caught: the training loop's wait used to never see it
        go.touch()
    try:
        _, err = job.communicate(timeout=20)  # a hang guard, not a speed assertion
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail(f"a single Ctrl-C did not stop the loader: {job.communicate()}")
    assert job.returncode != 0
    assert err.rstrip().splitlines()[-1] == "KeyboardInterrupt"
    assert wait_gone(workers_of_job) == set()


released = threading.Event()  # lets the test's hung threads go at the end: no thread left in this process


def hang_on_b(row: dict[str, Any]) -> dict[str, Any]:
    if row["id"] >= 100:
        released.wait(timeout=60)
    return {}


@pytest.mark.parametrize("kind,workers", KINDS)
def test_timeout_names_the_stage_and_the_block_it_is_stuck_on(
    shards: Path, kind: str, workers: int, no_worker_left: None
) -> None:
    released.clear()
    loader = hr.Loader(hr.open(str(shards)).map(hang_on_b).batch(10), num_workers=workers, worker_type=kind,
                       timeout=1.0)  # fmt: skip
    got = []
    try:
        with pytest.raises(hr.LoaderTimeout) as e:
            for batch in loader:
                got += batch["id"].tolist()
    finally:
        released.set()
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, hr.HeadraceError)
    assert f"map(hang_on_b) on a block starting at {shards / 'b.jsonl'} (record 0) has not returned" in str(e.value)
    assert "Loader(timeout=1) seconds" in str(e.value)
    assert got == list(range(100))
    assert loader.state_dict()["batches"] == 10  # the state is still the last batch delivered


def test_timeout_names_the_stuck_call_inside_a_mixture(shards: Path, no_worker_left: None) -> None:
    released.clear()
    stuck = hr.open(str(shards / "b.jsonl")).map(hang_on_b)
    mixture = hr.mix({"a": hr.open(str(shards / "a.jsonl")), "b": stuck}, {"a": 0.5, "b": 0.5})
    loader = hr.Loader(mixture.batch(10), num_workers=2, timeout=1.0)
    try:
        with pytest.raises(hr.LoaderTimeout) as e:
            list(loader)
    finally:
        released.set()
    assert f"map(hang_on_b) on a block starting at {shards / 'b.jsonl'} (record 0) has not returned" in str(e.value)


TIMEOUT_JOB = """
import sys, threading
import headrace as hr

def hang(row):
    threading.Event().wait()  # never returns
    return {}

loader = hr.Loader(hr.open(sys.argv[1]).map(hang).batch(10), num_workers=int(sys.argv[3]),
                   worker_type=sys.argv[2], timeout=0.5)
try:
    next(iter(loader))
except hr.LoaderTimeout as e:
    print(type(e).__name__, flush=True)
"""


@pytest.mark.parametrize("kind,workers", KINDS)
def test_a_process_whose_loader_timed_out_exits(shards: Path, kind: str, workers: int) -> None:
    job = subprocess.run([sys.executable, "-c", TIMEOUT_JOB, str(shards), kind, str(workers)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (job.returncode, job.stdout) == (0, "LoaderTimeout\n"), job.stderr


class StuckSource:
    """A duck-typed ``datasets.IterableDataset`` whose reading blocks until ``released``: a source that hangs."""

    def with_format(self, _: str) -> StuckSource:
        return self

    def set_epoch(self, _: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def iter(self, batch_size: int) -> Iterator[Any]:
        released.wait(timeout=60)
        yield from ()


def test_timeout_without_a_running_function_names_the_stages() -> None:
    released.clear()
    loader = hr.Loader(hr.from_hf(StuckSource()).batch(10), timeout=0.5)
    try:
        with pytest.raises(hr.LoaderTimeout) as e:
            list(loader)
    finally:
        released.set()
    assert "no map or filter function was running: the pipeline (batch <- hf) is waiting for its data" in str(e.value)


# -- dead workers ---------------------------------------------------------------------------------------
def exit_on_b(row: dict[str, Any]) -> dict[str, Any]:
    if row["id"] == 100:
        os._exit(3)
    return {}


def segfault_on_b(row: dict[str, Any]) -> dict[str, Any]:
    if row["id"] == 100:
        faulthandler.disable()  # pytest's, inherited by the fork: no dump of this worker's stack in the log
        ctypes.string_at(0)
    return {}


def sigkill_on_b(row: dict[str, Any]) -> dict[str, Any]:
    if row["id"] == 100:
        os.kill(os.getpid(), signal.SIGKILL)
    return {}


@pytest.mark.parametrize(
    "fn,how",
    [(exit_on_b, "exited with code 3"), (segfault_on_b, "died with SIGSEGV"), (sigkill_on_b, "died with SIGKILL")],
)
def test_a_dead_worker_process_is_diagnosed(
    shards: Path, fn: Callable[..., Any], how: str, no_worker_left: None
) -> None:
    with pytest.raises(hr.WorkerError) as e:
        run(shards, fn, "process", 2)
    message = str(e.value)
    name = fn.__name__
    assert f"{how} while running map({name}) on a block starting at {shards / 'b.jsonl'} (record 0)" in message
    assert "num_workers=0" in message  # what to do
    assert type(e.value.__cause__).__name__ == "BrokenProcessPool"


# -- odd exceptions -------------------------------------------------------------------------------------
class NotAnException(BaseException):
    pass


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


class NeedsTwo(Exception):
    def __init__(self, a: str, b: str) -> None:  # unpickling calls NeedsTwo(message): a TypeError
        super().__init__(f"{a} and {b}")


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() fails too")


def raiser(error: Callable[[], BaseException]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def odd(row: dict[str, Any]) -> dict[str, Any]:
        if row["id"] == 100:
            raise error()
        return {}

    return odd


@pytest.mark.parametrize("kind,workers", KINDS)
def test_a_base_exception_from_a_map_names_the_stage_and_place(
    shards: Path, kind: str, workers: int, no_worker_left: None
) -> None:
    with pytest.raises(NotAnException) as e:
        run(shards, raiser(NotAnException), kind, workers)
    where = f"raised by map(raiser.<locals>.odd) on a block starting at {shards / 'b.jsonl'} (record 0)"
    assert where in notes(e.value)


@pytest.mark.parametrize("kind,workers", KINDS)
def test_an_exception_whose_str_raises_names_the_stage_and_place(
    shards: Path, kind: str, workers: int, no_worker_left: None
) -> None:
    with pytest.raises(BadStr) as e:
        run(shards, raiser(BadStr), kind, workers)
    assert f"map(raiser.<locals>.odd) on a block starting at {shards / 'b.jsonl'} (record 0)" in notes(e.value)


@pytest.mark.parametrize("error", [Unpicklable, lambda: NeedsTwo("one", "two")], ids=["unpicklable", "needs-two"])
def test_an_exception_that_cannot_leave_a_worker_process_is_described(
    shards: Path, error: Callable[[], BaseException], no_worker_left: None
) -> None:
    with pytest.raises(hr.WorkerError) as e:
        run(shards, raiser(error), "process", 2)
    name = type(error()).__qualname__
    assert f"{__name__}.{name}: " in str(e.value) and "cannot be sent back" in str(e.value)
    where = f"raised by map(raiser.<locals>.odd) on a block starting at {shards / 'b.jsonl'} (record 0)"
    assert where in notes(e.value)
    assert "in odd" in notes(e.value)  # the worker's traceback


@pytest.mark.parametrize("error", [Unpicklable, lambda: NeedsTwo("one", "two")], ids=["unpicklable", "needs-two"])
def test_an_unpicklable_exception_from_a_thread_is_raised_as_is(
    shards: Path, error: Callable[[], BaseException]
) -> None:
    with pytest.raises((Unpicklable, NeedsTwo)) as e:
        run(shards, raiser(error), "thread", 2)
    assert f"map(raiser.<locals>.odd) on a block starting at {shards / 'b.jsonl'} (record 0)" in notes(e.value)


# -- wrong returns --------------------------------------------------------------------------------------
def returns_a_list(row: dict[str, Any]) -> Any:
    return [row["id"]]


def returns_other_keys(row: dict[str, Any]) -> dict[str, Any]:
    return {"a": 1} if row["id"] != 150 else {"b": 2}


def returns_ragged_columns(batch: dict[str, Any]) -> dict[str, Any]:
    return {"a": [1, 2, 3], "b": [1]}


@pytest.mark.parametrize("kind,workers", KINDS)
@pytest.mark.parametrize(
    "fn,batched,error,where",
    [
        (returns_a_list, False, "map(returns_a_list) must return a dict per row, got list", "a.jsonl (record 0)"),
        (returns_other_keys, False, "map(returns_other_keys): every row must return a dict with the same keys",
         "b.jsonl (record 0)"),
        (returns_ragged_columns, True, "map(returns_ragged_columns) returned columns of different lengths",
         "a.jsonl (record 0)"),
    ],
)  # fmt: skip
def test_a_map_returning_the_wrong_thing_names_the_stage_and_place(
    shards: Path, kind: str, workers: int, fn: Callable[..., Any], batched: bool, error: str, where: str,
    no_worker_left: None,
) -> None:  # fmt: skip
    with pytest.raises((TypeError, ValueError)) as e:
        run(shards, fn, kind, workers, batched=batched)
    assert error in str(e.value)
    assert f"raised by map({fn.__name__}) on a block starting at {shards / where}" in notes(e.value)


@pytest.mark.parametrize("kind,workers", KINDS)
def test_a_filter_returning_a_wrong_mask_names_the_stage_and_place(
    shards: Path, kind: str, workers: int, no_worker_left: None
) -> None:
    def short_mask(batch: dict[str, Any]) -> list[bool]:
        return [True]

    loader = hr.Loader(hr.open(str(shards)).filter(short_mask, batched=True).batch(10), num_workers=workers,
                       worker_type=kind)  # fmt: skip
    with pytest.raises(ValueError, match=r"filter\(.*short_mask\) must return one boolean per row \(64\)") as e:
        list(loader)
    assert f"short_mask) on a block starting at {shards / 'a.jsonl'} (record 0)" in notes(e.value)
