"""Equal steps on every rank, for every pipeline: 3 real ranks under torchrun (gloo) agree on each batch.

Each pipeline below gives the ranks different batch counts on its own (``uneven="off"``, asserted): packing,
a filter, a mixture, a batched map that changes the row count, records skipped as malformed. With the
default ``uneven="stop"`` every rank yields the shortest rank's count, its own first batches; with
``uneven="pad"`` the longest rank's count, its own batches then its part again from its start; a state
taken while a rank pads resumes exactly.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from itertools import cycle, islice
from pathlib import Path

import pyarrow as pa
import pytest

import headrace as hr
from headrace.agree import AgreementError, FileAgreement

pytest.importorskip("torch")

RANKS = 3

JOB = r"""
import json, sys
import torch.distributed as dist
import headrace as hr

parquet, jsonl_dir, bad, tokenizer, out = sys.argv[1:6]
dist.init_process_group("gloo")
rank = dist.get_rank()


def heavy_head(batch):  # ranks 0 and 1 keep their rows, rank 2 (the end of the order) few
    return batch["id"] < 3500


def twice_small(batch):  # rows with small ids twice, the others once: rank 0 grows most
    ids = batch["id"]
    return {"id": ids.repeat((ids < 2000) + 1)}


pipelines = {
    "pack": lambda: hr.open(parquet).shuffle(seed=7, buffer_size=None).tokenize(tokenizer).pack(64).batch(4),
    "filter": lambda: hr.open(parquet, columns=["id"]).filter(heavy_head, batched=True).batch(16),
    "mix": lambda: hr.mix({"a": hr.open(parquet, columns=["id"]).filter(lambda r: r["id"] % (rank + 2) == 0),
                           "b": hr.open(jsonl_dir, columns=["id"])}, {"a": 1, "b": 1}).batch(16),
    "batched_map": lambda: hr.open(parquet, columns=["id"]).map(twice_small, batched=True).batch(16),
    "skipped": lambda: hr.open(bad, errors="skip").batch(8),
}


def ids(batch):
    key = "id" if "id" in batch else "input_ids"
    return [int(x) for x in batch[key].reshape(-1)[:4]] if key == "input_ids" else [int(x) for x in batch[key]]


result = {}
for name, make in pipelines.items():
    got = {policy: [ids(b) for b in hr.Loader(make(), uneven=policy, prefetch=1)] for policy in ("off", "stop", "pad")}
    # a checkpoint in the middle of the padding of the shortest rank, resumed by a fresh loader
    loader = hr.Loader(make(), uneven="pad", num_workers=1)
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, len(got["off"]))
    cut = min(counts) + 1  # every rank has delivered this many; the shortest one is padding
    it = iter(loader)
    first = [ids(next(it)) for _ in range(cut)]
    state = json.loads(json.dumps(loader.state_dict()))
    it.close()
    again = hr.Loader(make(), uneven="pad")
    again.load_state_dict(state)
    got["resumed"] = first + [ids(b) for b in again]
    got["padding_at_cut"] = state["uneven"]["padding"]
    result[name] = got
json.dump(result, open(f"{out}.{rank}", "w"))
dist.barrier()
dist.destroy_process_group()
"""


def torchrun(script: Path, *args: str, procs: int = RANKS) -> None:
    from test_distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={procs}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *args]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, parquet_dir: Path, jsonl_dir: Path, bpe_path: str) -> list[dict]:
    tmp = tmp_path_factory.mktemp("uneven")
    bad = tmp / "bad.jsonl"  # malformed lines only in the first third of the order (rank 0's part)
    bad.write_text("".join(f'{{"id": {i}}}\n' if i >= 600 or i % 3 else "{broken\n" for i in range(1800)))
    job = tmp / "job.py"
    job.write_text(JOB)
    out = tmp / "out.json"
    torchrun(job, str(parquet_dir), str(jsonl_dir), str(bad), bpe_path, str(out))
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(RANKS)]


PIPELINES = ["pack", "filter", "mix", "batched_map", "skipped"]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", PIPELINES)
def test_every_rank_yields_the_same_number_of_batches(ranks: list[dict], name: str) -> None:
    alone = [r[name]["off"] for r in ranks]
    counts = [len(a) for a in alone]
    assert len(set(counts)) > 1, f"{name} should be uneven on its own, got {counts}"
    for rank, r in enumerate(ranks):
        assert r[name]["stop"] == alone[rank][: min(counts)]
        padded = alone[rank] + list(islice(cycle(alone[rank]), max(counts) - counts[rank]))
        assert r[name]["pad"] == padded
        assert r[name]["resumed"] == padded  # resumed from a state taken at min(counts) + 1 batches
    shortest = counts.index(min(counts))
    assert [r[name]["padding_at_cut"] for r in ranks] == [c < min(counts) + 1 for c in counts]
    assert ranks[shortest][name]["padding_at_cut"] is True


def _below_24(row: dict) -> bool:
    return bool(row["id"] < 24)


def _file_consumer(path: str, folder: str, consumer: int, uneven: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    agreement = FileAgreement(folder, consumers=3, consumer=consumer, run=uneven)
    ds = hr.open(path).filter(_below_24).batch(2)
    loader = hr.Loader(ds, world=hr.World(rank=consumer, world_size=3), agreement=agreement, uneven=uneven)
    queue.put((consumer, [b["id"].tolist() for b in loader]))


@pytest.mark.parametrize("uneven", ["stop", "pad"])
def test_file_agreement_makes_processes_without_a_process_group_agree(tmp_path: Path, uneven: str) -> None:
    path = tmp_path / "rows.jsonl"  # 10 rows per consumer; the filter leaves 10, 10 and 4: 5, 5 and 2 batches
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(30)))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_file_consumer, args=(str(path), str(tmp_path / "agree"), c, uneven, queue))
             for c in range(3)]  # fmt: skip
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    last = 2 if uneven == "stop" else 5  # the calls' files are removed, but the last one's
    own = [[[i, i + 1] for i in range(lo, hi, 2)] for lo, hi in ((0, 10), (10, 20), (20, 24))]
    if uneven == "stop":
        assert got == {c: own[c][:2] for c in range(3)}
    else:
        assert got == {0: own[0], 1: own[1], 2: own[2] + own[2] + own[2][:1]}
    assert sorted(p.name for p in (tmp_path / "agree").iterdir()) == [f"agree-{uneven}.{last}.{c}" for c in range(3)]


def test_file_agreement_names_the_consumers_that_did_not_answer(tmp_path: Path) -> None:
    agreement = FileAgreement(tmp_path, consumers=3, consumer=0, timeout=0.3)
    with pytest.raises(AgreementError, match=r"consumer\(s\) \[1, 2\] of 3 did not answer call 0"):
        agreement.count(1)


def test_uneven_and_agreement_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="uneven must be one of"):
        hr.Loader(hr.open(str(path)), uneven="drop")
    with pytest.raises(ValueError, match="agreement= is between 2 consumers, but this loader's world has 3"):
        hr.Loader(hr.open(str(path)), world=hr.World(0, 3), agreement=FileAgreement(tmp_path, 2, 0))


def test_a_rank_without_a_process_group_says_counts_may_differ(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(12)))
    with caplog.at_level("WARNING", logger="headrace"):
        got = [b["id"].tolist() for b in hr.Loader(hr.open(str(path)).filter(bool).batch(2), world=hr.World(1, 5))]
    assert got == [[2, 3]]  # no agreement: this rank's own part, nothing dropped or padded
    assert "no process group to agree over" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="headrace"):
        list(hr.Loader(hr.open(str(path)).filter(bool).batch(2), world=hr.World(1, 5), uneven="off"))
    assert "no process group" not in caplog.text


def test_state_before_the_last_batch_repeats_it(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(20)))
    ds = hr.open(str(path)).shuffle(seed=2, buffer_size=8).batch(3)
    loader = hr.Loader(ds, num_workers=2)
    assert loader.state_dict(before_last=True) == loader.state_dict()  # nothing delivered yet
    it = iter(loader)
    seen = [next(it)["id"].tolist() for _ in range(4)]
    state = loader.state_dict(before_last=True)  # a loop that fetched batch 4 ahead of checkpointing
    it.close()
    again = hr.Loader(ds)
    again.load_state_dict(state)
    rest = [b["id"].tolist() for b in again]
    assert rest[0] == seen[3]
    assert seen[:3] + rest == [b["id"].tolist() for b in hr.Loader(ds)]


EXIT = r"""
import sys, headrace as hr
ds = hr.open(sys.argv[1]).shuffle(seed=1, buffer_size=50).batch(4)
if sys.argv[2] == "view":  # the PyTorch view in a DataLoader, the loader's threads inside
    import torch
    from headrace.integrations.torch import IterableDataset

    batches = iter(torch.utils.data.DataLoader(IterableDataset(ds, threads=2, prefetch=4), batch_size=None))
else:
    batches = iter(hr.Loader(ds, num_workers=2, worker_type=sys.argv[2], prefetch=4))


def get_batch():  # nanoGPT's loop: a module-level iterator, never run to its end
    return next(batches)


for step in range(3):
    x = get_batch()
"""


@pytest.mark.parametrize("kind", ["thread", "process", "view"])
def test_no_traceback_at_exit_when_a_loop_leaves_an_iteration_open(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("".join(f'{{"id": {i}, "text": "{"x" * (i % 50)}"}}\n' for i in range(3000)))
    script = tmp_path / "loop.py"
    script.write_text(EXIT)
    done = subprocess.run([sys.executable, str(script), str(path), kind], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")


def test_pad_refuses_a_rank_with_nothing_to_repeat(tmp_path: Path) -> None:
    empty = tmp_path / "a.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(4))}), empty)
    ds = hr.open(str(empty)).filter(lambda r: False).batch(2)

    class Others:  # the others still have batches; this consumer has none at all
        consumers = 2

        def count(self, have: int) -> int:
            return have + 1

    loader = hr.Loader(ds, world=hr.World(0, 2), agreement=Others(), uneven="pad")
    with pytest.raises(hr.StateError, match="rank 0 \\(worker 0\\) has no batch in epoch 0 to pad with"):
        list(loader)


def test_a_pipeline_with_equal_counts_does_not_agree(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(12)))
    folder = tmp_path / "agree"
    equal = hr.open(str(path)).shuffle(seed=1, buffer_size=4).map(lambda r: {"y": r["id"] * 2}).batch(2)
    got = [b["id"].tolist() for b in hr.Loader(equal, world=hr.World(0, 1), agreement=None)]
    assert len(got) == 6
    agreement = FileAgreement(folder, consumers=1, consumer=0)
    assert [b["id"].tolist() for b in hr.Loader(equal, agreement=agreement, world=hr.World(0, 1))] == got
    assert list(folder.iterdir()) == []  # no call: every rank has the same count anyway
    uneven = hr.open(str(path)).filter(lambda r: r["id"] < 5).batch(2)
    assert [b["id"].tolist() for b in hr.Loader(uneven, agreement=agreement, world=hr.World(0, 1))] == [
        [0, 1],
        [2, 3],
        [4],
    ]
    assert [p.name for p in folder.iterdir()] == ["agree.3.0"]  # 3 batches, then the call that found none


WORKERS_JOB = r"""
import json, sys
import torch.distributed as dist
from torch.utils.data import DataLoader
import headrace as hr
from headrace.integrations.torch import IterableDataset

jsonl, out = sys.argv[1:3]
dist.init_process_group("gloo")


def keep(batch):  # rank 1's second worker keeps fewer rows than the other three workers
    return (batch["id"] < 4500) | (batch["id"] % 2 == 0)


ds = hr.open(jsonl, columns=["id"]).filter(keep, batched=True).batch(8)
got = {}
for policy in ("off", "stop"):
    loader = DataLoader(IterableDataset(ds, uneven=policy, tensors=False), batch_size=None, num_workers=2)
    got[policy] = [[b["id"][:1].tolist() for b in loader] for _epoch in range(2)]  # two passes: two epochs
# two views at once (a training and a validation stream): each agrees in its own folder
a, b = (DataLoader(IterableDataset(ds, tensors=False), batch_size=None, num_workers=2) for _ in range(2))
pairs = [(x["id"][:1].tolist(), y["id"][:1].tolist()) for x, y in zip(a, b)]
got["together"] = [[x for x, _ in pairs], [y for _, y in pairs]]
# equal by construction: no agreement, none of the rank's rows left out by its workers
whole = DataLoader(IterableDataset(hr.open(jsonl, columns=["id"]).batch(7), tensors=False), batch_size=None,
                   num_workers=2)
got["equal"] = [i for b in whole for i in b["id"].tolist()]
json.dump(got, open(f"{out}.{dist.get_rank()}", "w"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.timeout(300)
def test_dataloader_workers_of_several_ranks_agree_through_files(tmp_path: Path, jsonl_dir: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(WORKERS_JOB)
    out = tmp_path / "out.json"
    torchrun(job, str(jsonl_dir), str(out), procs=2)
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(2)]

    def own(rank: int, worker: int, epoch: int) -> list[list[int]]:  # one worker's batches on its own
        world = hr.World(rank=rank, world_size=2, worker=worker, num_workers=2)
        loader = hr.Loader(hr.open(str(jsonl_dir), columns=["id"]).filter(_keep, batched=True).batch(8),
                           world=world, uneven="off")  # fmt: skip
        loader.set_epoch(epoch)
        return [b["id"][:1].tolist() for b in loader]

    for epoch in range(2):
        parts = [[own(r, w, epoch) for w in range(2)] for r in range(2)]
        assert [len(p) for r in parts for p in r] == [157, 157, 157, 125]  # uneven on their own
        shortest = 125
        for rank in range(2):
            alone = [b for k in range(157) for p in parts[rank] for b in p[k : k + 1]]  # the DataLoader's turns
            assert ranks[rank]["off"][epoch] == alone
            stopped = [b for k in range(shortest) for p in parts[rank] for b in p[k : k + 1]]
            assert ranks[rank]["stop"][epoch] == stopped  # every worker of every rank stops at the shortest
        assert len(ranks[0]["stop"][epoch]) == len(ranks[1]["stop"][epoch]) == 2 * shortest
        if epoch == 0:
            assert [r["together"] for r in ranks] == [[r["stop"][0]] * 2 for r in ranks]
    assert sorted(ranks[0]["equal"] + ranks[1]["equal"]) == list(range(5000))
    assert len(ranks[0]["equal"]) == len(ranks[1]["equal"]) == 2500


def _keep(batch: dict) -> object:
    return (batch["id"] < 4500) | (batch["id"] % 2 == 0)


JAX_JOB = r"""
import json, sys
import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
process, port, path, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process)
import headrace as hr

loader = hr.Loader(hr.open(path).filter(lambda r: r["id"] < 14).batch(2), uneven=sys.argv[5])
json.dump([b["id"].tolist() for b in loader], open(f"{out}.{process}", "w"))
jax.distributed.shutdown()
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("uneven", ["stop", "pad"])
def test_jax_processes_agree_on_the_batch_count(tmp_path: Path, uneven: str) -> None:
    pytest.importorskip("jax")
    from test_distributed import free_port

    path = tmp_path / "rows.jsonl"  # rank 0 keeps ids 0..9 (5 batches), rank 1 ids 10..13 (2 batches)
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(20)))
    job = tmp_path / "job.py"
    job.write_text(JAX_JOB)
    out, port = tmp_path / "out.json", str(free_port())
    args = [str(job), port, str(path), str(out), uneven]
    procs = [subprocess.Popen([sys.executable, args[0], str(p), *args[1:]], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in range(2)]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=150)
        assert p.returncode == 0, err[-3000:]
    got = [json.loads(Path(f"{out}.{p}").read_text()) for p in range(2)]
    own = [[[i, i + 1] for i in range(0, 10, 2)], [[10, 11], [12, 13]]]
    if uneven == "stop":
        assert got == [own[0][:2], own[1]]
    else:
        assert got == [own[0], own[1] + own[1] + own[1][:1]]
