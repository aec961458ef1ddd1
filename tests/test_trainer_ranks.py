"""transformers.Trainer on two ranks (torchrun, gloo, CPU): each rank trains on its own part of a headrace stream,
the ranks take the same steps, every rank's position is in the checkpoint and a resume continues exactly, on the
same ranks, or on one rank where the pipeline is in a global order. One torchrun job runs every training
(tests/trainer_job.py); the tests read what each rank wrote."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import headrace as hr
from trainer_job import pipeline, trainer

JOB = Path(__file__).resolve().parent / "trainer_job.py"
RUNS = [
    # pack: the ranks' parts differ in length; evaluation every 3 steps; DataLoader workers (headrace threads)
    {"name": "a", "pipeline": "pack", "max_steps": 6, "save_steps": 3, "batch": 2, "eval_rows": 6,
     "eval_strategy": "steps", "eval_steps": 3, "dataloader_num_workers": 2},
    {"name": "b", "pipeline": "pack", "max_steps": 6, "save_steps": 3, "batch": 2, "resume": "a/checkpoint-3"},
    # short: epochs of a few rows, ending on the ranks after different counts of their own
    {"name": "s", "pipeline": "short", "max_steps": 12, "batch": 2},
    # global: resumed on one rank by a test (elastic)
    {"name": "g", "pipeline": "global", "max_steps": 4, "save_steps": 2, "batch": 2},
    # for_trainer(ds) without the arguments: accelerate would dispatch rank 0's batches
    {"name": "d", "pipeline": "pack", "max_steps": 2, "configure": False, "error": True},
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, parquet_dir: Path, bpe_path: str) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ranks")
    runs = [{**r, "resume": str(out / r["resume"])} if "resume" in r else r for r in RUNS]
    config = {"parquet": str(parquet_dir), "bpe": bpe_path, "out": str(out), "runs": runs}
    (out / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(JOB), str(out / "config.json")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = {r["name"]: [json.loads((out / f"{r['name']}.{rank}.json").read_text()) for rank in range(2)] for r in RUNS}
    return {"out": out, "parquet": str(parquet_dir), "bpe": bpe_path, **ranks}


def rows(record: dict[str, Any]) -> list[list[int]]:
    return [row for batch in record["trained"] for row in batch]


def part(kind: str, job: dict[str, Any], rank: int, epochs: int = 1) -> list[list[list[int]]]:
    """The rows of ``rank``'s part in each of its first ``epochs`` epochs, read by a Loader of that rank alone."""
    loader = hr.Loader(pipeline(kind, job["parquet"], job["bpe"]), rank=rank, world_size=2, uneven="off")
    return [[list(row["input_ids"]) for row in loader] for _ in range(epochs)]


@pytest.mark.timeout(300)
def test_each_rank_trains_on_its_own_part_in_ddp(job: dict[str, Any]) -> None:
    a = job["a"]
    assert [r["type"] for r in a] == ["DistributedType.MULTI_CPU"] * 2
    assert [len(r["trained"]) for r in a] == [6, 6]  # 6 steps of 2 rows on each rank
    for rank in range(2):
        assert rows(a[rank]) == part("pack", job, rank)[0][:12]  # its own part, in order (none read from rank 0)
    assert not {tuple(r) for r in rows(a[0])} & {tuple(r) for r in rows(a[1])}
    assert a[0]["losses"] == a[1]["losses"]  # one model: the loss logged is the mean over the ranks


@pytest.mark.timeout(300)
def test_ranks_start_each_epoch_together_when_their_parts_differ_in_length(job: dict[str, Any]) -> None:
    epochs = [part("short", job, rank, epochs=3) for rank in range(2)]
    lengths = [[len(e) for e in ranks] for ranks in epochs]
    assert lengths[0] != lengths[1]  # packed rows per epoch differ between the ranks' parts
    for rank in range(2):  # every rank ends each epoch where the shortest rank ends it (uneven="stop")
        shortest = [min(lengths[0][e], lengths[1][e]) for e in range(3)]
        expected = [row for e in range(3) for row in epochs[rank][e][: shortest[e]]]
        assert rows(job["s"][rank]) == expected[:24]
    assert [len(r["trained"]) for r in job["s"]] == [12, 12]


@pytest.mark.timeout(300)
def test_every_ranks_position_is_in_the_checkpoint_and_a_resume_continues_exactly(job: dict[str, Any]) -> None:
    saved = json.loads((job["out"] / "a" / "checkpoint-3" / "trainer_state.json").read_text())
    position = saved["stateful_callbacks"]["headrace"]
    assert (position["step"], position["world_size"]) == (3, 2)
    assert [(s["world"]["rank"], s["world"]["world_size"], s["batches"]) for s in position["ranks"]] == [
        (0, 2, 6), (1, 2, 6)]  # fmt: skip
    a, b = job["a"], job["b"]
    for rank in range(2):
        assert b[rank]["trained"] == a[rank]["trained"][3:]
        assert b[rank]["position"] == a[rank]["position"]  # the same place in the data at step 6
    assert [b[0]["losses"][str(s)] for s in (4, 5, 6)] == [a[0]["losses"][str(s)] for s in (4, 5, 6)]


@pytest.mark.timeout(300)
def test_evaluation_on_two_ranks_ends_and_repeats(job: dict[str, Any]) -> None:
    rows6 = [list(row["input_ids"]) for row in hr.Loader(pipeline("pack", job["parquet"], job["bpe"]).take(6))]
    a = job["a"]
    # Each rank reads the whole evaluation set; accelerate gives each its share of each global batch of 4 (and
    # completes the last one with the first rows, as it does for any iterable dataset).
    assert a[0]["evaluated"] == [[rows6[0:2], rows6[4:6]]] * 2
    assert a[1]["evaluated"] == [[rows6[2:4], rows6[0:2]]] * 2


@pytest.mark.timeout(300)
def test_a_global_order_checkpoint_of_two_ranks_resumes_on_one(job: dict[str, Any], tmp_path: Path) -> None:
    ds = pipeline("global", job["parquet"], job["bpe"])
    one = trainer(ds, str(tmp_path), 4, batch=4)  # the global batch of the two ranks (2 × 2)
    one.train(resume_from_checkpoint=str(job["out"] / "g" / "checkpoint-2"))
    g = job["g"]
    for step in (2, 3):  # steps 3 and 4: the rows both ranks would have trained on
        assert sorted(one.trained[step - 2]) == sorted(g[0]["trained"][step] + g[1]["trained"][step])


@pytest.mark.timeout(300)
def test_another_number_of_ranks_is_refused_where_the_pipeline_cannot_follow(
    job: dict[str, Any], tmp_path: Path
) -> None:
    one = trainer(pipeline("pack", job["parquet"], job["bpe"]), str(tmp_path), 6, batch=4)
    with pytest.raises(hr.StateError, match=r"saved on 2 rank\(s\), this run has 1.*shuffle\(seed, buffer_size=None\)"):
        one.train(resume_from_checkpoint=str(job["out"] / "a" / "checkpoint-3"))


@pytest.mark.timeout(300)
def test_dispatching_batches_from_rank_0_is_refused_saying_what_to_set(job: dict[str, Any]) -> None:
    for rank in range(2):
        assert "dispatch_batches" in job["d"][rank]["error"] and "for_trainer(ds, args=" in job["d"][rank]["error"]
