"""Real ranks: two processes under torchrun with the gloo backend detect their world and split the data."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

JOB = """
import json, sys
import torch.distributed as dist
import headrace as hr

dist.init_process_group("gloo")
loader = hr.Loader(hr.open(sys.argv[1]).shuffle(seed=3, buffer_size=500).batch(64))
ids = [i for b in loader for i in b["id"].tolist()]
# Each rank writes its own file (see test_torch.TRAIN on why no collective ends the job).
json.dump({"rank": loader.world.rank, "world_size": loader.world.world_size, "ids": ids},
          open(f"{sys.argv[2]}.{dist.get_rank()}", "w"))
dist.barrier()
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(180)
def test_torchrun_ranks_detect_world_and_read_disjoint_equal_parts(tmp_path: Path, parquet_dir: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(JOB)
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(job), str(parquet_dir), str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=170)
    every = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]
    assert [(e["rank"], e["world_size"]) for e in every] == [(0, 2), (1, 2)]
    a, b = every[0]["ids"], every[1]["ids"]
    assert len(a) == len(b) == 2500
    assert sorted(a + b) == list(range(5000))
