"""JSON Lines (one object per line; blank lines ignored) and JSON arrays (``[{...}, ...]``).

A ``.json`` file is read as an array when its first non-blank byte is ``[``, otherwise as JSON Lines.
Parsing is Arrow's JSON reader on whole chunks; only a chunk with a malformed line is re-read line by
line to find it (``file:line``) and apply the error policy.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from headrace.core.errors import RecordError, SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start
from headrace.formats.chunks import chunks, split_lines
from headrace.io.resolve import Shard, open_stream, split_suffix


class JsonlFormat(Format):
    name = "jsonl"

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        for piece in self._pieces(fs, shard, opts, Start(), log, project=False):
            if piece.batch.num_rows:
                return piece.batch.schema
        raise SourceError(f"{shard.url}: no JSON records in the file; remove it or fix the glob")

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        if _is_array(fs, shard):
            return len(_load_array(fs, shard))
        return sum(sum(1 for line in split_lines(c.data) if line.strip()) for c in chunks(fs, shard, 1 << 22))

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        return self._pieces(fs, shard, opts, start, log, project=True)

    def _pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, log: ErrorLog, *, project: bool
    ) -> Iterator[Piece]:
        if _is_array(fs, shard):
            yield from _array_pieces(fs, shard, opts, log, project)
            return
        slot, line_no = start.slot, max(start.line, 1)
        for chunk in chunks(fs, shard, opts.chunk_bytes, max(start.byte, 0)):
            lines = split_lines(chunk.data)
            records = [(line_no + i, line) for i, line in enumerate(lines) if line.strip()]
            batch, slots = _parse(records, slot, shard, opts, log, project)
            yield Piece(batch, slots, Start(slot, chunk.byte, line_no), slot + len(records))
            slot += len(records)
            line_no += len(lines)


def _parse(
    records: list[tuple[int, bytes]], first_slot: int, shard: Shard, opts: ReadOptions, log: ErrorLog, project: bool
) -> tuple[pa.RecordBatch, np.ndarray]:
    slots = np.arange(first_slot, first_slot + len(records), dtype=np.int64)
    if not records:
        return pa.RecordBatch.from_pylist([]), slots
    try:
        table = pj.read_json(io.BytesIO(b"\n".join(r for _, r in records)))
        if table.num_rows != len(records):
            raise pa.ArrowInvalid("row count mismatch")
    except pa.ArrowInvalid:
        good = []
        for i, (line_no, raw) in enumerate(records):
            try:
                value = json.loads(raw)
                if not isinstance(value, dict):
                    raise ValueError(f"expected a JSON object, got {type(value).__name__}")
                good.append(i)
            except ValueError as e:
                log.record(RecordError(f"{shard.url}:{line_no}: malformed JSON line ({e}); "
                                       "fix or remove the line, or open with errors='skip'"))
        slots = slots[good]
        if not good:
            return pa.RecordBatch.from_pylist([]), slots
        table = pj.read_json(io.BytesIO(b"\n".join(records[i][1] for i in good)))
    batch = table.combine_chunks().to_batches()[0]
    if project and opts.columns is not None:
        batch = _select(batch, opts.columns)
    return batch, slots


def _select(batch: pa.RecordBatch, columns: tuple[str, ...]) -> pa.RecordBatch:
    arrays = [batch.column(c) if batch.schema.get_field_index(c) >= 0 else pa.nulls(batch.num_rows) for c in columns]
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _is_array(fs: Any, shard: Shard) -> bool:
    if not split_suffix(shard.url)[0].lower().endswith(".json"):
        return False
    with open_stream(fs, shard) as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def _load_array(fs: Any, shard: Shard) -> list[Any]:
    with open_stream(fs, shard) as f:
        try:
            value = json.load(f)
        except ValueError as e:
            raise SourceError(f"{shard.url}: malformed JSON array ({e}); fix the file or remove it") from None
    if not isinstance(value, list):
        raise SourceError(f"{shard.url}: expected a JSON array of objects or JSON Lines")
    return value


def _array_pieces(fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog, project: bool) -> Iterator[Piece]:
    items = _load_array(fs, shard)
    good = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            good.append(i)
        else:
            log.record(RecordError(f"{shard.url}: element {i} of the JSON array is a {type(item).__name__}, "
                                   "not an object; fix it or open with errors='skip'"))
    batch = pa.RecordBatch.from_pylist([items[i] for i in good])
    if project and opts.columns is not None:
        batch = _select(batch, opts.columns)
    yield Piece(batch, np.asarray(good, dtype=np.int64), Start(0, -1, -1), len(items))
