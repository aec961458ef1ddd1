"""``hr.mix``: weighted interleaving by name on the real corpora — proportions, stop rules, budgets, resume, re-weight.

Each source is a disjoint range of paragraph ids (from Parquet, JSONL.zst or CSV shards of the same
corpus), so every output row's source is known from its id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import headrace as hr
from headrace.stages.mix import MixNode
from headrace.testing import ListNode, check_resume

Mask = Callable[[dict[str, np.ndarray]], np.ndarray]


def ids_in(lo: int, hi: int) -> Mask:
    def keep(batch: dict[str, np.ndarray]) -> np.ndarray:
        return (batch["id"] >= lo) & (batch["id"] < hi)

    return keep


def part(path: Path, lo: int, hi: int, **open_options: Any) -> hr.Dataset:
    """The paragraphs with ``lo <= id < hi``, in corpus order."""
    return hr.open(str(path), **open_options).filter(ids_in(lo, hi), batched=True)


def ids(ds: hr.Dataset, batch: int = 32, **loader_options: Any) -> np.ndarray:
    return np.concatenate([b["id"] for b in hr.Loader(ds.batch(batch), **loader_options)])


def counts(stream: np.ndarray, bounds: list[int]) -> np.ndarray:
    """Per source (id range ``bounds[i]..bounds[i+1]``), how many of ``stream`` came from it."""
    return np.array([np.count_nonzero((stream >= lo) & (stream < hi)) for lo, hi in pairwise(bounds)])


def prefix_deviation(stream: np.ndarray, bounds: list[int], weights: list[float]) -> float:
    """max over prefixes t and sources i of |rows of i in the first t - weight_i × t|."""
    t = np.arange(1, len(stream) + 1)
    worst = 0.0
    for (lo, hi), w in zip(pairwise(bounds), weights, strict=True):
        taken = np.cumsum((stream >= lo) & (stream < hi))
        worst = max(worst, float(np.abs(taken - w * t).max()))
    return worst


def of_source(stream: np.ndarray, lo: int, hi: int) -> list[int]:
    return stream[(stream >= lo) & (stream < hi)].tolist()


@pytest.fixture(scope="module")
def halves(parquet_dir: Path) -> dict[str, hr.Dataset]:
    return {"a": part(parquet_dir, 0, 2500), "b": part(parquet_dir, 2500, 5000)}


@pytest.fixture(scope="module")
def formats(parquet_dir: Path, jsonl_dir: Path, csv_dir: Path) -> dict[str, hr.Dataset]:
    return {"pq": part(parquet_dir, 0, 2000), "js": part(jsonl_dir, 2000, 3500), "csv": part(csv_dir, 3500, 5000)}


# -- proportions -----------------------------------------------------------------------------------
def test_two_sources_every_prefix_and_batch_of_32_within_one_row(halves: dict[str, hr.Dataset]) -> None:
    stream = ids(hr.mix(halves, {"a": 0.7, "b": 0.3}), batch=32)
    bounds = [0, 2500, 5000]
    assert len(stream) == 3572  # "a" (2500 rows at 0.7) asked for its 2501st row here
    assert counts(stream, bounds).tolist() == [2500, 1072]
    assert prefix_deviation(stream, bounds, [0.7, 0.3]) <= 0.5 + 1e-9  # Tijdeman: 1 - 1/(2n-2)
    per_batch = {tuple(counts(stream[s : s + 32], bounds)) for s in range(0, len(stream) - 31, 32)}
    assert per_batch == {(22, 10), (23, 9)}  # 22.4 / 9.6: as close as integers allow
    tens = {tuple(counts(stream[s : s + 10], bounds)) for s in range(0, len(stream) - 9, 10)}
    assert tens == {(7, 3)}  # batches of 10 are exact
    assert of_source(stream, 0, 2500) == list(range(2500))  # each source in its own order
    assert of_source(stream, 2500, 5000) == list(range(2500, 3572))


def test_three_formats_every_prefix_and_batch_within_one_row(formats: dict[str, hr.Dataset]) -> None:
    weights = {"pq": 0.5, "js": 0.3, "csv": 0.2}
    stream = ids(hr.mix(formats, weights, block_rows=1000), batch=32)
    bounds = [0, 2000, 3500, 5000]
    assert len(stream) == 4000 and counts(stream, bounds).tolist() == [2000, 1200, 800]
    assert prefix_deviation(stream, bounds, list(weights.values())) <= 0.75 + 1e-9
    for s in range(0, len(stream) - 31, 32):
        got = counts(stream[s : s + 32], bounds)
        assert np.abs(got - 32 * np.array([0.5, 0.3, 0.2])).max() <= 1, (s, got)
    tens = {tuple(counts(stream[s : s + 10], bounds)) for s in range(0, len(stream), 10)}
    assert tens == {(5, 3, 2)}
    assert of_source(stream, 0, 2000) == list(range(2000))
    assert of_source(stream, 2000, 3500) == list(range(2000, 3200))
    assert of_source(stream, 3500, 5000) == list(range(3500, 4300))


def test_schedule_keeps_every_prefix_within_one_row_for_any_weights() -> None:
    rnd = np.random.default_rng(7)
    for trial in range(40):
        n = int(rnd.integers(2, 8))
        weights = (rnd.random(n) ** 3 + 1e-3).tolist()
        node = MixNode(
            [lambda epoch: ListNode([list(range(1000))])] * n, names=[f"s{i}" for i in range(n)], weights=weights,
            seed=trial, epoch=0, stage=1, stop="never", shard_offsets=list(range(n)), budgets=[None] * n,
            block_rows=97,
        )  # fmt: skip
        source = np.concatenate([node.next().shard for _ in range(20)])  # shard id = source index here
        share = np.array(weights) / sum(weights)
        taken = np.cumsum(source[:, None] == np.arange(n), axis=0)
        t = np.arange(1, len(source) + 1)[:, None]
        assert np.abs(taken - share * t).max() <= 1 - 1 / (2 * n - 2) + 1e-9, (trial, weights)


# -- stop rules ------------------------------------------------------------------------------------
def test_first_exhausted_stops_when_the_smallest_ends(parquet_dir: Path) -> None:
    small, big = part(parquet_dir, 0, 1000), part(parquet_dir, 1000, 5000)
    stream = ids(hr.mix({"small": small, "big": big}, stop="first_exhausted"))
    assert len(stream) == 2000
    assert of_source(stream, 0, 1000) == list(range(1000))
    assert of_source(stream, 1000, 5000) == list(range(1000, 2000))


def test_all_exhausted_repeats_the_small_source_in_its_next_epochs(parquet_dir: Path) -> None:
    small = part(parquet_dir, 0, 1000).shuffle(seed=3, buffer_size=250)
    big = part(parquet_dir, 1000, 5000)
    stream = ids(hr.mix({"small": small, "big": big}, stop="all_exhausted"))
    assert len(stream) == 8001  # ends when "big", the last to run out, asks for its row 4001
    assert of_source(stream, 1000, 5000) == list(range(1000, 5000))  # every row once, in order
    repeated = of_source(stream, 0, 1000)
    assert len(repeated) == 4001  # four whole epochs of the small one, and the first row of a fifth
    epochs = [repeated[k : k + 1000] for k in range(0, 4000, 1000)]
    assert all(sorted(e) == list(range(1000)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4  # each epoch of "small" in its own shuffled order
    assert repeated[4000] != repeated[3000]


def test_never_cycles_every_source_past_its_end(parquet_dir: Path) -> None:
    small, big = part(parquet_dir, 0, 1000), part(parquet_dir, 1000, 5000)
    mixed = hr.mix({"small": small, "big": big}, {"small": 1, "big": 3}, stop="never", block_rows=512)
    stream = ids(mixed.take(12_000), batch=100)
    assert len(stream) == 12_000
    assert of_source(stream, 0, 1000) == list(range(1000)) * 3
    assert of_source(stream, 1000, 5000) == list(range(1000, 5000)) * 2 + list(range(1000, 2000))
    assert prefix_deviation(stream, [0, 1000, 5000], [0.25, 0.75]) <= 0.5 + 1e-9


def test_budgets_cap_a_source_exactly_per_epoch(halves: dict[str, hr.Dataset]) -> None:
    capped = hr.mix(halves, stop="first_exhausted", budgets={"b": 300})
    loader = hr.Loader(capped.batch(64))
    for a_rows in (301, 300):  # the cap holds per epoch of the mixture
        stream = np.concatenate([b["id"] for b in loader])
        assert of_source(stream, 2500, 5000) == list(range(2500, 2800))
        # "b" asks for its row 301 right after (epoch 0) or before (epoch 1) "a" gives its 301st: the
        # order of exact ties is drawn from the seed, per epoch
        assert of_source(stream, 0, 2500) == list(range(a_rows))

    stream = ids(hr.mix(halves, stop="all_exhausted", budgets={"b": 300}))
    assert of_source(stream, 2500, 5000) == list(range(2500, 2800))  # capped, then out of the drawing
    assert of_source(stream, 0, 2500) == list(range(2500))  # the other goes on alone until it ends
    assert stream[:600].tolist() == [i for k in range(300) for i in (k, 2500 + k)]

    stream = ids(hr.mix(halves, {"a": 0.7, "b": 0.3}, stop="never", budgets={"a": 700, "b": 300}))
    assert counts(stream, [0, 2500, 5000]).tolist() == [700, 300]  # every source capped: "never" ends


def test_a_source_of_weight_zero_is_never_drawn(formats: dict[str, hr.Dataset]) -> None:
    stream = ids(hr.mix(formats, {"pq": 1, "csv": 1}))  # "js" gets weight 0
    assert counts(stream, [0, 2000, 3500, 5000]).tolist() == [1500, 0, 1500]  # csv (1500 rows) ended it


def test_an_empty_source_ends_or_is_refused_never_loops(parquet_dir: Path) -> None:
    empty, some = part(parquet_dir, 0, 0), part(parquet_dir, 0, 100)
    assert len(list(hr.mix({"empty": empty, "some": some}))) == 0
    for stop in ("all_exhausted", "never"):
        with pytest.raises(hr.SourceError, match=r"'empty' has no rows in its epoch 1 .*cannot be cycled"):
            list(hr.mix({"empty": empty, "some": some}, stop=stop))


def test_lineage_names_the_source_and_its_file(halves: dict[str, hr.Dataset]) -> None:
    mixed = hr.mix(halves, {"a": 0.5, "b": 0.5})
    node = mixed.build()
    block = node.next()
    node.close()
    assert mixed.shard_count == 14
    first_b = int(np.flatnonzero(block.columns["id"].to_numpy() >= 2500)[0])
    where = mixed.lineage(int(block.shard[first_b]), int(block.row[first_b]))
    assert where.startswith("b: ") and where.endswith("part-00003.parquet (record 358)")  # id 2500
    first = mixed.lineage(int(block.shard[0]), int(block.row[0]))
    assert first.startswith("a: ") and first.endswith("part-00000.parquet (record 0)")


# -- exact resume ----------------------------------------------------------------------------------
def test_resume_mid_mix_is_exact(halves: dict[str, hr.Dataset]) -> None:
    report = check_resume(hr.mix(halves, {"a": 0.7, "b": 0.3}).batch(32), every=3)
    assert report.steps == 112 and report.max_state_bytes < 4096


def test_resume_is_exact_with_a_shuffled_child_and_workers(parquet_dir: Path, jsonl_dir: Path) -> None:
    web = part(parquet_dir, 0, 3000).shuffle(seed=1, buffer_size=500)
    code = part(jsonl_dir, 3000, 5000, chunk_bytes=64 << 10, block_rows=100)
    mixed = hr.mix({"web": web, "code": code}, {"web": 0.6, "code": 0.4}, seed=4, block_rows=300)
    report = check_resume(mixed.batch(32), every=3, num_workers=2, prefetch=3)
    assert report.steps == 157  # 3000 at 0.6 and 2000 at 0.4 both last 5000 rows


def test_resume_is_exact_across_restarts_and_caps(formats: dict[str, hr.Dataset]) -> None:
    mixed = hr.mix(formats, {"pq": 0.2, "js": 0.3, "csv": 0.5}, stop="all_exhausted", budgets={"pq": 1500},
                   block_rows=250)  # fmt: skip
    report = check_resume(mixed.batch(64), every=4)
    assert report.steps == 118  # csv ends at 3000 rows, js at 5000, pq reaches its cap at 7500
    never = hr.mix(formats, {"pq": 0.2, "js": 0.3, "csv": 0.5}, stop="never", block_rows=333).take(5000)
    check_resume(never.batch(64), every=5)


# -- re-weighting ----------------------------------------------------------------------------------
def test_reweight_by_name_keeps_every_position_and_survives_a_checkpoint(halves: dict[str, hr.Dataset]) -> None:
    mixed = hr.mix(halves, {"a": 0.7, "b": 0.3}, block_rows=32).batch(32)
    loader = hr.Loader(mixed, num_workers=2)
    before: list[np.ndarray] = []
    for batch in loader:
        before.append(batch["id"])
        if len(before) == 20:
            break
    loader.set_weights({"a": 0.2, "b": 0.8})  # takes effect at the next iter(loader)
    after: list[np.ndarray] = []
    for batch in loader:
        after.append(batch["id"])
        if len(after) == 10:
            state = json.loads(json.dumps(loader.state_dict()))
            break
    after += [b["id"] for b in loader]

    stream, new = np.concatenate(before + after), np.concatenate(after)
    assert of_source(stream, 0, 2500) == list(range(len(of_source(stream, 0, 2500))))  # nothing lost or repeated
    assert of_source(stream, 2500, 5000) == list(range(2500, 5000))  # "b" now ends the epoch
    assert counts(np.concatenate(before), [0, 2500, 5000]).tolist() == [448, 192]
    assert prefix_deviation(new, [0, 2500, 5000], [0.2, 0.8]) < 2  # old credits carry at most a row
    per_batch = {int(counts(b, [0, 2500, 5000])[0]) for b in after[:-1]}
    assert per_batch <= {6, 7}  # 6.4 of "a" per 32 from the first batch after the switch
    assert counts(new, [0, 2500, 5000]).tolist() == [577, 2308]  # 2308 rows of "b" at 0.8, and 577 at 0.2

    resumed = hr.Loader(mixed)  # a fresh loader: the new weights come from the checkpoint
    resumed.load_state_dict(state)
    rest = np.concatenate([b["id"] for b in resumed])
    assert rest.tolist() == np.concatenate(after[10:]).tolist()
    assert state["weights"] == {"a": 0.2, "b": 0.8}


# -- bad input -------------------------------------------------------------------------------------
def test_bad_mixtures_are_refused_with_what_to_do(halves: dict[str, hr.Dataset], parquet_dir: Path) -> None:
    with pytest.raises(ValueError, match="at least one named dataset"):
        hr.mix({})
    with pytest.raises(ValueError, match="sum to a positive number"):
        hr.mix(halves, {"a": 0, "b": 0})
    with pytest.raises(ValueError, match="must be >= 0"):
        hr.mix(halves, {"a": 1, "b": -0.5})
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['web'\]; the sources are \['a', 'b'\]"):
        hr.mix(halves, {"a": 1, "web": 1})
    with pytest.raises(ValueError, match="'b' is batched; mix rows, then batch"):
        hr.mix({"a": halves["a"], "b": halves["b"].batch(8)})
    with pytest.raises(ValueError, match=r"stop=\.\.\.\) must be one of"):
        hr.mix(halves, stop="longest")

    tagged = halves["b"].map(lambda row: {"src": "b"})
    with pytest.raises(hr.SchemaError, match=r"'a' and 'b' have different columns: .*'b' has \['src'\] that 'a' lacks"):
        list(hr.mix({"a": halves["a"], "b": tagged}))


def test_bad_reweights_are_refused(halves: dict[str, hr.Dataset]) -> None:
    loader = hr.Loader(hr.mix(halves).batch(8))
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['web'\]"):
        loader.set_weights({"web": 1.0})
    with pytest.raises(ValueError, match="sum to a positive number"):
        loader.set_weights({"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match="no mix"):
        hr.Loader(halves["a"].batch(8)).set_weights({"a": 1.0})
    node = hr.mix(halves).build()
    assert isinstance(node, MixNode)
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['c'\]; the sources are \['a', 'b'\]"):
        node.set_weights({"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="finite, >= 0 and sum to a positive number"):
        node.set_weights({"a": float("nan")})
    node.set_weights({"b": 2.0})
    assert node.weights == {"a": 0.0, "b": 1.0}
    node.close()
