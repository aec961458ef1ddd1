"""PyTorch: the IterableDataset view under DataLoader workers and StatefulDataLoader, tensors, the device
prefetcher, and real ranks under torchrun (gloo) training a small model, resumed on another world."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import headrace as hr  # noqa: E402
from headrace.integrations.torch import DevicePrefetcher, IterableDataset, to_tensors  # noqa: E402

N = 5000  # rows in the parquet_dir fixture (ids 0..4999)


def ids(batches: Any) -> list[list[int]]:
    return [b["id"].tolist() for b in batches]


def test_batches_are_tensors_and_strings_stay_strings(parquet_dir: Path) -> None:
    batch = next(iter(IterableDataset(hr.open(str(parquet_dir)).batch(4))))
    assert isinstance(batch["id"], torch.Tensor) and batch["id"].dtype == torch.int64
    assert batch["id"].tolist() == [0, 1, 2, 3]
    assert isinstance(batch["text"], list) and all(isinstance(t, str) for t in batch["text"])
    assert to_tensors({"a": np.arange(3, dtype=np.int32), "b": [np.float32(1.5)]})["b"] == [1.5]


@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_dataloader_workers_each_read_their_part_exactly_once(parquet_dir: Path, workers: int) -> None:
    view = IterableDataset(hr.open(str(parquet_dir), columns=["id"]).batch(50))
    got = ids(torch.utils.data.DataLoader(view, batch_size=None, num_workers=workers))
    consumers = max(1, workers)
    per = N // consumers // 50 * 50 if N % (consumers * 50) else N // consumers  # whole batches per worker
    assert len(got) == consumers * (per // 50 + (1 if (N // consumers) % 50 else 0))
    flat = [i for b in got for i in b]
    assert len(flat) == len(set(flat)) == consumers * (N // consumers)
    part = N // consumers  # the DataLoader takes batches from the workers in turn
    for w in range(consumers):
        mine = [b for k, b in enumerate(got) if k % consumers == w]
        assert [i for b in mine for i in b] == list(range(w * part, (w + 1) * part))


def test_ranks_times_workers_split_the_data_disjointly(parquet_dir: Path) -> None:
    seen = []
    for rank in range(2):
        view = IterableDataset(hr.open(str(parquet_dir), columns=["id"]).batch(100), rank=rank, world_size=2)
        seen.append([i for b in torch.utils.data.DataLoader(view, batch_size=None, num_workers=2) for i in b["id"]])
    assert [len(s) for s in seen] == [N // 2, N // 2]
    assert sorted(int(i) for s in seen for i in s) == list(range(N))


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resumes_exactly_at_random_steps(parquet_dir: Path, workers: int) -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader() -> Any:
        ds = hr.open(str(parquet_dir), columns=["id"]).shuffle(seed=4, buffer_size=300).batch(64)
        return StatefulDataLoader(IterableDataset(ds, prefetch=4), batch_size=None, num_workers=workers)

    full = ids(loader())
    assert sorted(i for b in full for i in b) == sorted(set(i for b in full for i in b))
    for step in sorted(random.Random(workers).sample(range(1, len(full) - 1), 3)):
        first = loader()
        it = iter(first)
        for _ in range(step):
            next(it)
        state = json.loads(json.dumps(first.state_dict(), default=int))
        again = loader()
        again.load_state_dict(state)
        assert ids(again) == full[step:], step


def test_rows_batched_by_the_dataloader(parquet_dir: Path) -> None:
    view = IterableDataset(hr.open(str(parquet_dir), columns=["id"]).take(10))
    batches = list(torch.utils.data.DataLoader(view, batch_size=4))
    assert [b["id"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_the_view_keeps_states_of_items_yielded_for_consumers_that_read_ahead(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir), columns=["id"]).batch(10)
    view = IterableDataset(ds, history=8)
    it = iter(view)
    for _ in range(12):
        next(it)
    state = view.state_at(9)  # the consumer is 3 batches behind the view
    again = IterableDataset(ds)
    again.load_state_dict(state)
    assert [b["id"].tolist()[0] for b in again][:3] == [90, 100, 110]
    with pytest.raises(hr.StateError, match="no state for item 2"):
        view.state_at(2)


def test_device_prefetcher_hands_out_batches_in_order_and_the_state_of_the_last_one(parquet_dir: Path) -> None:
    ds = hr.open(str(parquet_dir), columns=["id"]).shuffle(seed=1, buffer_size=200).batch(100)
    full = ids(hr.Loader(ds))
    batches = DevicePrefetcher(hr.Loader(ds), device="cpu", prefetch=4)
    it = iter(batches)
    got = [next(it)["id"].tolist() for _ in range(7)]
    assert got == full[:7]
    resumed = hr.Loader(ds)
    resumed.load_state_dict(batches.state_dict())  # not the state of the 4 batches held ahead
    assert ids(resumed) == full[7:]
    it.close()  # a break: iterating again goes on after the last batch handed out
    assert ids(batches) == full[7:]
    after = hr.Loader(ds)
    after.load_state_dict(batches.state_dict())  # the epoch is over: the state leads into the next one
    assert after.epoch == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRAIN = """
import json, sys
import torch, torch.distributed as dist
import headrace as hr

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
# the global order (buffer_size=None): elastic
ds = hr.open(sys.argv[1], columns=["id"]).shuffle(seed=7, buffer_size=None).batch(int(sys.argv[3]))
loader = hr.Loader(ds)
if sys.argv[4] != "-":
    loader.load_state_dict(json.load(open(sys.argv[4])))
steps, seen, stop = 0, [], int(sys.argv[5])
for batch in loader:
    x = torch.from_numpy(batch["id"]).float().unsqueeze(1) / 5000
    loss = ((model(x) - x) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    seen += batch["id"].tolist(); steps += 1
    if steps == stop:
        break
# Each rank writes its own file, and no collective on Python tensors ends the job: gloo's worker thread
# frees such a collective's tensors after handing over the result, and if that falls after the
# interpreter began to shut down, the process aborts ("terminate called without an active exception").
json.dump({"rank": rank, "steps": steps, "ids": seen, "state": loader.state_dict()}, open(f"{sys.argv[2]}.{rank}", "w"))
dist.barrier()
dist.destroy_process_group()
"""


def torchrun(script: Path, procs: int, *args: str) -> list[dict[str, Any]]:
    out = script.with_suffix(f".{procs}.json")
    launch = ["--nnodes=1", f"--nproc_per_node={procs}", "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, str(script), args[0], str(out), *args[1:]]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(procs)]


@pytest.mark.timeout(300)
def test_torchrun_two_ranks_train_on_disjoint_equal_data_and_resume_on_one(tmp_path: Path, parquet_dir: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    two = torchrun(script, 2, str(parquet_dir), "50", "-", "20")  # 20 steps of 50 rows on each of 2 ranks
    assert [(r["rank"], r["steps"]) for r in two] == [(0, 20), (1, 20)]
    a, b = two[0]["ids"], two[1]["ids"]
    assert len(a) == len(b) == 1000 and not set(a) & set(b)
    state = tmp_path / "state.json"
    state.write_text(json.dumps(two[0]["state"]))
    one = torchrun(script, 1, str(parquet_dir), "100", str(state), "0")  # the rest, on 1 rank, batches of 100
    rest = one[0]["ids"]
    assert one[0]["steps"] == (N - 2000) // 100
    assert sorted(a + b + rest) == list(range(N))  # every row exactly once across the two worlds
