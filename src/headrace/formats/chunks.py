"""Line-aligned chunks of a (possibly compressed) file, each a pure function of where it starts.

A chunk is ``chunk_bytes`` bytes extended to the end of the line, so restarting at any chunk's
start byte reproduces the same chunks after it — which is what makes resume exact.

No line longer than ``max_line`` bytes is ever held in memory: a chunk is cut before such a line,
and the line itself becomes a chunk of its own with no data (``long`` says how long it was), read
through and dropped, so that readers can report it (``file:line``) as one malformed record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from headrace.core.errors import RecordError
from headrace.core.state import FieldError
from headrace.io.resolve import Shard, open_stream

MAX_LINE_BYTES = 1 << 30  # the default longest line (1 GiB): Arrow's JSON reader takes blocks below 2 GiB
DROP_BYTES = 1 << 20  # an over-long line is read through in pieces of this size


@dataclass(frozen=True)
class Chunk:
    data: bytes  # whole lines, the last one possibly without "\n" at the end of the file
    byte: int  # decompressed offset of data[0]
    long: int = -1  # >= 0: the chunk is one line of this many bytes (without "\n"), over max_line, not kept


def skip_to(f: BinaryIO, byte: int, compressed: bool) -> None:
    if byte <= 0:
        return
    if not compressed and f.seekable():
        f.seek(byte)
        return
    left = byte
    while left > 0:
        got = f.read(min(left, 1 << 22))
        if not got:
            break
        left -= len(got)


def skip_to_line(f: BinaryIO, shard: Shard, byte: int) -> None:
    """``skip_to(byte)``, refusing a ``byte`` that is not where a line starts (a resumed state's position:
    the byte before it must be a newline), or that is past the end of the file."""
    if byte <= 0:
        return
    skip_to(f, byte - 1, shard.compression is not None)
    before = f.read(1)
    if before != b"\n":
        problem = "is past the end of" if not before else "is not at the start of a line of"
        raise FieldError("byte", f"{byte} {problem} shard {shard.url}")


class _Pushback:
    """A stream's ``read``/``readline`` with bytes that were read too far given back in front."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.back = b""

    def read(self, n: int) -> bytes:
        if not self.back:
            return self.f.read(n)
        head, self.back = self.back[:n], self.back[n:]
        return head + self.f.read(n - len(head)) if len(head) < n else head

    def readline(self, limit: int) -> bytes:
        if not self.back:
            return self.f.readline(limit)
        cut = self.back.find(b"\n", 0, limit)
        n = cut + 1 if cut >= 0 else min(limit, len(self.back))
        head, self.back = self.back[:n], self.back[n:]
        if head.endswith(b"\n") or len(head) >= limit:
            return head
        return head + self.f.readline(limit - len(head))


def chunks(
    fs: Any, shard: Shard, chunk_bytes: int, start_byte: int = 0, max_line: int = MAX_LINE_BYTES
) -> Iterator[Chunk]:
    """The chunks from ``start_byte`` (a line start) to the end of the file; see the module docstring.

    A chunk starts with ``min(chunk_bytes, max_line)`` bytes, so every line that ends inside them is
    short enough; only its last line is extended, by at most what ``max_line`` still allows.
    """
    with open_stream(fs, shard) as raw:
        skip_to_line(raw, shard, start_byte)
        f = _Pushback(raw)
        byte = start_byte
        first = max(1, min(chunk_bytes, max_line))
        while True:
            data = f.read(first)
            if not data:
                return
            if not data.endswith(b"\n"):
                begin = data.rfind(b"\n") + 1  # where the unfinished last line begins
                allowed = max_line - (len(data) - begin)  # bytes of it still allowed (without "\n")
                rest = f.readline(allowed + 1) if allowed >= 0 else b""
                data += rest
                if allowed < 0 or (len(rest) == allowed + 1 and not rest.endswith(b"\n")):  # too long
                    if begin > 0:  # the lines before it are a chunk; the long line starts the next one
                        f.back = data[begin:] + f.back
                        yield Chunk(data[:begin], byte)
                        byte += begin
                        continue
                    size = len(data)
                    while not data.endswith(b"\n"):
                        data = f.readline(DROP_BYTES)
                        if not data:
                            break
                        size += len(data)
                    yield Chunk(b"", byte, long=size - int(data.endswith(b"\n")))
                    byte += size
                    continue
            yield Chunk(data, byte)
            byte += len(data)


def too_long(shard: Shard, line_no: int, length: int, limit: int) -> RecordError:
    """The error of a line over ``max_line_bytes`` (JSON Lines and text)."""
    return RecordError(
        f"{shard.url}:{line_no}: the line is {length} bytes long, over max_line_bytes={limit}; pass a larger "
        "max_line_bytes= to hr.open(), or open with errors='skip' to leave it out"
    )


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a chunk without their ``\\n`` (a final empty piece after the last ``\\n`` dropped)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines
