"""CSV and TSV through Arrow's streaming CSV reader (header row, typed columns).

Rows with the wrong number of fields follow the error policy; slots are the well-formed rows, so
counting and reading agree whatever the policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pc

from headrace.core.errors import RecordError, SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, contiguous
from headrace.io.resolve import Shard, open_stream


class CsvFormat(Format):
    name = "csv"
    delimiter = ","

    def _reader(self, f: Any, shard: Shard, opts: ReadOptions, log: ErrorLog | None, columns: Any = None) -> Any:
        def on_invalid(row: Any) -> str:
            if log is not None:
                log.record(RecordError(
                    f"{shard.url}:{row.number}: expected {row.expected_columns} fields, got {row.actual_columns}; "
                    "fix the row or open with errors='skip'"
                ))
            return "skip"

        try:
            return pc.open_csv(
                f,
                read_options=pc.ReadOptions(block_size=opts.chunk_bytes),
                parse_options=pc.ParseOptions(delimiter=opts.delimiter or self.delimiter, invalid_row_handler=on_invalid),
                convert_options=pc.ConvertOptions(
                    include_columns=list(columns) if columns is not None else None,
                    column_types=opts.schema,
                ),
            )
        except pa.ArrowInvalid as e:
            raise SourceError(f"{shard.url}: cannot read as CSV ({e}); check format= and delimiter=") from None

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        with open_stream(fs, shard) as f:
            return self._reader(f, shard, opts, log).schema

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        with open_stream(fs, shard) as f:
            reader = self._reader(f, shard, opts, None)
            first = reader.schema.names[:1]
        with open_stream(fs, shard) as f:
            return sum(b.num_rows for b in self._reader(f, shard, opts, None, columns=first))

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        row = 0
        with open_stream(fs, shard) as f:
            reader = self._reader(f, shard, opts, log, columns=opts.columns)
            try:
                for batch in reader:
                    if row + batch.num_rows > max(start.slot, seek) and batch.num_rows:
                        yield contiguous(batch, row)
                    row += batch.num_rows
            except pa.ArrowInvalid as e:
                raise SourceError(f"{shard.url}: bad CSV after row {row} ({e}); fix the file or set column types with schema=") from None


class TsvFormat(CsvFormat):
    name = "tsv"
    delimiter = "\t"
