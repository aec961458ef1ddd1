"""Plain text: one record per line (``text_mode="line"``, the default) or one per file (``"file"``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.errors import RecordError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start
from headrace.formats.chunks import chunks, split_lines
from headrace.io.resolve import Shard, open_stream


class TextFormat(Format):
    name = "text"

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        return pa.schema([(opts.text_column, pa.string())])

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        if opts.text_mode == "file":
            return 1
        return sum(len(split_lines(c.data)) for c in chunks(fs, shard, 1 << 22))

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        name = opts.text_column
        if opts.text_mode == "file":
            with open_stream(fs, shard) as f:
                texts = _decode([f.read()], 1, shard, log, whole_file=True)
            yield _piece(name, texts, 0, Start(0, -1, -1))
            return
        slot, line_no = start.slot, max(start.line, 1)
        for chunk in chunks(fs, shard, opts.chunk_bytes, max(start.byte, 0)):
            lines = [line[:-1] if line.endswith(b"\r") else line for line in split_lines(chunk.data)]
            texts = _decode(lines, line_no, shard, log, whole_file=False)
            yield _piece(name, texts, slot, Start(slot, chunk.byte, line_no))
            slot += len(lines)
            line_no += len(lines)


def _decode(raw: list[bytes], first_line: int, shard: Shard, log: ErrorLog, *, whole_file: bool) -> list[str | None]:
    try:
        texts: list[str | None] = []
        texts += b"\n".join(raw).decode("utf-8").split("\n") if not whole_file else [raw[0].decode("utf-8")]
        return texts
    except UnicodeDecodeError:
        pass
    out: list[str | None] = []
    for i, line in enumerate(raw):
        try:
            out.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            where = f"{shard.url}" if whole_file else f"{shard.url}:{first_line + i}"
            log.record(RecordError(f"{where}: not valid UTF-8 ({e}); fix the text or open with errors='skip'"))
            out.append(None)
    return out


def _piece(name: str, texts: list[str | None], first: int, start: Start) -> Piece:
    keep = [i for i, t in enumerate(texts) if t is not None]
    values = texts if len(keep) == len(texts) else [texts[i] for i in keep]
    batch = pa.RecordBatch.from_arrays([pa.array(values, type=pa.string())], names=[name])
    return Piece(batch, np.asarray(keep, dtype=np.int64) + first, start, first + len(texts))
