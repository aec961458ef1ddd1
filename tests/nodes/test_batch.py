"""``BatchNode``, ``RebatchNode`` and ``RowNode``: rows grouped across block boundaries, with exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import headrace as hr
from headrace.core.block import to_pylist
from headrace.core.errors import SchemaError
from headrace.stages.batch import BatchNode, Pad, RebatchNode, RowNode
from headrace.testing import ListNode, check_node_resume

BLOCKS = [[0, 1, 2], [3, 4], [5, 6, 7, 8]]


def batches(size: int, drop_last: bool = False, batch_format: str = "numpy") -> BatchNode:
    return BatchNode(ListNode(BLOCKS), size=size, drop_last=drop_last, pad=None, pad_value=0,
                     lineage=lambda shard, row: f"shard {shard} row {row}", batch_format=batch_format)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(
    ("size", "drop_last", "want"),
    [
        (4, False, [[0, 1, 2, 3], [4, 5, 6, 7], [8]]),
        (4, True, [[0, 1, 2, 3], [4, 5, 6, 7]]),
        (3, True, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),
        (1, False, [[x] for x in range(9)]),
        (20, False, [list(range(9))]),
        (20, True, []),
    ],
)
def test_batches_take_exactly_size_rows_across_blocks(size: int, drop_last: bool, want: list[list[int]]) -> None:
    got = list(batches(size, drop_last))
    assert [b["x"].tolist() for b in got] == want
    assert all(b["x"].dtype == np.int64 for b in got)


def test_arrow_batches_are_record_batches_of_the_same_rows() -> None:
    got = list(batches(4, batch_format="arrow"))
    assert all(isinstance(b, pa.RecordBatch) for b in got)
    assert [b.column("x").to_pylist() for b in got if isinstance(b, pa.RecordBatch)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8],
    ]


@pytest.mark.parametrize(("size", "drop_last", "batch_format"), [(4, False, "numpy"), (4, True, "numpy"),
                                                                 (2, False, "arrow"), (9, True, "numpy")])  # fmt: skip
def test_batch_resumes_exactly_after_every_batch(size: int, drop_last: bool, batch_format: str) -> None:
    check_node_resume(lambda: batches(size, drop_last, batch_format))


def test_the_state_is_a_cursor_into_the_upstream() -> None:
    node = batches(4)
    node.next()  # rows 0..3: one row into the block [3, 4], which the upstream gives at index 1
    assert node.state_dict() == {"cursor": {"upstream": {"index": 1}, "offset": 1}}


def test_rebatch_gives_blocks_of_exactly_size_rows_with_their_lineage() -> None:
    got = list(RebatchNode(ListNode(BLOCKS), 4))
    assert [to_pylist(b.columns["x"]) for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert [b.row.tolist() for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    check_node_resume(lambda: RebatchNode(ListNode(BLOCKS), 4))


def test_rows_one_at_a_time() -> None:
    assert list(RowNode(ListNode(BLOCKS))) == [{"x": x} for x in range(9)]
    assert check_node_resume(lambda: RowNode(ListNode(BLOCKS))).steps == 9


@pytest.mark.parametrize(
    ("pad", "want"),
    [("longest", [[[0, -1, -1], [1, 2, -1], [2, 3, 4]], [[3, 4, 5, 6], [4, -1, -1, -1], [5, 6, -1, -1]]]),
     (4, [[[0, -1, -1, -1], [1, 2, -1, -1], [2, 3, 4, -1]], [[3, 4, 5, 6], [4, -1, -1, -1], [5, 6, -1, -1]]])],
)  # fmt: skip
def test_ragged_lists_are_padded_in_a_pipeline_over_jsonl(jsonl: Path, pad: Pad, want: list[list[list[int]]]) -> None:
    ds = hr.open(str(jsonl / "*.jsonl"), block_rows=4).take(6).batch(3, pad=pad, pad_value=-1)
    got = list(ds)  # row i has ids i .. i + i % 4
    assert [b["id"].tolist() for b in got] == [[0, 1, 2], [3, 4, 5]]
    assert [b["ids"].tolist() for b in got] == want
    check_node_resume(ds.build)


def test_a_ragged_column_without_pad_names_the_row(jsonl: Path) -> None:
    with pytest.raises(SchemaError, match=r"column 'ids' is ragged \(lengths 1\.\.3 in one batch\); pass pad="):
        list(hr.open(str(jsonl / "*.jsonl")).batch(3))
    with pytest.raises(SchemaError, match=r"column 'ids' at .*part-0\.jsonl.* has 4 values, more than pad=3"):
        list(hr.open(str(jsonl / "*.jsonl")).batch(4, pad=3))
