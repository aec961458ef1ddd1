"""Parquet: indexed (row counts from the footer), column projection, seek to a row group."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from headrace.core.errors import SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, contiguous, with_schema
from headrace.io.resolve import Shard, local_path, open_file


class ParquetFormat(Format):
    name = "parquet"
    indexed = True

    @contextmanager
    def _open(self, fs: Any, shard: Shard) -> Iterator[pq.ParquetFile]:
        """The Parquet file, closed after use (a remote file holds a connection). A local file or a copy in
        the disk cache is memory-mapped; a remote one is read by ranges: only the projected column chunks."""
        path = local_path(fs, shard)
        source: Any = path if path is not None else open_file(fs, shard)
        try:
            try:
                pf = pq.ParquetFile(source, memory_map=path is not None, pre_buffer=path is None)
            except FileNotFoundError:
                if path is None or path == shard.url:
                    raise SourceError(f"{shard.url}: no such file (removed after the dataset was opened?)") from None
                source, path = open_file(fs, shard), None  # the cached copy was evicted meanwhile: read remotely
                pf = pq.ParquetFile(source, pre_buffer=True)
            except (OSError, pa.ArrowException) as e:
                raise SourceError(
                    f"{shard.url}: not a readable Parquet file (truncated or corrupt? {e}); re-write or remove it"
                ) from None
            yield pf
        finally:
            if path is None:
                source.close()

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        with self._open(fs, shard) as pf:
            return pf.schema_arrow

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        with self._open(fs, shard) as pf:
            return int(pf.metadata.num_rows)

    def chunks(self, fs: Any, shard: Shard, opts: ReadOptions) -> list[int] | None:
        with self._open(fs, shard) as pf:
            meta = pf.metadata
            return [int(meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        with self._open(fs, shard) as pf:
            yield from self._pieces(pf, shard, opts, start, seek)

    def _pieces(self, pf: pq.ParquetFile, shard: Shard, opts: ReadOptions, start: Start, seek: int) -> Iterator[Piece]:
        meta = pf.metadata
        bounds = [0]
        for i in range(meta.num_row_groups):
            bounds.append(bounds[-1] + meta.row_group(i).num_rows)
        first_group = max(0, bisect.bisect_right(bounds, max(start.slot, seek)) - 1)
        columns = list(opts.columns) if opts.columns is not None else None
        row = bounds[first_group]
        try:
            for group in range(first_group, meta.num_row_groups):
                row = bounds[group]
                for batch in pf.iter_batches(batch_size=65536, row_groups=[group], columns=columns, use_threads=True):
                    yield contiguous(with_schema(batch, opts.schema, shard.url), row)
                    row += batch.num_rows
        except (OSError, pa.ArrowException) as e:
            raise SourceError(
                f"{shard.url}: corrupt Parquet data near row {row} ({e}); re-write or remove it"
            ) from None
