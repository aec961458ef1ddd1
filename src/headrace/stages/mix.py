"""``mix``: named sources interleaved by weight, on a deterministic schedule kept as positions and credits.

Which source each output row comes from is the :class:`~headrace.stages.mix_schedule.MixSchedule` (pure,
on integer credits; see :mod:`headrace.stages.mix_schedule` for the rule and its bounds). This node reads
the rows the schedule picks, restarts sources that run out, applies the stop rules and interleaves the
rows. Rows keep their source's own order and are not shuffled within a block (that would undo the
batch composition for batches smaller than a block): shuffle the sources themselves.

Re-weighting (:meth:`MixNode.set_weights`, which ``Loader.set_weights`` calls) keeps every position
and credit; it applies from the next block this node makes, so with ``block_rows`` equal to the
batch size it applies from the next batch. The carried credits (under a row each on a steady
schedule) settle first, so from there every prefix is within about two rows of the new weights; and
across any number of re-weights, each source's total stays within its credit (about a row) of the sum
of its weights over the rows so far.

Positions, not rows: each source is read through a :class:`~headrace.core.cursor.Cursor`; the state is
per source its cursor, epoch, flags, rows taken and credit, plus the current weights. A source that
runs out restarts with its own next epoch (``builders[i](epoch + 1)``) where ``stop`` says so.
``budgets`` cap the rows taken from a source per epoch of the mixture; a source at its cap counts as
exhausted and leaves the drawing for the rest of the mixture's epoch (all modes; with ``"never"``,
for good), the others then share its weight. When a source leaves, all credits restart from zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from headrace.core import state as states
from headrace.core.block import Block, concat
from headrace.core.cursor import Cursor
from headrace.core.errors import SchemaError, SourceError
from headrace.core.node import Node, State
from headrace.stages.mix_schedule import (
    CREDIT_BOUND,
    MixPlan,
    MixSchedule,
    check_stop,
    normalized,
    sums_to_one,
    weights_by_name,
)


class MixNode(Node[Block]):
    """Rows of several child pipelines, interleaved by weight (see the module docstring)."""

    merges = True

    def __init__(
        self,
        builders: Sequence[Callable[[int], Node[Block]]],
        *,
        names: Sequence[str],
        weights: Sequence[float],
        seed: int,
        epoch: int,
        stage: int,
        stop: str,
        shard_offsets: Sequence[int],
        budgets: Sequence[int | None],
        block_rows: int,
    ) -> None:
        n = len(builders)
        if n == 0 or not len(names) == len(weights) == len(shard_offsets) == len(budgets) == n:
            raise ValueError("MixNode needs one name, weight, shard offset and budget per source")
        check_stop(stop)
        if seed < 0:
            raise ValueError(f"mix(seed=...) must be >= 0, got {seed}")
        if any(b is not None and b < 0 for b in budgets):
            raise ValueError(f"mix(budgets=...) must be >= 0 rows, got {dict(zip(names, budgets, strict=True))}")
        self.builders = list(builders)
        self.names = tuple(names)
        self.initial = normalized(weights, "mix()", names)
        self.seed, self.epoch, self.stage, self.stop = seed, epoch, stage, stop
        self.offsets = list(shard_offsets)
        self.budgets = list(budgets)
        self.block_rows = block_rows
        self.schedule = MixSchedule.seeded(self.budgets, stop, seed, epoch, stage)  # which source each row is
        self._children = [build(epoch) for build in self.builders]
        self._cursors = [Cursor(child) for child in self._children]
        self._epochs = [epoch] * n

    # -- state -------------------------------------------------------------------------------------
    def reset(self, state: State | None) -> None:
        n = len(self.names)
        cursors: list[State | None]
        if state is None:
            epochs, cursors = [self.epoch] * n, [None] * n
            self._exhausted, self._out, self._rows, self._credits = [False] * n, [False] * n, [0] * n, [0] * n
            self._weights, self._blocks, self._done = list(self.initial), 0, False
        else:
            epochs, cursors = self._check(state)
        for i in range(n):
            self._open(i, epochs[i])
            with states.within("sources"), states.within(self.names[i]), states.within("cursor"):
                self._cursors[i].reset(cursors[i])

    def _check(self, state: State) -> tuple[list[int], list[State | None]]:
        """The saved epochs and cursors of ``state``, after checking every field of it (then taken)."""
        self._blocks, self._done = states.field(state, "blocks"), states.field(state, "done", bool)
        sources = states.field(state, "sources", dict)
        names = ("epoch", "cursor", "exhausted", "out", "rows", "credit", "weight")
        fields: dict[str, list[Any]] = {k: [] for k in names}
        with states.within("sources"):
            for name, cap in zip(self.names, self.budgets, strict=True):
                s = states.field(sources, name, dict)
                with states.within(name):
                    rows = states.field(s, "rows", hi=states.MAX_COUNT if cap is None else cap)
                    fields["rows"].append(rows)
                    # a source restarts (next epoch) only after giving rows: at most once per row taken
                    fields["epoch"].append(states.field(s, "epoch", lo=self.epoch, hi=self.epoch + rows + 1))
                    fields["cursor"].append(dict(states.field(s, "cursor", dict)))
                    for flag in ("exhausted", "out"):
                        fields[flag].append(states.field(s, flag, bool))
                    fields["credit"].append(states.field(s, "credit", lo=-CREDIT_BOUND, hi=CREDIT_BOUND))
                    fields["weight"].append(float(states.field(s, "weight", float, hi=1)))
            if sum(fields["credit"]) != 0:  # every row adds shares summing to UNIT and takes UNIT from one source
                raise states.refuse("*.credit", f"the credits must sum to 0, got {fields['credit']}")
            if not sums_to_one(fields["weight"]):  # normalized by mix() and set_weights()
                raise states.refuse("*.weight", f"the weights must sum to 1, got {fields['weight']}")
        self._exhausted, self._out, self._rows = fields["exhausted"], fields["out"], fields["rows"]
        self._credits, self._weights = fields["credit"], fields["weight"]
        return fields["epoch"], fields["cursor"]

    def state_dict(self) -> State:
        sources = {
            name: {"cursor": self._cursors[i].state_dict(), "epoch": self._epochs[i], "exhausted": self._exhausted[i],
                   "out": self._out[i], "rows": self._rows[i], "credit": self._credits[i], "weight": self._weights[i]}
            for i, name in enumerate(self.names)
        }  # fmt: skip
        return {"sources": sources, "blocks": self._blocks, "done": self._done}

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """New weights by source name (missing names: 0), normalized; positions and credits are kept."""
        self.ensure_positioned()  # positioned first: the start would put the initial weights back
        self._weights = weights_by_name(self.names, weights, "set_weights()")

    @property
    def weights(self) -> dict[str, float]:
        self.ensure_positioned()
        return dict(zip(self.names, self._weights, strict=True))

    def children(self) -> list[Node[Any]]:
        """The sources' pipelines, in the order of ``names`` (``close``, ``busy`` and ``error_logs`` ask each)."""
        return list(self._children)

    def _open(self, i: int, epoch: int) -> None:
        """Child ``i`` built for ``epoch`` (kept if it already is), behind a fresh cursor."""
        if self._epochs[i] == epoch:
            return
        self._children[i].close()
        child = self.builders[i](epoch)
        self._children[i], self._cursors[i], self._epochs[i] = child, Cursor(child), epoch

    # -- iteration ---------------------------------------------------------------------------------
    def next(self) -> Block:
        if self._done:
            raise StopIteration
        before = self.state_dict()
        plan = self._plan(self.block_rows)
        parts, ends = self._take(plan.picks)
        end, ender = self._stop_at(plan, ends)
        if end is not None and end < len(plan.picks):  # rows taken past the end: rewind, take only those before it
            self.reset(before)
            plan = self._plan(end)
            parts, ends = self._take(plan.picks)
        self._credits, self._rows, self._out = plan.credits, plan.rows, plan.out
        for _, i in plan.leaves:
            self._exhausted[i] = True
        for i, at in enumerate(ends):
            self._exhausted[i] = self._exhausted[i] or bool(at)
        if end is not None:
            self._done = True
            if ender >= 0:
                self._exhausted[ender] = True
        if not plan.picks:
            raise StopIteration
        self._blocks += 1
        return self._interleave(plan.picks, parts)

    def _plan(self, limit: int) -> MixPlan:
        """The next ``limit`` picks from the current weights, credits, rows and flags (the node's state is kept)."""
        return self.schedule.plan(self._weights, self._credits, self._rows, self._out, limit)

    def _take(self, picks: list[int]) -> tuple[list[list[Block]], list[list[int]]]:
        """Rows for ``picks`` from each source, restarting sources that run out where ``stop`` allows.

        Returns the blocks per source and, per source, the indices (among its picks) where an epoch
        of it ran out. Under ``"first_exhausted"`` a source that runs out is not restarted.
        """
        counts = np.bincount(np.asarray(picks, dtype=np.int64), minlength=len(self.names))
        parts: list[list[Block]] = [[] for _ in self.names]
        ends: list[list[int]] = [[] for _ in self.names]
        for i, need in enumerate(counts.tolist()):
            got, fresh = 0, False
            while got < need:
                block = self._cursors[i].take(need - got)
                if block is not None:
                    parts[i].append(block)
                    got += block.num_rows
                    fresh = False
                    if got >= need:
                        break
                if fresh:
                    raise SourceError(
                        f"mix(): source {self.names[i]!r} has no rows in its epoch {self._epochs[i]} (on this rank "
                        f"and worker), so it cannot be cycled under stop={self.stop!r}; give it rows, weight 0, "
                        "or use stop='first_exhausted'"
                    )
                ends[i].append(got)
                if self.stop == "first_exhausted":
                    break
                self._open(i, self._epochs[i] + 1)
                self._cursors[i].reset(None)
                fresh = True
        return parts, ends

    def _stop_at(self, plan: MixPlan, ends: list[list[int]]) -> tuple[int | None, int]:
        """The output position where the mixture ends in this block (None: it goes on), and the source ending it."""
        positions: dict[int, list[int]] = {}
        for p, i in enumerate(plan.picks):
            positions.setdefault(i, []).append(p)
        ran_out = {i: positions[i][e[0]] for i, e in enumerate(ends) if e}  # first run-out in this block
        events = [(plan.end, plan.ender)] if plan.end is not None else []
        if self.stop == "first_exhausted":
            events += [(p, i) for i, p in ran_out.items()]
        elif self.stop == "all_exhausted":
            when: dict[int, int] = {i: -1 for i, done in enumerate(self._exhausted) if done}
            for p, i in plan.leaves:
                when.setdefault(i, p)
            for i, p in ran_out.items():
                when[i] = min(when.get(i, p), p)
            weighted = [i for i, w in enumerate(self._weights) if w > 0]
            if all(i in when for i in weighted):
                last = max(weighted, key=lambda i: (when[i], -i))
                events.append((max(when[last], 0), last))
        if not events:
            return None, -1
        return min(events)

    def _interleave(self, picks: list[int], parts: list[list[Block]]) -> Block:
        """One block in schedule order; each row's shard id moved into the mixture's shard-id space."""
        sources = [i for i, blocks in enumerate(parts) if blocks]
        blocks = {i: self._relabel(i, concat(parts[i])) for i in sources}
        first = sources[0]
        names = list(blocks[first].columns)
        for i in sources[1:]:
            if set(blocks[i].columns) != set(names):
                a, b = self.names[first], self.names[i]
                only_a = sorted(set(names) - set(blocks[i].columns))
                only_b = sorted(set(blocks[i].columns) - set(names))
                raise SchemaError(
                    f"mix(): sources {a!r} and {b!r} have different columns: {a!r} has {only_a} that {b!r} lacks, "
                    f"{b!r} has {only_b} that {a!r} lacks; map() or select them to the same columns before mixing"
                )
            if list(blocks[i].columns) != names:
                cols = blocks[i].columns
                blocks[i] = Block({k: cols[k] for k in names}, blocks[i].shard, blocks[i].row)
        which = np.asarray(picks, dtype=np.int64)
        index = np.empty(len(picks), dtype=np.int64)
        base = 0
        for i in sources:
            where = np.flatnonzero(which == i)
            index[where] = base + np.arange(len(where), dtype=np.int64)
            base += len(where)
        return concat([blocks[i] for i in sources]).take(index)

    def _relabel(self, i: int, block: Block) -> Block:
        offset = self.offsets[i]
        if not offset:
            return block
        shard = np.where(block.shard >= 0, block.shard + offset, block.shard).astype(np.int32)
        return Block(block.columns, shard, block.row)
