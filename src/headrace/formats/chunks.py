"""Line-aligned chunks of a (possibly compressed) file, each a pure function of where it starts.

A chunk is ``chunk_bytes`` bytes extended to the end of the line, so restarting at any chunk's
start byte reproduces the same chunks after it — which is what makes resume exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from headrace.io.resolve import Shard, open_stream


@dataclass(frozen=True)
class Chunk:
    data: bytes  # whole lines, the last one possibly without "\n" at the end of the file
    byte: int  # decompressed offset of data[0]


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


def chunks(fs: Any, shard: Shard, chunk_bytes: int, start_byte: int = 0) -> Iterator[Chunk]:
    with open_stream(fs, shard) as f:
        skip_to(f, start_byte, shard.compression is not None)
        byte = start_byte
        while True:
            data = f.read(chunk_bytes)
            if not data:
                return
            if not data.endswith(b"\n"):
                data += f.readline()
            yield Chunk(data, byte)
            byte += len(data)


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a chunk without their ``\\n`` (a final empty piece after the last ``\\n`` dropped)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines
