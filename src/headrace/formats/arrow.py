"""Arrow IPC: the random-access file format (``.arrow``/``.feather``, indexed) and the stream format."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from headrace.core.errors import SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, contiguous, with_schema
from headrace.io.resolve import Shard, local_path, open_file


class ArrowFormat(Format):
    name = "arrow"
    indexed = True

    @contextmanager
    def _open(self, fs: Any, shard: Shard) -> Iterator[pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader]:
        """The reader, with a remote file closed after use (it holds a connection). A local file or a copy in
        the disk cache is memory-mapped, and the map stays open: the batches read from it point into it."""
        path = local_path(fs, shard)
        source: Any = None
        if path is not None:
            try:
                source = pa.memory_map(path)
            except FileNotFoundError:
                if path == shard.url:
                    raise SourceError(f"{shard.url}: no such file (removed after the dataset was opened?)") from None
                path = None  # the cached copy was evicted meanwhile: read remotely
        if source is None:
            source = open_file(fs, shard)
        try:
            yield self._reader(source, shard)
        finally:
            if path is None:
                source.close()

    def _reader(self, source: Any, shard: Shard) -> pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader:
        try:
            return pa.ipc.open_file(source)
        except (OSError, pa.ArrowException):  # not the file format (or its footer is damaged): try a stream
            pass
        try:
            source.seek(0)
            return pa.ipc.open_stream(source)
        except (OSError, pa.ArrowException) as e:
            raise SourceError(
                f"{shard.url}: not an Arrow IPC file or stream (truncated or corrupt? {e}); re-write or remove it"
            ) from None

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        with self._open(fs, shard) as reader:
            return reader.schema

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        with self._open(fs, shard) as reader:
            try:
                if isinstance(reader, pa.ipc.RecordBatchFileReader):
                    return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
                return sum(b.num_rows for b in reader)
            except (OSError, pa.ArrowException) as e:
                raise SourceError(f"{shard.url}: corrupt Arrow data ({e}); re-write or remove it") from None

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        with self._open(fs, shard) as reader:
            yield from self._pieces(reader, shard, opts, start, seek)

    def _pieces(self, reader: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int) -> Iterator[Piece]:
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
                    batch.validate(full=True)  # offsets in bounds, strings UTF-8: a damaged file is not trusted
                    yield contiguous(with_schema(batch, opts.schema, shard.url), row)
                row += n
        except (OSError, pa.ArrowException) as e:
            raise SourceError(f"{shard.url}: corrupt Arrow data near row {row} ({e}); re-write or remove it") from None
