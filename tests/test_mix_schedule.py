"""``MixSchedule``: which source each mixed row comes from, on integers — exact picks, prefix bounds, caps, weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import headrace as hr
from headrace import sources
from headrace.stages import mix, mix_schedule
from headrace.stages.mix_schedule import UNIT, MixPlan, MixSchedule, normalized, sums_to_one, units, weights_by_name


def plan(
    weights: list[float],
    limit: int,
    *,
    priority: list[int] | None = None,
    budgets: list[int | None] | None = None,
    stop: str = "never",
) -> MixPlan:
    """The first ``limit`` picks of a mixture starting afresh (no credit, no rows taken)."""
    n = len(weights)
    schedule = MixSchedule(budgets or [None] * n, priority or list(range(n)), stop)
    return schedule.plan(weights, [0] * n, [0] * n, [False] * n, limit)


@pytest.mark.parametrize(
    ("weights", "priority", "picks"),
    [
        ([0.5, 0.5], [0, 1], [0, 1, 0, 1, 0, 1]),
        ([0.5, 0.5], [1, 0], [1, 0, 1, 0, 1, 0]),  # the priority only orders exact ties
        ([1 / 3] * 3, [2, 0, 1], [1, 2, 0, 1, 2, 0]),
        ([0.7, 0.3], [0, 1], [0, 1, 0, 0, 0, 1, 0, 0, 1, 0]),
        ([0.5, 0.3, 0.2], [0, 1, 2], [0, 1, 0, 2, 0, 1, 0, 2, 1, 0]),
        ([1.0, 0.0], [1, 0], [0, 0, 0]),  # a source of weight 0 is never drawn
    ],
)
def test_picks_are_exact_for_given_weights(weights: list[float], priority: list[int], picks: list[int]) -> None:
    assert plan(weights, len(picks), priority=priority).picks == picks


def test_seeded_priority_is_a_permutation_drawn_from_the_seed_and_epoch() -> None:
    priorities = [MixSchedule.seeded([None] * 3, "never", seed=s, epoch=e, stage=0).priority for s, e in
                  [(0, 0), (1, 0), (0, 1)]]  # fmt: skip
    assert priorities == [[1, 2, 0], [0, 1, 2], [2, 0, 1]]
    schedule = MixSchedule.seeded([None] * 3, "never", seed=5, epoch=0, stage=2)
    assert schedule.priority == [0, 2, 1]
    assert schedule.plan([1 / 3] * 3, [0] * 3, [0] * 3, [False] * 3, 6).picks == [0, 2, 1, 0, 2, 1]


WEIGHTS = [[0.7, 0.3], [0.5, 0.3, 0.2], [1 / 3] * 3, [0.1, 0.2, 0.3, 0.4], [1 / 7] * 7, [0.999, 0.001]] + [
    list(np.random.default_rng(n).dirichlet(np.ones(n))) for n in (2, 3, 5, 8, 12)
]


@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda w: f"{len(w)}-sources")
@pytest.mark.parametrize("seed", [0, 1])
def test_every_prefix_holds_each_source_within_one_row_of_its_share(weights: list[float], seed: int) -> None:
    n = len(weights)
    picks = MixSchedule.seeded([None] * n, "never", seed, 0, 0).plan(weights, [0] * n, [0] * n, [False] * n, 2000)
    counts = np.cumsum(np.eye(n, dtype=np.int64)[picks.picks], axis=0)  # rows of each source in each prefix
    lengths = np.arange(1, 2001)[:, None]
    worst = float(np.abs(counts - lengths * np.asarray(weights)).max())
    assert worst <= 1 - 1 / (2 * n - 2) + 1e-9  # Tijdeman's bound, under one row
    assert picks.rows == counts[-1].tolist()


@pytest.mark.parametrize("weights", WEIGHTS[:5], ids=lambda w: f"{len(w)}-sources")
def test_a_block_at_once_picks_what_row_by_row_picks(weights: list[float]) -> None:
    """The cycle shortcut (a schedule back at its credits repeats) changes nothing."""
    n = len(weights)
    schedule = MixSchedule.seeded([None] * n, "never", 3, 0, 0)
    whole = schedule.plan(weights, [0] * n, [0] * n, [False] * n, 500)
    credit, rows, picks = [0] * n, [0] * n, []
    for _ in range(500):
        step = schedule.plan(weights, credit, rows, [False] * n, 1)
        picks += step.picks
        credit, rows = step.credits, step.rows
    assert picks == whole.picks and rows == whole.rows and credit == whole.credits
    assert sum(credit) == 0


def test_plan_leaves_its_arguments_as_they_were() -> None:
    credit, rows, out = [0, 0], [0, 0], [False, False]
    MixSchedule([1, None], [0, 1], "all_exhausted").plan([0.5, 0.5], credit, rows, out, 5)
    assert (credit, rows, out) == ([0, 0], [0, 0], [False, False])


def test_a_cap_ends_the_schedule_under_first_exhausted() -> None:
    p = plan([0.5, 0.5], 6, budgets=[2, None], stop="first_exhausted")
    assert (p.picks, p.rows, p.end, p.ender, p.leaves) == ([0, 1, 0, 1], [2, 2], 4, 0, [])


def test_a_source_at_its_cap_leaves_and_the_others_share_its_weight() -> None:
    p = plan([0.5, 0.5], 6, budgets=[2, None], stop="all_exhausted")
    assert (p.picks, p.rows, p.out, p.end, p.leaves, p.credits) == (
        [0, 1, 0, 1, 1, 1], [2, 4], [True, False], None, [(4, 0)], [0, 0])  # fmt: skip
    p = plan([0.5, 0.5], 6, budgets=[2, 1], stop="never")
    assert (p.picks, p.out, p.end, p.ender, p.leaves) == ([0, 1, 0], [True, True], 3, -1, [(3, 1), (3, 0)])


def test_units_split_one_row_exactly() -> None:
    assert units([0.7, 0.3], [0, 1]) == [UNIT * 7 // 10, UNIT * 3 // 10]
    assert units([1, 1, 1], [0, 1, 2]) == [UNIT // 3] * 3
    assert units([1, 5, 1], [0, 2]) == [UNIT // 2, 0, UNIT // 2]
    assert sum(units(WEIGHTS[-1], list(range(12)))) == UNIT


# -- the weights, checked once for mix(), Loader.set_weights() and the node -----------------------------
def test_weights_are_normalized_by_name() -> None:
    assert normalized([2, 1, 1], "mix()") == [0.5, 0.25, 0.25]
    assert weights_by_name(["a", "b", "c"], {"c": 3.0, "a": 1}, "mix()") == [0.25, 0.0, 0.75]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"web": 1.0}, "mix(): weights name unknown source(s) ['web']; the sources are ['a', 'b']"),
        ({"a": 1, "b": -0.5}, "mix(): weights must be >= 0, but 'b' has -0.5; got {'a': 1.0, 'b': -0.5}"),
        ({"a": 0, "b": 0}, "mix(): weights must sum to a positive number (give one source a weight > 0), got "
                           "{'a': 0.0, 'b': 0.0}"),
        ({"a": float("nan")}, "mix(): weights must be finite, >= 0 and sum to a positive number, but 'a' has nan; "
                              "got {'a': nan, 'b': 0.0}"),
        ({"b": float("inf")}, "mix(): weights must be finite, >= 0 and sum to a positive number, but 'b' has inf; "
                              "got {'a': 0.0, 'b': inf}"),
    ],
)  # fmt: skip
def test_bad_weights_are_refused_saying_which(weights: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as e:
        weights_by_name(["a", "b"], weights, "mix()")
    assert str(e.value) == message


def test_mix_and_set_weights_refuse_with_the_same_check(tmp_path: Path) -> None:
    folder = tmp_path
    (folder / "a.jsonl").write_text('{"x": 1}\n')
    (folder / "b.jsonl").write_text('{"x": 2}\n')
    halves = {n: hr.open(str(folder / f"{n}.jsonl")) for n in "ab"}
    with pytest.raises(ValueError, match=r"^mix\(\): weights must be finite, .* 'b' has inf"):
        hr.mix(halves, {"a": 1, "b": float("inf")})  # refused where it is described, not at the first row
    loader = hr.Loader(hr.mix(halves).batch(1))
    with pytest.raises(ValueError, match=r"^set_weights\(\): weights must be >= 0, but 'a' has -1\.0"):
        loader.set_weights({"a": -1})
    loader.set_weights({"a": 1, "b": 3})
    assert loader.state_dict()["weights"] == {"a": 0.25, "b": 0.75}


def test_stops_and_the_sum_check_have_one_home() -> None:
    assert sources.STOPS is mix_schedule.STOPS
    assert not hasattr(mix, "STOPS") or mix.STOPS is mix_schedule.STOPS  # type: ignore[attr-defined]
    assert (sums_to_one([0.7, 0.3]), sums_to_one([0.5, 0.5 + 1e-12]), sums_to_one([0.5, 0.6])) == (True, True, False)
    with pytest.raises(ValueError, match=r"mix\(stop=\.\.\.\) must be one of \('first_exhausted', 'all_exhausted', "):
        MixSchedule([None], [0], "longest")
