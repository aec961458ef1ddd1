"""JaxLoader: sharded jax.Arrays equal to the Loader's batches, 2-D meshes, exact resume under prefetch, errors.

JAX must see 4 CPU devices, which it reads from ``XLA_FLAGS`` when it is first imported; another test in
this process may have imported it already, so every check runs in a fresh interpreter and prints JSON.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jax")

DEVICES = 4

PRELUDE = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import headrace as hr
from headrace.integrations.jax import JaxLoader, data_sharding
assert jax.device_count() == 4, jax.devices()
"""


def run_jax(script: str, *args: object, devices: int = DEVICES) -> Any:
    """Run ``PRELUDE + script`` with JAX on ``devices`` CPU devices; the JSON its last line prints."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", PRELUDE + script, *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SHARDED_IDS = """
ds = hr.open(sys.argv[1], columns=["id", "text"]).shuffle(seed=1, buffer_size=500).batch(8)
plain = list(hr.Loader(ds, num_workers=2))
default = data_sharding()
wrapped = list(JaxLoader(hr.Loader(ds, num_workers=2), prefetch=2))
shards = [sorted((s.device.id, s.index[0].start, s.data.shape[0]) for s in b["id"].addressable_shards) for b in wrapped]
print(json.dumps({
    "batches": [len(plain), len(wrapped)],
    "jax_arrays": all(isinstance(b["id"], jax.Array) for b in wrapped),
    "sharded": all(b["id"].sharding.is_equivalent_to(default, 1) for b in wrapped),
    "shards": [list(map(list, s)) for s in {tuple(s) for s in shards}],
    "shard_values": all(np.array_equal(s.data, p["id"][s.index]) for b, p in zip(wrapped, plain)
                        for s in b["id"].addressable_shards),
    "ids": all(np.array_equal(np.asarray(b["id"]), p["id"]) for b, p in zip(wrapped, plain)),
    "text_numpy": all(isinstance(b["text"], np.ndarray) and b["text"].tolist() == p["text"].tolist()
                      for b, p in zip(wrapped, plain)),
    "all_ids": sorted(i for b in wrapped for i in np.asarray(b["id"]).tolist()) == list(range(5000)),
}))
"""


def test_batches_are_jax_arrays_split_over_devices_with_the_loaders_values(parquet_dir: Path) -> None:
    got = run_jax(SHARDED_IDS, parquet_dir)
    assert got["batches"] == [625, 625]
    assert got["jax_arrays"] and got["sharded"]
    assert got["shards"] == [[[0, 0, 2], [1, 2, 2], [2, 4, 2], [3, 6, 2]]]  # every batch: 2 rows per device
    assert got["shard_values"] and got["ids"] and got["all_ids"]
    assert got["text_numpy"]  # strings stay numpy


MESH_2D = """
ds = hr.open(sys.argv[1], columns=["text"]).take(300).tokenize(sys.argv[2]).pack(seq_len=64).batch(8, drop_last=True)
plain = [b["input_ids"] for b in hr.Loader(ds)]
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
out = {"batches": len(plain)}
for name, spec in {"data_model": P("data", "model"), "data_only": P("data", None)}.items():
    sharding = NamedSharding(mesh, spec)
    got = [b["input_ids"] for b in JaxLoader(hr.Loader(ds), sharding={"input_ids": sharding}, prefetch=3)]
    out[name] = {
        "sharded": all(a.sharding.is_equivalent_to(sharding, 2) for a in got),
        "dtype": str(got[0].dtype),
        "shard_shapes": sorted({s.data.shape for a in got for s in a.addressable_shards}),
        "distinct_shards": sorted({len({(s.index[0].start, s.index[1].start) for s in a.addressable_shards})
                                   for a in got}),
        "values": len(got) == len(plain) and all(np.array_equal(np.asarray(a), p) for a, p in zip(got, plain)),
        "shard_values": all(np.array_equal(s.data, p[s.index]) for a, p in zip(got, plain)
                            for s in a.addressable_shards),
        "sum": int(jax.jit(lambda x: x.astype(np.int64).sum())(got[0])) == int(plain[0].sum()),
    }
print(json.dumps(out))
"""


def test_two_dimensional_mesh_shards_packed_token_batches(parquet_dir: Path, bpe_path: str) -> None:
    got = run_jax(MESH_2D, parquet_dir, bpe_path)
    assert got["batches"] >= 4
    both = got["data_model"]  # rows over "data", sequence over "model": 4 distinct blocks
    assert both["sharded"] and both["dtype"] == "int32"
    assert both["shard_shapes"] == [[4, 32]] and both["distinct_shards"] == [4]
    rows = got["data_only"]  # rows over "data", replicated over "model": 2 distinct halves
    assert rows["sharded"] and rows["shard_shapes"] == [[4, 64]] and rows["distinct_shards"] == [2]
    for case in (both, rows):
        assert case["values"] and case["shard_values"] and case["sum"]


RESUME = """
steps, prefetch = json.loads(sys.argv[2]), 4
ds = hr.open(sys.argv[1], columns=["id"]).shuffle(seed=7, buffer_size=300).batch(8)
def ids(batches):
    return [np.asarray(b["id"]).tolist() for b in batches]
reference = ids(hr.Loader(ds, num_workers=2))
out = {"batches": len(reference), "steps": {}}
for k in steps:
    inner = hr.Loader(ds, num_workers=2)
    wrapped = JaxLoader(inner, prefetch=prefetch)
    seen = []
    for b in wrapped:
        seen.append(np.asarray(b["id"]).tolist())
        if len(seen) == k:
            break
    state = json.loads(json.dumps(wrapped.state_dict()))
    again = JaxLoader(hr.Loader(ds, num_workers=2), prefetch=prefetch)
    again.load_state_dict(state)
    out["steps"][k] = {
        "seen": seen == reference[:k],
        "state_batches": state["batches"],
        "inner_batches": inner.state_dict()["batches"],  # the inner loader read ahead of the caller
        "resumed": ids(again) == reference[k:],
        "reiterated": ids(wrapped) == reference[k:],  # the same wrapper, iterated again after the break
    }
plain = hr.Loader(ds)
second = ids(plain) and ids(plain)  # the plain loader's next epoch
full = JaxLoader(hr.Loader(ds), prefetch=prefetch)
first = ids(full)
after_epoch = JaxLoader(hr.Loader(ds), prefetch=prefetch)
after_epoch.load_state_dict(json.loads(json.dumps(full.state_dict())))
out["epoch"] = {"first": first == reference, "state_epoch": full.state_dict()["epoch"],
                "next": ids(after_epoch) == second != reference and after_epoch.loader.epoch == 2}
print(json.dumps(out))
"""


def test_resume_under_prefetch_continues_with_exactly_the_next_batch(parquet_dir: Path) -> None:
    k = random.Random().randrange(5, 600)
    got = run_jax(RESUME, parquet_dir, json.dumps([1, k]))
    assert got["batches"] == 625
    for step, case in got["steps"].items():
        step = int(step)
        assert case["seen"], f"step {step}"
        assert case["state_batches"] == step and case["inner_batches"] == step + 4, f"step {step}"
        assert case["resumed"] and case["reiterated"], f"resume at step {step} (of 625) is not exact"
    assert got["epoch"] == {"first": True, "state_epoch": 1, "next": True}


ERRORS = """
ds = hr.open(sys.argv[1], columns=["id"]).take(21).batch(8)  # 8, 8 and a last batch of 5 rows
yielded, message = [], None
try:
    for b in JaxLoader(hr.Loader(ds), prefetch=2):
        yielded.append(np.asarray(b["id"]).tolist())
except ValueError as e:
    message = str(e)
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
try:
    next(iter(JaxLoader(hr.Loader(ds), sharding=NamedSharding(mesh, P("data", "model")))))
except ValueError as e:
    rank = str(e)
print(json.dumps({"yielded": yielded, "message": message, "rank": rank}))
"""


def test_batch_that_does_not_divide_over_the_devices_is_a_clear_error(parquet_dir: Path) -> None:
    got = run_jax(ERRORS, parquet_dir)
    assert got["yielded"] == [list(range(8)), list(range(8, 16))]  # the batches before it arrive first
    message = got["message"]
    for part in ("column 'id'", "batch of 5 rows", "4 equal parts", "4 devices", "multiple of 4", "drop_last=True"):
        assert part in message, message
    assert "column 'id' has 1 dimension" in got["rank"] and "sharding={column: ...}" in got["rank"]


def test_importing_headrace_does_not_import_jax(parquet_dir: Path) -> None:
    script = "import sys, headrace as hr; list(hr.Loader(hr.open(sys.argv[1]).batch(64))); print('jax' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script, str(parquet_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


PROCESS = """
import json, sys
process, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax, numpy as np
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process)
import headrace as hr
from headrace.integrations.jax import JaxLoader
loader = hr.Loader(hr.open(folder, columns=["id"]).take(64).batch(8))  # 8 rows per process, 16 per global batch
batches = list(JaxLoader(loader))
total = jax.jit(lambda x: x.sum())
print(json.dumps({
    "rank": [loader.world.rank, loader.world.world_size], "devices": [jax.local_device_count(), jax.device_count()],
    "global_shapes": sorted({b["id"].shape for b in batches}),
    "local_ids": sorted(int(i) for b in batches for s in b["id"].addressable_shards for i in np.asarray(s.data)),
    "sums": [int(total(b["id"])) for b in batches],
}))
"""


@pytest.mark.timeout(180)
def test_each_jax_process_contributes_its_own_rows_to_the_global_batch(parquet_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS, str(i), str(port), str(parquet_dir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=150)
        assert p.returncode == 0, stderr[-4000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [o["rank"] for o in outs] == [[0, 2], [1, 2]]  # the Loader took its rank from JAX
    assert all(o["devices"] == [2, 4] for o in outs)
    assert all(o["global_shapes"] == [[16]] for o in outs)
    a, b = outs[0]["local_ids"], outs[1]["local_ids"]
    assert len(a) == len(b) == 64 and not set(a) & set(b)  # each process holds its own rows
    assert outs[0]["sums"] == outs[1]["sums"]  # one global array: the same sums on both processes
    assert sum(outs[0]["sums"]) == sum(a) + sum(b)
