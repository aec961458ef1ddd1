"""The harness itself: ``check_node_resume`` fails, naming the node, on each guarantee a node can break."""

from __future__ import annotations

import pytest

from headrace.core.block import Block
from headrace.core.node import State
from headrace.testing import ListNode, check_node_resume

BLOCKS = [[0, 1], [2], [3, 4]]


class ForgetsPosition(ListNode):
    """Loads every state as the start."""

    def reset(self, state: State | None) -> None:
        super().reset(None)


class TupleState(ListNode):
    def state_dict(self) -> State:
        return {"index": (self._i,)}


class GrowingState(ListNode):
    def state_dict(self) -> State:
        return {"index": self._i, **({"extra": 1} if self._i > 1 else {})}

    def reset(self, state: State | None) -> None:
        super().reset(None if state is None else {"index": state["index"]})


class OtherLineage(ListNode):
    """Restored blocks lose their row numbers."""

    def reset(self, state: State | None) -> None:
        super().reset(state)
        self.restored = state is not None

    def next(self) -> Block:
        block = super().next()
        return Block(block.columns, block.shard, block.row * 0) if self.restored else block


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (ForgetsPosition, r"ForgetsPosition: loaded \{'index': 1\}, but state_dict\(\) then gave \{'index': 0\}"),
        (TupleState, r"TupleState: the state before the first item changes in a JSON round trip"),
        (GrowingState, r"GrowingState: the state changed shape during the epoch"),
        (OtherLineage, r"OtherLineage: resumed after item 0: element 0 differs"),
    ],
)
def test_a_broken_guarantee_is_named_with_the_node(node: type[ListNode], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_node_resume(lambda: node(BLOCKS))


def test_a_conforming_node_passes_with_one_restore_per_item_and_the_start() -> None:
    report = check_node_resume(lambda: ListNode(BLOCKS))
    assert (report.steps, report.restores, report.max_state_bytes) == (3, 4, 12)
    assert check_node_resume(lambda: ListNode(BLOCKS), every=2).restores == 3
