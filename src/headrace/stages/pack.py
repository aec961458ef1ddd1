"""``pack`` and ``window``: fixed-length token sequences from a stream of tokenized documents.

- ``pack(seq_len)`` concatenates documents and cuts every ``seq_len`` tokens (HF's ``group_texts``);
  ``mode="document"`` adds ``position_ids`` (reset at each document), ``segment_ids`` and
  ``cu_seqlens`` for document-masked attention.
- ``window(seq_len, stride, shift)`` emits ``input_ids = t[s : s+seq_len]`` and
  ``labels = t[s+shift : s+shift+seq_len]``, the next window ``stride`` tokens later; ``shift=None``
  draws one shift per batch from the proper divisors of ``seq_len`` and reports it. ``shift=0`` gives
  ``labels`` equal to ``input_ids`` (a copy): the form Hugging Face causal-LM models take, as they shift
  the labels themselves.

The remainder of a sequence lives in the state as a position (see :mod:`headrace.stages.tokens`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from headrace.core import state as states
from headrace.core.block import Block, arrow_numbers
from headrace.core.node import Node, State
from headrace.core.rng import rng
from headrace.stages.tokens import TokenStream

# State keys (their strings are the saved format: never change them).
STREAM = "stream"
BLOCKS = "blocks"
DONE = "done"

MAX_ROWS = 256  # sequences per emitted block
FIRST_ROWS = 8  # ... but the first blocks are smaller, doubling up to MAX_ROWS: the first batch comes quickly


class WindowNode(Node[Block]):
    """Windows of ``seq_len`` tokens every ``stride`` tokens, optionally with shifted labels.

    ``shift=0`` and ``stride=seq_len`` is plain packing. ``remainder="pad"`` emits the final partial
    sequence padded with ``pad_id`` and an ``attention_mask`` column on every row. ``labels``: emit a
    ``labels`` column also when the shift is 0 (``window(shift=0)``: labels equal to the input ids).
    """

    def __init__(
        self,
        upstream: Node[Block],
        *,
        column: str,
        seq_len: int,
        stride: int,
        shift: int | None,
        documents: bool,
        remainder: str,
        pad_id: int,
        batch_size: int,
        seed: int,
        epoch: int,
        stage: int,
        labels: bool = False,
    ) -> None:
        self.upstream = upstream
        self.labels = labels
        self.stream = TokenStream(upstream, column)
        self.seq_len, self.stride, self.shift = seq_len, stride, shift
        self.documents, self.remainder, self.pad_id = documents, remainder, pad_id
        self.batch_size, self.seed, self.epoch, self.stage = batch_size, seed, epoch, stage
        self.divisors = [d for d in range(1, seq_len) if seq_len % d == 0]

    def reset(self, state: State | None) -> None:
        if state is None:
            self.stream.reset(None)
            self._blocks, self._done = 0, False
            return
        self._blocks, self._done = states.field(state, BLOCKS), states.field(state, DONE, bool)
        states.load_child(self.stream.reset, state, STREAM)

    def state_dict(self) -> State:
        return {STREAM: self.stream.state_dict(), BLOCKS: self._blocks, DONE: self._done}

    def next(self) -> Block:
        if self._done:
            raise StopIteration
        s = self.stream
        if self.shift is None:  # one shift for the whole batch: emit exactly batch_size windows
            shift = self.divisors[
                int(rng(self.seed, self.epoch, self.stage, self._blocks).integers(len(self.divisors)))
            ]
            rows, need = self.batch_size, self.seq_len + shift
            if not s.fill((rows - 1) * self.stride + need):
                self._done = True
                raise StopIteration
        else:
            shift, need = self.shift, self.seq_len + self.shift
            rows = min(MAX_ROWS, FIRST_ROWS << min(self._blocks, 8))  # 8, 16, ..., 256: the same rows, sooner
            if not s.fill((rows - 1) * self.stride + need):
                if s.available() < need:
                    return self._last(need)
                rows = (s.available() - need) // self.stride + 1
        starts = np.arange(rows, dtype=np.int64) * self.stride
        tokens = s.windows(starts, need)
        out = self._columns(tokens, starts, shift)
        first_doc = s.doc_index(starts)
        block = Block(columns=out, shard=s.shard[first_doc], row=s.row[first_doc])
        s.pos += rows * self.stride
        self._blocks += 1
        return block

    def _columns(self, tokens: np.ndarray, starts: np.ndarray, shift: int) -> dict[str, np.ndarray | pa.Array]:
        n = self.seq_len
        ids = tokens[:, :n].astype(np.int32 if tokens.dtype.itemsize <= 4 else np.int64)  # a copy out of the buffer
        out: dict[str, np.ndarray | pa.Array] = {"input_ids": ids}
        if shift or self.labels:  # shift 0: a copy of the ids, so that changing one never changes the other
            out["labels"] = tokens[:, shift : shift + n].astype(ids.dtype)
        if self.shift is None:
            out["shift"] = np.full(len(ids), shift, dtype=np.int64)
        if self.documents:
            out.update(self._document_columns(starts))
        if self.remainder == "pad":
            out["attention_mask"] = np.ones_like(ids, dtype=np.int8)
        return out

    def _document_columns(self, starts: np.ndarray) -> dict[str, np.ndarray | pa.Array]:
        n, s = self.seq_len, self.stream
        positions = starts[:, None] + np.arange(n)[None, :]
        doc = s.doc_index(positions.reshape(-1)).reshape(positions.shape)
        segment = doc - doc[:, :1]
        doc_start = np.maximum(s.doc_starts[doc] - s.pos, starts[:, None])
        position_ids = positions - doc_start
        cu = []
        for r in range(len(starts)):
            cuts = np.flatnonzero(np.diff(segment[r])) + 1
            cu.append(np.concatenate([[0], cuts, [n]]).astype(np.int32))
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in cu])]).astype(np.int32)
        return {
            "position_ids": position_ids.astype(np.int32),
            "segment_ids": segment.astype(np.int32),
            "cu_seqlens": pa.ListArray.from_arrays(arrow_numbers(offsets), arrow_numbers(np.concatenate(cu))),
        }

    def _last(self, need: int) -> Block:
        """The final partial sequence: dropped, or padded under ``remainder="pad"``."""
        s = self.stream
        self._done = True
        left = s.available()
        if self.remainder != "pad" or left <= (need - self.seq_len):
            raise StopIteration
        tokens = np.full((1, need), self.pad_id, dtype=np.int64)
        tokens[0, :left] = s.buf[s.pos : s.pos + left]
        starts = np.zeros(1, dtype=np.int64)
        out = self._columns(tokens, starts, self.shift or 0)
        real = left - (self.shift or 0)
        mask = out["attention_mask"]
        assert isinstance(mask, np.ndarray)
        mask[0, real:] = 0
        if "labels" in out:
            labels = out["labels"]
            assert isinstance(labels, np.ndarray)
            labels[0, real:] = -100
        if self.documents:  # padding is its own segment
            seg, pos = out["segment_ids"], out["position_ids"]
            assert isinstance(seg, np.ndarray) and isinstance(pos, np.ndarray)
            seg[0, real:] = seg[0, real - 1] + 1
            pos[0, real:] = np.arange(self.seq_len - real)
        doc = s.doc_index(starts)
        block = Block(columns=out, shard=s.shard[doc], row=s.row[doc])
        s.pos += left
        return block
