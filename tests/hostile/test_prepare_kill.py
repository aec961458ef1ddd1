"""``headrace prepare`` SIGKILLed, workers and all, at seeded random points, again and again, then rerun: the token
shards and the manifest are byte-identical to an uninterrupted run, and the rerun redoes only unfinished units.

tests/test_prepare.py kills the main process once, after the first finished unit, and checks that its
workers quit by themselves. Here the whole process group dies (as with the OOM killer or a lost node),
at points drawn from a fixed seed: during start-up, while units are written, while a rerun checks what
is done, and after the last unit; each rerun may itself be killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headrace.prepare import prepare
from headrace.prepare.store import STATE_DIR

pytestmark = pytest.mark.timeout(240)

UNIT_ROWS, TOKENS_PER_SHARD = 250, 3000
UNITS = 20  # 5,000 paragraphs in two files of 2,500 rows


def outputs(folder: Path) -> dict[str, bytes]:
    """Every shard and the manifest, by name."""
    names = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".idx") or p.name == "manifest.json")
    return {name: (folder / name).read_bytes() for name in names}


def finished(out: Path) -> int:
    return len(list((out / STATE_DIR).glob("*.done.json")))


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table) -> Path:
    folder = tmp_path_factory.mktemp("prepare-kill")
    for i in range(2):
        pq.write_table(corpus.slice(i * 2500, 2500), folder / f"part-{i:05d}.parquet")
    return folder


def test_killed_at_random_points_again_and_again_the_rerun_is_exact(data: Path, bpe_path: str, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    prepare(str(data), whole, bpe_path, workers=1, unit_rows=UNIT_ROWS, tokens_per_shard=TOKENS_PER_SHARD, quiet=True)
    want = outputs(whole)
    assert json.loads(want["manifest.json"])["totals"]["documents"] == 5000

    out = tmp_path / "killed"
    options = ["--unit-rows", str(UNIT_ROWS), "--tokens-per-shard", str(TOKENS_PER_SHARD), "--workers", "2"]
    cmd = [sys.executable, "-m", "headrace", "prepare", str(data), str(out), "--tokenizer", bpe_path, *options, "-q"]
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    rng = random.Random(14)
    kills = 0
    for attempt in range(5):
        before = finished(out) if (out / STATE_DIR).exists() else 0
        # a kill point: after a seeded delay (start-up, the resume check), or once a seeded number of units is done.
        # Small steps: on a fast machine a run given 5 units or 1.5 s could finish before its kill point.
        target = min(UNITS - 1, before + rng.randint(1, 2))  # never the last unit: the run must not end first
        delay = rng.uniform(0.0, 0.4) if attempt % 2 == 0 or before >= UNITS - 1 else None
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
        try:
            began = time.monotonic()
            while proc.poll() is None and time.monotonic() - began < 60:
                if delay is not None and time.monotonic() - began >= delay:
                    break
                if delay is None and (out / STATE_DIR).exists() and finished(out) >= target:
                    break
                time.sleep(0.005)
            ended = proc.poll() is not None
        finally:
            kill_group(proc)
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        if ended:  # it finished before the kill point: the output must already be exact
            assert proc.returncode == 0, stderr[-3000:]
            break
        kills += 1
        assert not (out / "manifest.json").exists() or finished(out) == UNITS
    assert kills >= 3  # the job is big enough to be killed several times

    done_before = finished(out)  # every completion record a kill left is valid: written last, renamed into place
    assert done_before > 0
    rerun = subprocess.run([*cmd[:-1], "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    run = json.loads(rerun.stdout)["run"]
    assert run["units"] == UNITS and run["resumed_units"] == done_before  # nothing done twice
    assert outputs(out) == want
    leftovers = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
    leftovers += sorted(p.name for p in (out / STATE_DIR).iterdir() if p.name.endswith(".tmp"))
    assert leftovers == []
    assert sorted(p.name for p in (out / STATE_DIR).iterdir() if not p.name.endswith(".done.json")) == [
        "job.json",
        "lock",
    ]
