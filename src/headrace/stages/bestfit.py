"""Best-fit packing for fine-tuning: whole documents into ``seq_len`` rows, never split.

Documents are read in windows of ``buffer`` documents; each window is packed best-fit-decreasing
(longest first, each into the fullest row it still fits) and emitted row by row. Rows are padded
with ``pad_id`` and carry ``attention_mask``, ``position_ids`` (reset per document) and
``segment_ids`` (-1 on padding); a ``labels`` column, if present (chat data), is packed alongside
and padded with -100. A document longer than ``seq_len`` is truncated and counted in ``truncated``.
The state is the window's start and how many rows of it were emitted.
"""

from __future__ import annotations

import bisect
import warnings

import numpy as np

from headrace.core.block import Block
from headrace.core.cursor import RowWindow
from headrace.core.node import Node, State
from headrace.stages.tokens import flat_tokens


def best_fit(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins of document indices: longest first, each into the bin with the least room that fits it.

    >>> best_fit(np.array([5, 3, 4, 2, 1]), 6)
    [[0, 4], [2, 3], [1]]
    """
    order = np.argsort(-lengths, kind="stable")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order.tolist():
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


class BestFitNode(Node[Block]):
    def __init__(self, upstream: Node[Block], *, column: str, seq_len: int, pad_id: int, buffer: int) -> None:
        self.upstream = upstream
        self.window = RowWindow(upstream, buffer)
        self.column, self.seq_len, self.pad_id = column, seq_len, pad_id
        self.truncated = 0

    def reset(self, state: State | None) -> None:
        self._bins: list[list[int]] = []
        if self.window.reset(state):
            self._fill()
            self.window.check_filled()

    def state_dict(self) -> State:
        return self.window.state_dict()

    def _fill(self) -> None:
        rows = self.window.fill()
        if rows is None:
            return
        ids, lengths = flat_tokens(rows, self.column)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        labels = flat_tokens(rows, "labels")[0] if "labels" in rows.columns else None
        clipped = np.minimum(lengths, self.seq_len)
        if (lengths > self.seq_len).any():
            self.truncated += int((lengths > self.seq_len).sum())
            warnings.warn(f"pack(mode='bestfit'): {int((lengths > self.seq_len).sum())} document(s) longer than "
                          f"seq_len={self.seq_len} truncated", stacklevel=2)  # fmt: skip
        self._docs = (ids, labels, starts, clipped, rows)
        self._bins = best_fit(clipped, self.seq_len)
        self.window.total = len(self._bins)

    def next(self) -> Block:
        w = self.window
        if not w.ready(self._fill):
            raise StopIteration
        ids, labels, starts, clipped, rows = self._docs
        n = self.seq_len
        k = min(len(self._bins) - w.emitted, 256)
        chosen = self._bins[w.emitted : w.emitted + k]
        out_ids = np.full((k, n), self.pad_id, dtype=np.int32)
        out_labels = np.full((k, n), -100, dtype=np.int32)
        position = np.zeros((k, n), dtype=np.int32)
        segment = np.full((k, n), -1, dtype=np.int32)
        mask = np.zeros((k, n), dtype=np.int8)
        for r, docs in enumerate(chosen):
            at = 0
            for seg, d in enumerate(docs):
                m = int(clipped[d])
                out_ids[r, at : at + m] = ids[starts[d] : starts[d] + m]
                if labels is not None:
                    out_labels[r, at : at + m] = labels[starts[d] : starts[d] + m]
                position[r, at : at + m] = np.arange(m)
                segment[r, at : at + m] = seg
                mask[r, at : at + m] = 1
                at += m
        first = np.array([docs[0] for docs in chosen])
        columns: dict[str, np.ndarray] = {"input_ids": out_ids}
        if labels is not None:
            columns["labels"] = out_labels
        columns.update(attention_mask=mask, position_ids=position, segment_ids=segment)
        w.emitted += k
        return Block(columns=columns, shard=rows.shard[first], row=rows.row[first])
