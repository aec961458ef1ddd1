"""The training examples in examples/ run at a tiny size, on the real corpora, and do what they say: losses
fall, checkpoints resume exactly, ranks take equal steps. Each runs as a subprocess, as a user would run
it, and is judged by the JSON lines it writes with --metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL_PLAYS = "phoenix_and_the_turtle_gut,passionate_pilgrim_gut"  # 16 KB: a few batches per epoch


def run(*args: str, timeout: int = 200) -> subprocess.CompletedProcess[str]:
    # One thread per process: on a busy 2-core machine, torch's and XLA's thread pools otherwise spin
    # against each other and a tiny step takes a second.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(path: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in lines(path) if "loss" in e}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(240)
def test_flax_gpt_loss_falls_on_a_sharded_stream(tmp_path: Path) -> None:
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    metrics = tmp_path / "flax.jsonl"
    done = run(str(EXAMPLES / "flax_gpt.py"), "--work", str(tmp_path), "--steps", "40", "--log_every", "10",
               "--batch_size", "8", "--seq_len", "32", "--dim", "32", "--layers", "1", "--cpu_devices", "2",
               "--metrics", str(metrics))  # fmt: skip
    assert "2 device(s)" in done.stdout  # the batch dimension split over two devices
    got = losses(metrics)
    assert sorted(got) == [1, 10, 20, 30, 40]
    assert got[40] < 0.9 * got[1], got
    assert json.loads((tmp_path / "loader_state.json").read_text())  # the data position, as a checkpoint holds it


@pytest.mark.timeout(240)
def test_bert_mlm_loss_falls_with_masking_in_the_pipeline(tmp_path: Path, bert_dir: str) -> None:
    pytest.importorskip("transformers")
    metrics = tmp_path / "bert.jsonl"
    run(str(EXAMPLES / "bert_mlm.py"), "--work", str(tmp_path), "--tokenizer", bert_dir, "--steps", "30",
        "--log_every", "10", "--batch_size", "8", "--seq_len", "32", "--plays", "macbeth_gut",
        "--metrics", str(metrics))  # fmt: skip
    logged = lines(metrics)
    assert [e["step"] for e in logged] == [1, 10, 20, 30]
    assert all(0.05 * 8 * 32 < e["masked"] < 0.3 * 8 * 32 for e in logged)  # about 15% of 256 tokens
    assert logged[-1]["loss"] < 0.9 * logged[0]["loss"], logged


def torchrun(*args: str) -> None:
    launch = ["-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
              f"--master_port={free_port()}"]  # fmt: skip
    run(*launch, str(EXAMPLES / "ddp_torchrun.py"), *args)


@pytest.mark.timeout(300)
def test_ddp_ranks_take_equal_steps_and_a_resume_repeats_the_same_batches_and_losses(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    tiny = ["--max_steps", "12", "--save_every", "6", "--log_every", "1", "--seq_len", "32", "--batch_size", "8",
            "--dim", "32", "--layers", "1"]  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun("--out", str(a), "--plays", SMALL_PLAYS, "--metrics", str(tmp_path / "a.jsonl"), *tiny)
    full = lines(tmp_path / "a.jsonl")
    assert [e["step"] for e in full[:-1]] == list(range(1, 13))
    assert [(r["rank"], r["steps"]) for r in full[-1]["ranks"]] == [(0, 12), (1, 12)]  # equal steps on both ranks
    # Packing: the ranks' epochs end at different steps; each rank's loader goes on into its next epoch.
    assert max(full[-2]["epochs"]) >= 1
    assert all(len(set(e["batches"])) == 2 for e in full[:-1])  # the ranks read different data
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == ["step-000006", "step-000012"]
    assert (a / "checkpoints" / "step-000006" / "loader-rank1.json").exists()

    torchrun("--out", str(b), "--resume", str(a / "checkpoints" / "step-000006"),
             "--metrics", str(tmp_path / "b.jsonl"), *tiny)  # fmt: skip
    resumed = lines(tmp_path / "b.jsonl")
    assert [(r["rank"], r["steps"], r["step"]) for r in resumed[-1]["ranks"]] == [(0, 6, 12), (1, 6, 12)]
    assert resumed[:-1] == full[6:-1]  # steps 7..12: the same batches on every rank, the same losses


@pytest.mark.timeout(200)
def test_resume_demo_resumes_in_a_new_process_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """The demo streams every paragraph of the shipped corpora that passes its filter, checkpoints after half the
    batches and a new process streams exactly the other half; without --out it works in a temporary folder that
    it removes, and nothing is written into the checkout."""
    sys.path.insert(0, str(Path(__file__).parent))
    from corpora import paragraphs

    texts = paragraphs().column("text").to_pylist()
    rows = sum(len(t) >= 20 for t in texts)  # the demo's filter
    batches = -(-rows // 256)
    expected = [
        f"epoch 0: {batches} batches, {rows:,} rows",
        f"checkpoint after batch {batches // 2}: ",
        "resumed in a new process: first batch after ",
        "continuation identical to the uninterrupted run: YES",
    ]
    assert (rows, batches) == (127_168, 497)  # the corpora in corpora/corpora.tar.zst

    out = tmp_path / "out"
    done = run(str(EXAMPLES / "resume_demo.py"), "--out", str(out))
    printed = done.stdout.splitlines()
    assert printed[0] == f"headrace {__import__('headrace').__version__} demo: {out}/corpus/*.parquet"
    assert [line[: len(want)] for line, want in zip(printed[1:], expected, strict=True)] == expected
    assert printed[3].endswith(f" s, {batches - batches // 2} batches")
    assert sorted(p.name for p in out.iterdir()) == ["corpus", "state.json"]
    assert sorted(p.name for p in (out / "corpus").iterdir()) == [f"part-{i:05d}.parquet" for i in range(8)]

    scratch = tmp_path / "tmp"  # the default: a temporary folder, removed at the end
    scratch.mkdir()
    old_places = [EXAMPLES.parent / ".demo" / "corpus", EXAMPLES.parent / ".demo" / "state.json"]  # before #15
    there = [p.exists() for p in old_places]
    env = {**os.environ, "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    again = subprocess.run([sys.executable, str(EXAMPLES / "resume_demo.py"), "--docs", "3"], capture_output=True,
                           text=True, timeout=120, env=env, cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[-1] == "continuation identical to the uninterrupted run: YES"
    assert list(scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tmp"]  # its working directory: nothing either
    assert [p.exists() for p in old_places] == there
