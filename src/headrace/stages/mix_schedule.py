"""The mixture's schedule: which source each output row comes from, a pure function of integer credits.

Each source holds an integer *credit* (in units of ``1/UNIT`` of a row). For every output row, every
drawable source's credit grows by its weight, one source is picked and its credit drops by one row.
The pick follows Tijdeman's rule for the chairman assignment problem: among the sources at least
``1/(2n-2)`` of a row behind, the one whose deficit reaches ``1 - 1/(2n-2)`` rows first (ties: the
larger credit, then a priority order drawn from ``rng(seed, epoch, stage, 0)``). Every prefix of the
output then holds each of ``n`` sources within ``1 - 1/(2n-2)`` rows (< 1) of weight × length (smooth
weighted round-robin can fall more than a row behind with many sources), so every batch is
stratified: within one row of weight × size for two sources (within two in general), and exact where
every weight × size is a whole number (for sizes dividing ``UNIT``). Credits are integers: exact in
JSON, and no floating-point noise decides a tie. The seed only orders exact ties.

``budgets`` cap the rows taken from a source; a source at its cap leaves the drawing (under
``"first_exhausted"`` the schedule ends there instead), the others then share its weight and all
credits restart from zero. Reading the rows, restarting sources and the stop rules on real data are
the node's (:class:`~headrace.stages.mix.MixNode`); the weights are checked once, here
(:func:`normalized`, :func:`weights_by_name`), for ``mix()``, ``set_weights()`` and the node alike.

>>> schedule = MixSchedule(budgets=[None, None], priority=[0, 1], stop="never")
>>> schedule.plan([0.7, 0.3], credit=[0, 0], rows=[0, 0], out=[False, False], limit=10).picks
[0, 1, 0, 0, 0, 1, 0, 0, 1, 0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from headrace.core.rng import rng

STOPS = ("first_exhausted", "all_exhausted", "never")
# One row of credit: divisible by 1..16, 2**16 and 10**6, so weights like 0.7, 1/3 or 1/2048 are exact.
UNIT = 2**16 * 3**4 * 5**6 * 7**2 * 11 * 13
CREDIT_BOUND = 16 * UNIT  # credits stay within about a row of zero (a few rows just after a re-weight)
SUM_TOLERANCE = 1e-9  # normalized weights read back from a state sum to 1 within this


def check_stop(stop: str) -> str:
    """``stop`` if it is one of :data:`STOPS`, else a ``ValueError`` listing them.

    >>> check_stop("never")
    'never'
    """
    if stop not in STOPS:
        raise ValueError(f"mix(stop=...) must be one of {STOPS}, got {stop!r}")
    return stop


def normalized(weights: Sequence[float], what: str, names: Sequence[str] | None = None) -> list[float]:
    """Weights divided by their sum; refused unless each is finite and >= 0 and they sum to a positive number.

    The one check of mixture weights: ``mix()``, ``Loader.set_weights()`` and the node all use it.
    ``what`` names the caller in the error, ``names`` the sources (default: their positions).

    >>> normalized([2, 1, 1], "mix()")
    [0.5, 0.25, 0.25]
    >>> normalized([1, -0.5], "mix()", ["a", "b"])
    Traceback (most recent call last):
    ...
    ValueError: mix(): weights must be >= 0, but 'b' has -0.5; got {'a': 1.0, 'b': -0.5}
    """
    values = [float(w) for w in weights]
    labels = list(names) if names is not None else list(range(len(values)))
    given = dict(zip(labels, values, strict=True))
    for label, v in given.items():
        if not math.isfinite(v):
            raise ValueError(f"{what}: weights must be finite, >= 0 and sum to a positive number, but {label!r} "
                             f"has {v}; got {given}")  # fmt: skip
        if v < 0:
            raise ValueError(f"{what}: weights must be >= 0, but {label!r} has {v}; got {given}")
    total = sum(values)
    if not total > 0:
        raise ValueError(f"{what}: weights must sum to a positive number (give one source a weight > 0), got {given}")
    return [v / total for v in values]


def weights_by_name(names: Sequence[str], weights: Mapping[str, float], what: str) -> list[float]:
    """``weights`` by source name (missing names: 0) in the order of ``names``, checked and normalized.

    >>> weights_by_name(["a", "b"], {"b": 3}, "set_weights()")
    [0.0, 1.0]
    >>> weights_by_name(["a", "b"], {"web": 1}, "mix()")
    Traceback (most recent call last):
    ...
    ValueError: mix(): weights name unknown source(s) ['web']; the sources are ['a', 'b']
    """
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"{what}: weights name unknown source(s) {unknown}; the sources are {list(names)}")
    return normalized([weights.get(n, 0.0) for n in names], what, names)


def sums_to_one(weights: Sequence[float]) -> bool:
    """Whether normalized weights read back from a state sum to 1 (within :data:`SUM_TOLERANCE`).

    >>> sums_to_one([0.7, 0.3]), sums_to_one([0.7, 0.7])
    (True, False)
    """
    return abs(sum(weights) - 1) <= SUM_TOLERANCE


def units(weights: Sequence[float], active: Sequence[int]) -> list[int]:
    """Integer shares of ``UNIT`` for the ``active`` sources (largest remainder), 0 for the others.

    >>> units([1, 1, 1], [0, 2]) == [UNIT // 2, 0, UNIT // 2]
    True
    """
    total = sum(weights[i] for i in active)
    exact = {i: weights[i] / total * UNIT for i in active}
    out = [0] * len(weights)
    for i in active:
        out[i] = math.floor(exact[i])
    short = UNIT - sum(out)
    for i in sorted(active, key=lambda i: (out[i] - exact[i], i))[:short]:
        out[i] += 1
    return out


def choose(active: Sequence[int], owed: Sequence[int], share: Sequence[int], priority: Sequence[int]) -> int:
    """Tijdeman's pick among ``active`` (credit already raised for this row): the earliest deadline.

    >>> choose([0, 1], owed=[UNIT // 2, UNIT // 2], share=[UNIT // 2, UNIT // 2], priority=[1, 0])
    1
    """
    m = len(active)
    if m == 1:
        return active[0]
    q = 2 * m - 2  # sigma = 1/q: a candidate is at least sigma of a row behind
    best, slack = -1, 0
    for i in active:
        c = owed[i]
        if c * q < UNIT:
            continue
        a = UNIT * (q - 1) - q * c  # q·UNIT × rows until its deficit reaches 1 - sigma, times its share
        if best < 0:
            best, slack = i, a
            continue
        lhs, rhs = a * share[best], slack * share[i]
        if lhs < rhs or (lhs == rhs and (c, -priority[i]) > (owed[best], -priority[best])):
            best, slack = i, a
    if best < 0:  # only after a re-weight left credits off the invariant: the furthest behind
        best = max(active, key=lambda i: (owed[i], -priority[i]))
    return best


@dataclass
class MixPlan:
    """The schedule of one block of the mixture: ``picks[p]`` is the source of output row ``p``."""

    picks: list[int]
    credits: list[int]
    rows: list[int]
    out: list[bool]
    end: int | None = None  # the schedule itself ended here (a cap under "first_exhausted", or nothing drawable)
    ender: int = -1  # the source whose cap ended it (-1: nothing drawable)
    leaves: list[tuple[int, int]] = field(default_factory=list)  # (position, source) reaching its cap


class MixSchedule:
    """The picks of a mixture of ``len(budgets)`` sources, from its credits (see the module docstring).

    ``priority[i]`` orders exact ties (lower wins); :meth:`seeded` draws it from the seed.

    >>> s = MixSchedule(budgets=[2, None], priority=[0, 1], stop="all_exhausted")
    >>> p = s.plan([0.5, 0.5], credit=[0, 0], rows=[0, 0], out=[False, False], limit=5)
    >>> p.picks, p.rows, p.leaves
    ([0, 1, 0, 1, 1], [2, 3], [(4, 0)])
    """

    def __init__(self, budgets: Sequence[int | None], priority: Sequence[int], stop: str) -> None:
        if len(priority) != len(budgets):
            raise ValueError(f"MixSchedule needs one priority per source, got {len(priority)} for {len(budgets)}")
        self.budgets, self.priority, self.stop = list(budgets), list(priority), check_stop(stop)

    @classmethod
    def seeded(cls, budgets: Sequence[int | None], stop: str, seed: int, epoch: int, stage: int) -> MixSchedule:
        """The schedule whose tie order is a permutation drawn from ``rng(seed, epoch, stage, 0)``.

        >>> MixSchedule.seeded([None] * 3, "never", seed=0, epoch=0, stage=0).priority
        [1, 2, 0]
        """
        order = rng(seed, epoch, stage, 0).permutation(len(budgets))
        priority = [0] * len(budgets)  # who wins an exact tie: a seeded order, fixed per epoch
        for rank, i in enumerate(order):
            priority[int(i)] = rank
        return cls(budgets, priority, stop)

    def plan(
        self, weights: Sequence[float], credit: Sequence[int], rows: Sequence[int], out: Sequence[bool], limit: int
    ) -> MixPlan:
        """The next ``limit`` picks at ``weights`` from each source's ``credit`` (rows taken so far: ``rows``; out of
        the drawing: ``out``).

        Pure: the arguments are copied; the returned plan holds the credits, rows and flags after its picks.
        """
        plan = MixPlan([], list(credit), list(rows), list(out))
        owed, picks, caps = plan.credits, plan.picks, self.budgets
        share: list[int] | None = None
        active: list[int] = []
        watch: list[int] | None = None  # credits where a cycle may close (then the schedule repeats)
        mark = 0
        while len(picks) < limit:
            if share is None:
                active = [i for i, w in enumerate(weights) if w > 0 and not plan.out[i]]
                if not active:
                    plan.end = len(picks)
                    return plan
                share = units(weights, active)
                watch, mark = list(owed), len(picks)
            for i in active:
                owed[i] += share[i]
            j = choose(active, owed, share, self.priority)
            cap = caps[j]
            if cap is not None and plan.rows[j] >= cap:
                if self.stop == "first_exhausted":
                    plan.end, plan.ender = len(picks), j
                    return plan
                plan.out[j] = True  # at its cap: out of the drawing; the others restart from even credits
                plan.leaves.append((len(picks), j))
                owed[:] = [0] * len(owed)
                share = None
                continue
            owed[j] -= UNIT
            plan.rows[j] += 1
            picks.append(j)
            if watch is not None and owed[j] == watch[j] and owed == watch:
                self._repeat(plan, mark, limit)
                watch = None
        return plan

    def _repeat(self, plan: MixPlan, mark: int, limit: int) -> None:
        """The credits are back where they were at ``mark``: repeat that cycle as often as it fits.

        Weights with small denominators (0.7/0.3 repeats every 10 rows) then cost one cycle of
        scheduling per block; whole cycles only, and never past a source's cap.
        """
        cycle = plan.picks[mark:]
        whole = (limit - len(plan.picks)) // len(cycle)
        per = np.bincount(np.asarray(cycle, dtype=np.int64), minlength=len(self.budgets)).tolist()
        for i, k in enumerate(per):
            cap = self.budgets[i]
            if k and cap is not None:
                whole = min(whole, (cap - plan.rows[i]) // k)
        if whole > 0:
            plan.picks.extend(cycle * whole)
            plan.rows[:] = [r + k * whole for r, k in zip(plan.rows, per, strict=True)]
