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

from headrace.core.errors import RecordError, SchemaError, SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, split_at_errors
from headrace.formats.chunks import chunks, split_lines, too_long
from headrace.io.resolve import Shard, open_stream, split_suffix

SCHEMA_PIECES = 16  # how far schema() looks for the type of a field that starts out null
BLOCK_BYTES = 1 << 20  # Arrow's JSON block size, unless a line needs more


class JsonlFormat(Format):
    name = "jsonl"

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        """The types of the first piece; while a field is only ever null, the next pieces' types too."""
        found: pa.Schema | None = None
        looked = 0
        for piece in self._pieces(fs, shard, opts, Start(), 0, log, project=False):
            if piece.batch.num_rows:
                seen = [found, piece.batch.schema] if found is not None else [piece.batch.schema]
                found = pa.unify_schemas(seen, promote_options="permissive")
                looked += 1
                if looked >= SCHEMA_PIECES or not any(pa.types.is_null(f.type) for f in found):
                    break
        if found is None:
            raise SourceError(f"{shard.url}: no JSON records in the file; remove it or fix the glob")
        return found

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        if _is_array(fs, shard):
            return len(_load_array(fs, shard))
        return sum(_records(c.data) if c.long < 0 else 1 for c in chunks(fs, shard, 1 << 22, 0, opts.max_line_bytes))

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        return self._pieces(fs, shard, opts, start, seek, log, project=True)

    def _pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog, *, project: bool
    ) -> Iterator[Piece]:
        if _is_array(fs, shard):
            yield from _array_pieces(fs, shard, opts, seek, log, project)
            return
        slot, line_no = start.slot, max(start.line, 1)
        for chunk in chunks(fs, shard, opts.chunk_bytes, max(start.byte, 0), opts.max_line_bytes):
            if chunk.long >= 0:  # one line over the limit, not read: a malformed record at its own slot
                error = too_long(shard, line_no, chunk.long, opts.max_line_bytes)
                empty, none = pa.RecordBatch.from_pylist([]), np.arange(0, dtype=np.int64)
                here = Start(slot, chunk.byte, line_no)
                yield from split_at_errors(empty, none, (slot, slot + 1), here, [(slot, error)], seek, log)
                slot, line_no = slot + 1, line_no + 1
                continue
            lines = split_lines(chunk.data)
            records = [(line_no + i, line) for i, line in enumerate(lines) if line.strip()]
            if slot + len(records) <= seek:  # all before the first slot needed: count them, don't parse
                slot, line_no = slot + len(records), line_no + len(lines)
                continue
            batch, good, errors = _parse(records, slot, shard, opts, project)
            span = (slot, slot + len(records))
            yield from split_at_errors(batch, good, span, Start(slot, chunk.byte, line_no), errors, seek, log)
            slot, line_no = span[1], line_no + len(lines)


def _records(data: bytes) -> int:
    """Non-blank lines of a chunk: its slots."""
    return sum(1 for line in split_lines(data) if line.strip())


def _read(lines: list[bytes], opts: ReadOptions) -> pa.Table:
    parse = pj.ParseOptions(explicit_schema=opts.schema) if opts.schema is not None else None
    # Arrow parses in blocks and refuses a line that straddles two block boundaries: a block must hold
    # the longest line (the default block is 1 MiB; lines are at most max_line_bytes <= 1 GiB)
    longest = max(map(len, lines), default=0)
    read = pj.ReadOptions(block_size=longest + 2) if longest + 2 > BLOCK_BYTES else None
    table = pj.read_json(io.BytesIO(b"\n".join(lines)), read_options=read, parse_options=parse)
    _check_names(table.schema)  # Arrow's JSON reader lets invalid UTF-8 through; json.loads then names the line
    table.validate(full=True)
    return table


def _check_names(fields: Any) -> None:
    """Field names, nested ones too, must be UTF-8: Arrow keeps invalid ones, and Python cannot read them."""
    for f in fields:
        try:
            f.name  # noqa: B018 - decoded on access
        except UnicodeDecodeError as e:
            raise pa.ArrowInvalid(f"a field name is not valid UTF-8 ({e})") from None
        t = f.type
        if pa.types.is_struct(t):
            _check_names(t.fields)
        elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            _check_names([t.value_field])


def _parse(
    records: list[tuple[int, bytes]], first_slot: int, shard: Shard, opts: ReadOptions, project: bool
) -> tuple[pa.RecordBatch, np.ndarray, list[tuple[int, RecordError]]]:
    """The good records of a chunk as one batch, their slots, and ``(slot, error)`` of the bad ones."""
    slots = np.arange(first_slot, first_slot + len(records), dtype=np.int64)
    if not records:
        return pa.RecordBatch.from_pylist([]), slots, []
    try:
        table = _read([r for _, r in records], opts)
        good = list(range(len(records))) if table.num_rows == len(records) else None
    except pa.ArrowInvalid:
        good = None
    errors = []
    if good is None:
        good = []
        for i, (line_no, raw) in enumerate(records):
            try:
                value = json.loads(raw)
                if not isinstance(value, dict):
                    raise ValueError(f"expected a JSON object, got {type(value).__name__}")
                good.append(i)
            except ValueError as e:
                errors.append((first_slot + i, RecordError(
                    f"{shard.url}:{line_no}: malformed JSON line ({e}); fix or remove the line, or open with "
                    "errors='skip'"
                )))  # fmt: skip
        if not good:
            return pa.RecordBatch.from_pylist([]), slots[:0], errors
        table = _read_or_locate([records[i] for i in good], shard, opts)
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([])
    if project and opts.columns is not None:
        batch = _select(batch, opts.columns)
    return batch, slots[good], errors


def _read_or_locate(records: list[tuple[int, bytes]], shard: Shard, opts: ReadOptions) -> pa.Table:
    """Well-formed records as a table; values whose types clash are a SchemaError naming the first such line."""
    try:
        return _read([r for _, r in records], opts)
    except pa.ArrowInvalid as e:
        lo, hi = 1, len(records)  # the shortest failing prefix ends at the culprit
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                _read([r for _, r in records[:mid]], opts)
                lo = mid + 1
            except pa.ArrowInvalid:
                hi = mid
        raise SchemaError(
            f"{shard.url}:{records[lo - 1][0]}: a value's type clashes with the lines before it ({e}); "
            "pass schema= to choose the types"
        ) from None


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


def _array_pieces(fs: Any, shard: Shard, opts: ReadOptions, seek: int, log: ErrorLog, project: bool) -> Iterator[Piece]:
    items = _load_array(fs, shard)
    good, errors = [], []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            good.append(i)
        else:
            errors.append((i, RecordError(
                f"{shard.url}: element {i} of the JSON array is a {type(item).__name__}, not an object; fix it "
                "or open with errors='skip'"
            )))  # fmt: skip
    try:
        batch = pa.RecordBatch.from_pylist([items[i] for i in good], schema=opts.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:  # OverflowError: an integer over 64 bits
        raise SchemaError(f"{shard.url}: the JSON array's values do not fit one schema ({e}); pass schema=") from None
    if project and opts.columns is not None:
        batch = _select(batch, opts.columns)
    slots = np.asarray(good, dtype=np.int64)
    yield from split_at_errors(batch, slots, (0, len(items)), Start(0, -1, -1), errors, seek, log)
