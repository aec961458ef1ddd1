"""Core pieces: rng, World, state versioning, blocks, the cursor, partitioning."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import headrace as hr
from headrace.core import state as states
from headrace.core.block import Block, Parts, concat
from headrace.core.cursor import Cursor
from headrace.core.rng import permutation, rng
from headrace.stages.partition import consumer_range
from headrace.testing import ListNode


def test_rng_is_a_pure_function_of_its_key() -> None:
    a = rng(7, 1, 2, 3).integers(0, 1 << 62, size=8)
    assert np.array_equal(a, rng(7, 1, 2, 3).integers(0, 1 << 62, size=8))
    for key in [(8, 1, 2, 3), (7, 2, 2, 3), (7, 1, 3, 3), (7, 1, 2, 4)]:
        assert not np.array_equal(a, rng(*key).integers(0, 1 << 62, size=8)), key


def test_rng_golden_values_do_not_drift() -> None:
    # Pinned so that an accidental change of the generator (and so of every shuffle order) is caught.
    assert permutation(10, 0, 0, 0, 0).tolist() == [8, 0, 3, 7, 6, 4, 1, 5, 2, 9]
    assert permutation(10, 42, 0, 1, 0).tolist() == [3, 5, 8, 9, 7, 1, 0, 6, 4, 2]


def test_rng_rejects_negative_keys() -> None:
    with pytest.raises(ValueError, match="seed"):
        rng(-1, 0, 0, 0)


def test_world_validates_and_counts_consumers() -> None:
    w = hr.World(rank=2, world_size=4, worker=1, num_workers=3)
    assert (w.consumer, w.consumers) == (7, 12)
    with pytest.raises(ValueError, match="rank"):
        hr.World(rank=4, world_size=4)
    with pytest.raises(ValueError, match="worker"):
        hr.World(worker=2, num_workers=2)


def test_world_detects_torchrun_and_slurm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert hr.World.detect() == hr.World(0, 1)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert hr.World.detect() == hr.World(5, 8)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert hr.World.detect() == hr.World(1, 2)
    assert hr.World.detect(rank=0, world_size=3) == hr.World(0, 3)


def test_state_check_names_what_differs() -> None:
    saved = states.wrap({"pos": 1}, pipeline=[{"stage": "shuffle", "seed": 1}], world={"rank": 0})
    states.check(saved, pipeline=[{"stage": "shuffle", "seed": 1}], world={"rank": 0})
    with pytest.raises(hr.StateError, match=r"pipeline\[0\]\.seed: saved 1, now 2"):
        states.check(saved, pipeline=[{"stage": "shuffle", "seed": 2}], world={"rank": 0})
    with pytest.raises(hr.StateError, match=r"world\.rank: saved 0, now 1"):
        states.check(saved, pipeline=[{"stage": "shuffle", "seed": 1}], world={"rank": 1})
    with pytest.raises(hr.StateError, match="version 99"):
        states.check({**saved, "version": 99}, pipeline=[], world={})
    with pytest.raises(hr.StateError, match="not a headrace loader state"):
        states.check({"step": 3}, pipeline=[], world={})


def test_state_digest_survives_json_and_catches_any_edit() -> None:
    import json

    saved = states.wrap({"pos": np.int64(7), "w": 0.1 + 0.2}, pipeline=[{"stage": "source"}], world={"rank": 0})
    assert next(iter(saved)) == "digest"  # first: a state cut short keeps it
    again = json.loads(json.dumps({k: saved[k] for k in sorted(saved)}, default=int))  # another key order
    states.check(again, pipeline=[{"stage": "source"}], world={"rank": 0})
    for key, value in [("node", {"pos": 8}), ("node", {"pos": 7, "w": 0.30000000000000004, "x": 1}), ("epoch", 1)]:
        with pytest.raises(hr.StateError, match="checksum does not match"):
            states.check({**again, key: value}, pipeline=[{"stage": "source"}], world={"rank": 0})
    older = {k: v for k, v in again.items() if k != "digest"}  # written before digests: still read
    states.check(older, pipeline=[{"stage": "source"}], world={"rank": 0})


def test_state_fields_are_checked_with_their_dotted_place() -> None:
    state = {"cursor": {"upstream": {"byte": 10}, "offset": 2}}
    with states.within("node"), states.within("cursor"):
        assert states.field(state["cursor"], "offset") == 2
        bad = [
            ({"offset": -1}, "offset", "node.cursor.offset: must be an int >= 0, got int -1"),
            ({"offset": 2**48 + 1}, "offset", "node.cursor.offset: must be an int >= 0 (below 2**48), got int"),
            ({"offset": True}, "offset", "node.cursor.offset: must be an int >= 0, got bool True"),
            ({}, "offset", "node.cursor.offset: is missing (the fields are [])"),
            ({"upstream": None}, "upstream", "node.cursor.upstream: must be an object (a JSON dict), got null"),
        ]
        for value, key, message in bad:
            kind = dict if key == "upstream" else int
            with pytest.raises(states.FieldError) as e:
                states.field(value, key, kind)
            assert isinstance(e.value, hr.StateError) and str(e.value).startswith(f"state field {message}")
        with pytest.raises(states.FieldError, match=r"node\.cursor\.upstream\.byte: must be an int in \[0, 5\]"):
            states.load_child(lambda s: states.field(s, "byte", hi=5), state["cursor"], "upstream")
        with pytest.raises(states.FieldError, match="must be a number in \\[0, 1\\], got float nan"):
            states.field({"w": float("nan")}, "w", float, hi=1)


def test_block_take_slice_concat_keep_lineage() -> None:
    b = Block.from_arrow(pa.record_batch({"x": [10, 11, 12, 13]}), shard=3, first_row=100)
    t = b.take(np.array([3, 0]))
    assert t.columns["x"].to_pylist() == [13, 10]
    assert t.row.tolist() == [103, 100] and t.shard.tolist() == [3, 3]
    c = concat([b.slice(0, 1), Block.from_pydict({"x": np.array([7])})])
    assert c.to_pylist() == [{"x": 10}, {"x": 7}]
    assert c.row.tolist() == [100, -1]


def test_parts_take_equals_take_from_the_concatenation() -> None:
    """The shuffle window keeps its blocks apart: taking from them gives what a concatenated copy would."""
    blocks = [
        Block.from_arrow(pa.record_batch({"x": [0, 1, 2], "s": ["a", "b", "c"]}), shard=0, first_row=0),
        Block.from_arrow(pa.record_batch({"x": [3, 4], "s": ["d", None]}), shard=1, first_row=7),
        Block.from_arrow(pa.record_batch({"x": [5, 6, 7, 8], "s": ["f", "g", "h", "i"]}), shard=2, first_row=0),
    ]
    parts, whole = Parts(blocks), concat(blocks)
    assert parts.num_rows == 9
    for idx in (np.random.default_rng(0).permutation(9), np.array([8, 3, 3, 0]), np.array([4]), np.array([], int)):
        got, want = parts.take(idx), whole.take(idx)
        assert got.to_pylist() == want.to_pylist()
        assert got.shard.tolist() == want.shard.tolist() and got.row.tolist() == want.row.tolist()


def test_cursor_restores_mid_block_by_position() -> None:
    node = ListNode([[0, 1, 2], [3, 4], [5, 6, 7, 8]])
    c = Cursor(node)
    c.reset(None)
    assert c.take(4).columns["x"].to_pylist() == [0, 1, 2, 3]  # type: ignore[union-attr]
    saved = c.state_dict()
    assert saved == {"upstream": {"index": 1}, "offset": 1}
    rest = c.take(10).columns["x"].to_pylist()  # type: ignore[union-attr]
    assert rest == [4, 5, 6, 7, 8] and c.take(1) is None
    again = Cursor(ListNode([[0, 1, 2], [3, 4], [5, 6, 7, 8]]))
    again.reset(saved)
    assert again.take(10).columns["x"].to_pylist() == rest  # type: ignore[union-attr]
    # An offset past the first block (a state saved when blocks were cut larger): the rows after it, exactly.
    later = Cursor(ListNode([[0, 1, 2], [3, 4], [5, 6, 7, 8]]))
    later.reset({"upstream": {"index": 0}, "offset": 6})
    assert later.take(10).columns["x"].to_pylist() == [6, 7, 8]  # type: ignore[union-attr]
    assert later.state_dict() == {"upstream": {"index": 3}, "offset": 0}


@pytest.mark.parametrize("total,consumers", [(10, 3), (9, 3), (2, 4), (1000, 7), (0, 2)])
def test_consumer_ranges_are_equal_and_cover_the_order(total: int, consumers: int) -> None:
    drop = [consumer_range(total, c, consumers, "drop") for c in range(consumers)]
    pad = [consumer_range(total, c, consumers, "pad") for c in range(consumers)]
    assert len({hi - lo for lo, hi in drop}) == 1 and len({hi - lo for lo, hi in pad}) == 1
    covered = [p for lo, hi in drop for p in range(lo, hi)]
    assert covered == list(range(len(covered))) and total - len(covered) < consumers
    padded = [p % total for lo, hi in pad for p in range(lo, hi)] if total else []
    assert sorted(set(padded)) == list(range(total)) and len(padded) - total < consumers
