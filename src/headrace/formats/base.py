"""What a format reader is: row counts, a reference schema, and pieces of a shard from a position.

Positions are *slots*: one per record of the file (a Parquet row, a non-blank JSONL line, a text
line). A malformed record skipped under ``errors="skip"`` still occupies its slot, so row counts,
partitioning across ranks and resume positions never depend on the error policy.

A reader starts at a piece boundary: ``(slot, byte, line)`` of a piece it produced before (or zeros),
and from there produces the same pieces every time — the basis of exact resume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.errors import SchemaError
from headrace.core.policy import ErrorLog
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
        """The shard's schema (all columns), from metadata or its first piece."""

    @abstractmethod
    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        """Number of slots in the shard."""

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


def conform(batch: pa.RecordBatch, schema: pa.Schema, where: str) -> pa.RecordBatch:
    """``batch`` with exactly ``schema``'s columns and types: safe casts, nulls for missing columns.

    A column the schema does not have, or a type that cannot be cast safely, raises a
    :class:`SchemaError` naming ``where``.
    """
    if batch.schema.equals(schema):
        return batch
    extra = [n for n in batch.schema.names if schema.get_field_index(n) < 0]
    if extra:
        raise SchemaError(
            f"{where}: column(s) {extra} are not in the dataset schema {schema.names} (taken from the first "
            "shard); shards with incompatible schemas: pass columns=[...] to read only shared columns, or schema="
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
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                raise SchemaError(
                    f"{where}: column {f.name!r} has type {col.type} but the dataset schema says {f.type} "
                    f"(shards with incompatible schemas: {e}); pass schema= to choose a common type"
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
