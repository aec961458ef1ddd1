"""What a format reader is: row counts, a reference schema, and pieces of a shard from a position.

Positions are *slots*: one per record of the file (a Parquet row, a non-blank JSONL line, a text
line). A malformed record skipped under ``errors="skip"`` still occupies its slot, so row counts,
partitioning across ranks and resume positions never depend on the error policy.

A reader starts at a piece boundary: ``(slot, byte, line)`` of a piece it produced before (or zeros),
and from there produces the same pieces every time — the basis of exact resume.

A malformed record is reported to the error log when the reader *reaches* it, not when its chunk is
parsed: a chunk is cut into pieces at each bad record, and the error is recorded just before the piece
that starts there is yielded, and only at or after ``seek``. So each bad record is counted (or raised)
exactly once — by the one consumer whose range holds it, and never again after a resume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.errors import RecordError, SchemaError
from headrace.core.policy import ErrorLog
from headrace.formats.chunks import MAX_LINE_BYTES
from headrace.io.resolve import Shard


@dataclass(frozen=True)
class ReadOptions:
    """Options every reader understands; format-specific ones live in ``extra``."""

    columns: tuple[str, ...] | None = None
    chunk_bytes: int = 1 << 20
    text_mode: str = "line"
    text_column: str = "text"
    delimiter: str | None = None
    schema: pa.Schema | None = None
    max_line_bytes: int = MAX_LINE_BYTES  # longer lines (JSON Lines, text) are malformed records
    extra: tuple[tuple[str, Any], ...] = field(default=())


@dataclass(frozen=True)
class Start:
    """Where a reader starts: a piece boundary it reported before, or the beginning (all zeros)."""

    slot: int = 0
    byte: int = 0
    line: int = 1


@dataclass(frozen=True)
class Piece:
    """Records ``slots[i]`` of a shard in ``batch`` row ``i``; the piece covers slots ``[start.slot, end)``."""

    batch: pa.RecordBatch
    slots: np.ndarray
    start: Start
    end: int


class Format(ABC):
    """A reader of one file format. Stateless: every call names the shard and the position."""

    name: str = ""
    indexed: bool = False  # row counts from metadata, without reading the data

    @abstractmethod
    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        """The shard's schema, from metadata or its first piece: all its columns, or at least those of
        ``opts.columns`` (when set) that it has — a reader that finds columns by reading records may stop
        once it found those."""

    @abstractmethod
    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        """Number of slots in the shard."""

    def chunks(self, fs: Any, shard: Shard, opts: ReadOptions) -> list[int] | None:
        """Rows of the shard's natural read units (Parquet row groups, Arrow record batches), if any.

        The global order uses them as its chunks, so every unit decoded is used whole.
        """
        return None

    @abstractmethod
    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        """Pieces from ``start`` to the end of the shard, projected to ``opts.columns``.

        ``seek >= start.slot`` is the first slot the caller needs: indexed readers may skip straight
        to the piece that holds it; pieces before it may be yielded anyway and are dropped.
        """


def contiguous(batch: pa.RecordBatch, first: int) -> Piece:
    n = batch.num_rows
    return Piece(batch, np.arange(first, first + n, dtype=np.int64), Start(first, -1, -1), first + n)


def split_at_errors(
    batch: pa.RecordBatch,
    slots: np.ndarray,
    span: tuple[int, int],
    start: Start,
    errors: Sequence[tuple[int, RecordError]],
    seek: int,
    log: ErrorLog,
) -> Iterator[Piece]:
    """Pieces of the records ``span = [first, end)`` (good rows ``batch`` at sorted ``slots``), cut at errors.

    ``errors`` are ``(position, error)`` in position order, ``first <= position <= end``: a bad record at
    its own slot (JSON Lines, text), or between records (CSV). Each error is recorded when the reader
    gets to its position — after the rows before it were handed out — and only if the position is at
    or after ``seek``; pieces that end at or before ``seek`` are left out. Every piece restarts at
    ``start``.
    """
    first, end = span
    marks = sorted({first, *(p for p, _ in errors)})
    i = 0
    for k, lo in enumerate(marks):
        hi = max(lo, marks[k + 1] if k + 1 < len(marks) else end)
        while i < len(errors) and errors[i][0] == lo:
            if lo >= seek:
                log.record(errors[i][1])
            i += 1
        if hi > lo and hi > seek:
            a, b = (int(x) for x in np.searchsorted(slots, [lo, hi]))
            yield Piece(batch.slice(a, b - a), slots[a:b], start, hi)


def with_schema(batch: pa.RecordBatch, schema: pa.Schema | None, where: str) -> pa.RecordBatch:
    """``batch`` with the columns that ``schema`` (the user's ``schema=``) names cast to its types.

    Any safe cast is allowed here, since the user chose the types; :func:`conform` then checks the rest.
    """
    if schema is None:
        return batch
    arrays = list(batch.columns)
    for i, f in enumerate(batch.schema):
        j = schema.get_field_index(f.name)
        if j >= 0 and f.type != schema.field(j).type:
            try:
                arrays[i] = arrays[i].cast(schema.field(j).type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                raise SchemaError(
                    f"{where}: column {f.name!r} of type {f.type} cannot be read as {schema.field(j).type} "
                    f"as schema= asks ({e})"
                ) from None
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def compatible(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column of type ``have`` may be cast to ``want`` without changing what it means.

    Nulls go anywhere; integers widen to integers or floats, floats to floats; strings, binaries,
    dates, timestamps, ... stay in their kind; lists and structs are compared element by element.
    A number never silently becomes a string, nor a string a number.
    """
    t = pa.types
    if have == want or t.is_null(have):
        return True
    if t.is_dictionary(have):
        return compatible(have.value_type, want)
    if t.is_integer(have):
        return t.is_integer(want) or t.is_floating(want)
    kinds = (
        (t.is_floating,), (t.is_string, t.is_large_string), (t.is_binary, t.is_large_binary), (t.is_boolean,),
        (t.is_timestamp,), (t.is_date,), (t.is_time,), (t.is_duration,), (t.is_decimal,),
    )  # fmt: skip
    for kind in kinds:
        if any(is_kind(have) for is_kind in kind):
            return any(is_kind(want) for is_kind in kind)
    if t.is_list(have) or t.is_large_list(have) or t.is_fixed_size_list(have):
        lists = t.is_list(want) or t.is_large_list(want) or t.is_fixed_size_list(want)
        return lists and compatible(have.value_type, want.value_type)
    if t.is_struct(have) and t.is_struct(want):
        names = {f.name: f.type for f in want}
        return all(f.name in names and compatible(f.type, names[f.name]) for f in have)
    return False


def conform(batch: pa.RecordBatch, schema: pa.Schema, where: str, origin: str = "the first shard") -> pa.RecordBatch:
    """``batch`` with exactly ``schema``'s columns and types: safe casts, nulls for missing columns.

    A column the schema does not have, or a type that is not :func:`compatible` with the schema's
    or cannot be cast safely, raises a :class:`SchemaError` naming ``where`` and the schema's ``origin``.
    """
    if batch.schema.equals(schema):
        return batch
    extra = [n for n in batch.schema.names if schema.get_field_index(n) < 0]
    if extra:
        raise SchemaError(
            f"{where}: column(s) {extra} are not in the dataset schema {schema.names} (taken from {origin}); "
            "shards with incompatible schemas: pass columns=[...] to read only shared columns, or schema="
        )
    arrays = []
    for f in schema:
        i = batch.schema.get_field_index(f.name)
        if i < 0:
            arrays.append(pa.nulls(batch.num_rows, f.type))
            continue
        col = batch.column(i)
        if col.type != f.type:
            try:
                if not compatible(col.type, f.type):
                    raise pa.ArrowInvalid(f"a column of {col.type} is not read as {f.type} silently")
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                raise SchemaError(
                    f"{where}: column {f.name!r} has type {col.type} but the dataset schema (taken from {origin}) "
                    f"says {f.type} (shards with incompatible schemas: {e}); pass schema= to choose a common type"
                ) from None
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def project(schema: pa.Schema, columns: tuple[str, ...] | None, where: str) -> pa.Schema:
    """The schema restricted to ``columns``; an unknown column is a :class:`SchemaError`."""
    if columns is None:
        return schema
    missing = [c for c in columns if schema.get_field_index(c) < 0]
    if missing:
        raise SchemaError(f"{where}: unknown column(s) {missing}; the columns are {schema.names}")
    return pa.schema([schema.field(c) for c in columns])
