"""Arrow IPC: the random-access file format (``.arrow``/``.feather``, indexed) and the stream format."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from headrace.core.errors import SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, contiguous, with_schema
from headrace.io.resolve import Shard


class ArrowFormat(Format):
    name = "arrow"
    indexed = True

    def _open(self, fs: Any, shard: Shard) -> pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader:
        try:
            source = pa.memory_map(shard.url) if isinstance(fs, LocalFileSystem) else fs.open(shard.url, "rb")
        except OSError as e:
            raise SourceError(f"{shard.url}: cannot open ({e})") from None
        try:
            return pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            pass
        try:
            source.seek(0)
            return pa.ipc.open_stream(source)
        except (OSError, pa.ArrowException) as e:
            raise SourceError(
                f"{shard.url}: not an Arrow IPC file or stream (truncated or corrupt? {e}); re-write or remove it"
            ) from None

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        return self._open(fs, shard).schema

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        reader = self._open(fs, shard)
        if isinstance(reader, pa.ipc.RecordBatchFileReader):
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        return sum(b.num_rows for b in reader)

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        reader = self._open(fs, shard)
        names = reader.schema.names
        columns = [c for c in opts.columns if c in names] if opts.columns is not None else None  # missing: nulls
        batches: Iterator[pa.RecordBatch]
        if isinstance(reader, pa.ipc.RecordBatchFileReader):
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        row = 0
        try:
            for batch in batches:
                n = batch.num_rows
                if row + n > max(start.slot, seek) and n:
                    batch = batch.select(columns) if columns is not None else batch
                    yield contiguous(with_schema(batch, opts.schema, shard.url), row)
                row += n
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"{shard.url}: corrupt Arrow data near row {row} ({e}); re-write or remove it") from None
