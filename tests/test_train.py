"""``headrace train``, the main job: on the built-in corpus the loss falls; killed after a checkpoint and
resumed, it reproduces the uninterrupted run's losses exactly (CPU, fixed seeds)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.timeout(240)


def train(out: Path, *flags: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "headrace", "train", "--out", str(out), "--log-every", "1", "--metrics",
           str(out.with_suffix(".jsonl")), *flags]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, out.with_suffix(".jsonl").read_text().splitlines())]


def test_the_loss_falls_on_the_built_in_corpus(tmp_path: Path) -> None:
    run = train(tmp_path / "a", "--max-steps", "60", "--seq-len", "64")
    got = losses(tmp_path / "a")
    assert [s for s, _ in got] == list(range(1, 61))
    first, last = sum(v for _, v in got[:3]) / 3, sum(v for _, v in got[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert "trained 60 steps" in run.stdout and "data wait" in run.stdout
    assert (tmp_path / "a" / "checkpoint.pt").exists() and (tmp_path / "a" / "tokenizer.json").exists()


def test_killed_and_resumed_it_reproduces_the_uninterrupted_losses_exactly(tmp_path: Path) -> None:
    flags = ["--max-steps", "40", "--checkpoint-every", "20", "--seq-len", "64"]
    train(tmp_path / "whole", *flags)
    want = dict(losses(tmp_path / "whole"))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "headrace", "train", "--out", str(killed), "--log-every", "1", "--metrics",
           str(killed.with_suffix(".jsonl")), *flags]  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and run.poll() is None:
        done = killed.with_suffix(".jsonl")
        if done.exists() and len(done.read_text().splitlines()) >= 25:  # past the checkpoint at step 20
            break
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before it could be killed"
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    before = losses(killed)
    assert 25 <= len(before) < 40
    train(killed, *flags, "--resume")
    resumed = losses(killed)[len(before) :]
    assert [s for s, _ in resumed] == list(range(21, 41))  # from the checkpoint, not from the kill
    assert resumed == [(s, want[s]) for s in range(21, 41)]  # the same losses, bit for bit
    assert before[:20] == [(s, want[s]) for s in range(1, 21)]


def test_train_on_given_data_and_clear_errors(tmp_path: Path, parquet_dir: Path) -> None:
    train(tmp_path / "p", "--data", str(parquet_dir), "--max-steps", "5", "--seed", "1")
    assert [s for s, _ in losses(tmp_path / "p")] == [1, 2, 3, 4, 5]
    missing = train(tmp_path / "nothing", "--resume", check=False)
    assert missing.returncode == 2
    assert f"--resume: no checkpoint at {tmp_path / 'nothing' / 'checkpoint.pt'}" in missing.stderr
    bad = train(tmp_path / "bad", "--embd", "30", "--heads", "4", check=False)
    assert bad.returncode == 2 and "--embd (30) must be a multiple of --heads (4)" in bad.stderr
