"""Plain text: one record per line (``text_mode="line"``, the default) or one per file (``"file"``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.errors import RecordError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, split_at_errors
from headrace.formats.chunks import DROP_BYTES, chunks, split_lines, too_long
from headrace.io.resolve import Shard, open_stream


class TextFormat(Format):
    name = "text"

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        return pa.schema([(opts.text_column, pa.string())])

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        if opts.text_mode == "file":
            return 1
        return sum(
            len(split_lines(c.data)) if c.long < 0 else 1 for c in chunks(fs, shard, 1 << 22, 0, opts.max_line_bytes)
        )

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        name = opts.text_column
        limit = opts.max_line_bytes
        if opts.text_mode == "file":
            with open_stream(fs, shard) as f:
                parts: list[bytes] = []  # in pieces: read(limit + 1) would reserve max_line_bytes per file
                size = 0
                while size <= limit and (more := f.read(min(DROP_BYTES, limit + 1 - size))):
                    parts.append(more)
                    size += len(more)
                raw = b"".join(parts)
                while size > limit and (more := f.read(DROP_BYTES)):  # read through, to say how long it is
                    size += len(more)
            if size > limit:  # the whole file is one record, over the limit
                error = RecordError(
                    f"{shard.url}: the file is {size} bytes long, over max_line_bytes={limit} (the longest record "
                    "with text_mode='file'); pass a larger max_line_bytes= to hr.open(), or open with errors='skip'"
                )
                yield from split_at_errors(_empty(name), _NONE, (0, 1), Start(0, -1, -1), [(0, error)], seek, log)
                return
            yield from _pieces(name, [raw], 0, 1, Start(0, -1, -1), shard, seek, log)
            return
        slot, line_no = start.slot, max(start.line, 1)
        for chunk in chunks(fs, shard, opts.chunk_bytes, max(start.byte, 0), limit):
            if chunk.long >= 0:  # one line over the limit, not read: a malformed record at its own slot
                here = Start(slot, chunk.byte, line_no)
                error = too_long(shard, line_no, chunk.long, limit)
                yield from split_at_errors(_empty(name), _NONE, (slot, slot + 1), here, [(slot, error)], seek, log)
                slot, line_no = slot + 1, line_no + 1
                continue
            lines = split_lines(chunk.data)
            if slot + len(lines) > seek:  # else all before the first slot needed: skip decoding
                lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
                yield from _pieces(name, lines, slot, line_no, Start(slot, chunk.byte, line_no), shard, seek, log)
            slot += len(lines)
            line_no += len(lines)


_NONE = np.arange(0, dtype=np.int64)


def _empty(name: str) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=pa.string())], names=[name])


def _pieces(
    name: str, raw: list[bytes], first: int, first_line: int, start: Start, shard: Shard, seek: int, log: ErrorLog
) -> Iterator[Piece]:
    """Pieces of the decoded lines (or the one file) ``raw``, slots ``first..``, cut at invalid UTF-8."""
    whole_file = start.byte < 0
    slots = np.arange(first, first + len(raw), dtype=np.int64)
    try:
        texts = [raw[0].decode("utf-8")] if whole_file else b"\n".join(raw).decode("utf-8").split("\n")
        errors: list[tuple[int, RecordError]] = []
    except UnicodeDecodeError:
        texts, good, errors = [], [], []
        for i, line in enumerate(raw):
            try:
                texts.append(line.decode("utf-8"))
                good.append(i)
            except UnicodeDecodeError as e:
                where = shard.url if whole_file else f"{shard.url}:{first_line + i}"
                message = f"{where}: not valid UTF-8 ({e}); fix the text or open with errors='skip'"
                errors.append((first + i, RecordError(message)))
        slots = slots[good]
    batch = pa.RecordBatch.from_arrays([pa.array(texts, type=pa.string())], names=[name])
    yield from split_at_errors(batch, slots, (first, first + len(raw)), start, errors, seek, log)
