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
from headrace.io.remote import RemoteFile
from headrace.io.resolve import Shard, local_path, open_file


class ParquetFormat(Format):
    name = "parquet"
    indexed = True

    @contextmanager
    def _open(self, fs: Any, shard: Shard) -> Iterator[tuple[pq.ParquetFile, RemoteFile | None]]:
        """The Parquet file (and the remote file under it, if any), closed after use (a remote file holds a
        connection). A local file or a copy in the disk cache is memory-mapped; a remote one is read by
        ranges (see :meth:`_pieces`)."""
        path = local_path(fs, shard)
        source: Any = path if path is not None else open_file(fs, shard)
        try:
            try:
                pf = pq.ParquetFile(source, memory_map=path is not None)
            except FileNotFoundError:
                if path is None or path == shard.url:
                    raise SourceError(f"{shard.url}: no such file (removed after the dataset was opened?)") from None
                source, path = open_file(fs, shard), None  # the cached copy was evicted meanwhile: read remotely
                pf = pq.ParquetFile(source)
            except (OSError, pa.ArrowException) as e:
                raise SourceError(
                    f"{shard.url}: not a readable Parquet file (truncated or corrupt? {e}); re-write or remove it"
                ) from None
            yield pf, source if isinstance(source, RemoteFile) else None
        finally:
            if path is None:
                source.close()

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        with self._open(fs, shard) as (pf, _):
            return pf.schema_arrow

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        with self._open(fs, shard) as (pf, _):
            return sum(row_groups(pf.metadata, shard))

    def chunks(self, fs: Any, shard: Shard, opts: ReadOptions) -> list[int] | None:
        with self._open(fs, shard) as (pf, _):
            return row_groups(pf.metadata, shard)

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        with self._open(fs, shard) as (pf, remote):
            yield from self._pieces(pf, remote, shard, opts, start, seek)

    def _pieces(
        self, pf: pq.ParquetFile, remote: RemoteFile | None, shard: Shard, opts: ReadOptions, start: Start, seek: int
    ) -> Iterator[Piece]:
        meta = pf.metadata
        bounds = [0]
        for rows in row_groups(meta, shard):
            bounds.append(bounds[-1] + rows)
        first_group = max(0, bisect.bisect_right(bounds, max(start.slot, seek)) - 1)
        columns = list(opts.columns) if opts.columns is not None else None
        row = bounds[first_group]
        try:
            for group in range(first_group, meta.num_row_groups):
                row = bounds[group]
                if remote is not None:  # this row group's column chunks and the next one's, concurrently
                    remote.prefetch(column_chunks(meta, group, columns))
                    if group + 1 < meta.num_row_groups:
                        remote.prefetch(column_chunks(meta, group + 1, columns))
                for batch in pf.iter_batches(batch_size=65536, row_groups=[group], columns=columns, use_threads=True):
                    batch.validate(full=True)  # strings UTF-8: pages have no checksums to catch a damaged file
                    yield contiguous(with_schema(batch, opts.schema, shard.url), row)
                    row += batch.num_rows
                if row != bounds[group + 1]:  # a damaged footer (a column's value count) can lose rows silently
                    raise SourceError(
                        f"{shard.url}: row group {group} gave {row - bounds[group]} rows but the footer says "
                        f"{bounds[group + 1] - bounds[group]} (corrupt footer); re-write or remove the file"
                    )
                if remote is not None:
                    remote.release(column_chunks(meta, group, columns))
        except (OSError, pa.ArrowException) as e:
            raise SourceError(
                f"{shard.url}: corrupt Parquet data near row {row} ({e}); re-write or remove it"
            ) from None


def row_groups(meta: pq.FileMetaData, shard: Shard) -> list[int]:
    """Rows of each row group, checked against the file's row count (a damaged footer can disagree)."""
    rows = [int(meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    if any(n < 0 for n in rows) or sum(rows) != meta.num_rows:
        raise SourceError(
            f"{shard.url}: the footer's row groups hold {rows} rows, but the file says {meta.num_rows} in all "
            "(corrupt footer); re-write or remove the file"
        )
    return rows


def column_chunks(meta: pq.FileMetaData, group: int, columns: list[str] | None) -> list[tuple[int, int]]:
    """The byte ranges ``[start, end)`` of row group ``group``'s column chunks that ``columns`` project
    (all of them if None): what the reader will ask for, and nothing else."""
    rg = meta.row_group(group)
    wanted = None if columns is None else set(columns)
    ranges = []
    for c in range(rg.num_columns):
        chunk = rg.column(c)
        if wanted is not None and chunk.path_in_schema.split(".", 1)[0] not in wanted:
            continue
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page and chunk.dictionary_page_offset else None
        start = start if start is not None else chunk.data_page_offset
        ranges.append((int(start), int(start + chunk.total_compressed_size)))
    return ranges
