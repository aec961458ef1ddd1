"""CSV and TSV through Arrow's streaming CSV reader (header row, typed columns, quoted newlines).

Slots are the well-formed rows, so counting and reading agree whatever the error policy. A row with
the wrong number of fields sits *between* slots: it is reported (``file:row``, the header being row
1) when the reader reaches its place, and follows the error policy there.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pc

from headrace.core.errors import RecordError, SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, split_at_errors
from headrace.io.resolve import Shard, open_stream


class _BadRows:
    """Arrow's invalid-row handler: remembers each bad row at its place among the good rows."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.found: list[tuple[int, RecordError]] = []  # (good rows before it, error), in file order
        self.places: list[int] = []  # the place of every bad row found, taken or not

    def __call__(self, row: Any) -> str:
        number = int(row.number)  # records from 1 = the header (serial reading: always known)
        place = number - 2 - len(self.places)
        self.places.append(place)
        self.found.append((place, RecordError(
            f"{self.shard.url}:{number}: expected {row.expected_columns} fields, got {row.actual_columns} "
            f"(row {number} counting the header as 1); fix the row or open with errors='skip'"
        )))  # fmt: skip
        return "skip"

    def number(self, good: int) -> int:
        """The row number (the header being 1) of the good row with index ``good``."""
        return good + 2 + bisect.bisect_right(self.places, good)

    def take(self, before: int) -> list[tuple[int, RecordError]]:
        """The bad rows found so far whose place is before ``before``, forgotten here."""
        out = [e for e in self.found if e[0] < before]
        self.found = [e for e in self.found if e[0] >= before]
        return out


class CsvFormat(Format):
    name = "csv"
    delimiter = ","

    def _reader(self, f: Any, shard: Shard, opts: ReadOptions, bad: _BadRows, columns: Any = None) -> Any:
        try:
            reader = pc.open_csv(
                f,
                read_options=pc.ReadOptions(block_size=opts.chunk_bytes, use_threads=False),
                parse_options=pc.ParseOptions(
                    delimiter=opts.delimiter or self.delimiter, newlines_in_values=True, invalid_row_handler=bad
                ),
                convert_options=pc.ConvertOptions(
                    include_columns=list(columns) if columns is not None else None,
                    include_missing_columns=True,  # a column this shard lacks reads as nulls, as in other formats
                    column_types=opts.schema,
                    check_utf8=False,  # else invalid UTF-8 makes a binary column; _checked() finds the rows
                ),
            )
        except pa.ArrowInvalid as e:
            raise SourceError(f"{shard.url}: cannot read as CSV ({e}); check format= and delimiter=") from None
        try:
            reader.schema.names  # noqa: B018 - decoded on access
        except UnicodeDecodeError as e:
            reader.close()
            raise SourceError(f"{shard.url}: the header row is not valid UTF-8 ({e}); fix or remove the file") from None
        return reader

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        # closing(): Arrow's streaming reader reads ahead on a thread of its own; closed before its file
        with open_stream(fs, shard) as f, closing(self._reader(f, shard, opts, _BadRows(shard))) as reader:
            schema: pa.Schema = reader.schema
            return schema

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        first = self.schema(fs, shard, opts, ErrorLog()).names[:1]
        with open_stream(fs, shard) as f, closing(self._reader(f, shard, opts, _BadRows(shard), first)) as reader:
            return sum(b.num_rows for b in self._batches(reader, shard))

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        row = 0
        bad = _BadRows(shard)
        with open_stream(fs, shard) as f, closing(self._reader(f, shard, opts, bad, columns=opts.columns)) as reader:
            for batch in self._batches(reader, shard):
                n = batch.num_rows
                batch, slots, invalid = _checked(batch, row, bad)
                # a short row's place p is before the row at slot p: listed first (sorting is stable)
                errors = sorted(bad.take(row + n) + invalid, key=lambda e: e[0])
                yield from split_at_errors(batch, slots, (row, row + n), Start(row, -1, -1), errors, seek, log)
                row += n
            end = [(min(p, row), e) for p, e in bad.take(1 << 62)]  # bad rows after the last good one
            yield from split_at_errors(
                pa.RecordBatch.from_pylist([]), np.arange(0), (row, row), Start(), end, seek, log
            )

    def _batches(self, reader: Any, shard: Shard) -> Iterator[pa.RecordBatch]:
        row = 0
        try:
            for batch in reader:
                yield batch
                row += batch.num_rows
        except pa.ArrowInvalid as e:
            raise SourceError(
                f"{shard.url}: bad CSV after row {row} ({e}); fix the file or set column types with schema="
            ) from None


Errors = list[tuple[int, RecordError]]


def _checked(batch: pa.RecordBatch, row: int, bad: _BadRows) -> tuple[pa.RecordBatch, np.ndarray, Errors]:
    """The rows of ``batch`` (slots ``row..``) whose strings are valid UTF-8, their slots, and ``(slot, error)``
    of the others (Arrow reads the strings unchecked, else it would make a binary column of them)."""
    slots = np.arange(row, row + batch.num_rows, dtype=np.int64)
    culprit: dict[int, str] = {}  # row in batch -> the first column not valid UTF-8 in it
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        try:
            column.validate(full=True)  # checks UTF-8: the fast path, for the usual valid column
            continue
        except pa.ArrowInvalid:
            pass
        raw = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
        for i, value in enumerate(raw.to_pylist()):
            if value is not None and i not in culprit and not _utf8(value):
                culprit[i] = name
    if not culprit:
        return batch, slots, []
    errors = [(row + i, RecordError(
        f"{bad.shard.url}:{bad.number(row + i)}: column {culprit[i]!r} is not valid UTF-8 (row {bad.number(row + i)} "
        "counting the header as 1); fix the row or open with errors='skip'"
    )) for i in sorted(culprit)]  # fmt: skip
    keep = np.ones(batch.num_rows, dtype=bool)
    keep[list(culprit)] = False
    return batch.filter(pa.array(keep)), slots[keep], errors


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class TsvFormat(CsvFormat):
    name = "tsv"
    delimiter = "\t"
