"""The tar archive under :mod:`headrace.formats.tar`: headers, members, and which members are unsafe.

This layer knows tar, not WebDataset: :func:`members` walks an archive from the byte of a header to
its end, folding pax and GNU long-name headers into the member they describe, and reads a member's
data only when asked; :func:`unsafe` says why a member could escape a directory if it were extracted
(nothing is ever extracted, but such a member makes its sample a malformed record). Damage (a bad
checksum, data that ends inside a member, a size past the end of the file) is a :class:`TarDamage`
naming the shard and the byte.

Sizes come from the archive and are not trusted: a member is read into memory only when it is wanted
and fits the room its caller gives it, and the extended headers of one member only up to
:data:`EXTENDED_BYTES` (a larger one is skipped and makes the member unreadable); the data of a member
not read is skipped by a seek, or, in a compressed stream, read and dropped 1 MiB at a time, so that no
size a header claims (a pax ``size=10**30``, a base-256 ``2**62``) is ever allocated.

>>> import io, tarfile, tempfile, pathlib
>>> from headrace.io.resolve import Shard
>>> path = pathlib.Path(tempfile.mkdtemp(), "shard-0.tar")
>>> with tarfile.open(path, "w") as tar:
...     for name, data in [("a.cls", b"3"), ("a.txt", b"three")]:
...         info = tarfile.TarInfo(name)
...         info.size = len(data)
...         tar.addfile(info, io.BytesIO(data))
>>> shard = Shard(str(path), path.stat().st_size, "tar")
>>> with open(path, "rb") as f:
...     [(m.name, m.byte, m.data) for m in members(f, 0, shard, lambda name: 99 if name.endswith(".txt") else None)]
[('a.cls', 0, None), ('a.txt', 1024, b'three')]
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple
from zlib import adler32

from headrace.core.errors import SourceError
from headrace.formats.chunks import skip_to
from headrace.io.resolve import Shard

BLOCK = 512
READ_BYTES = 1 << 20  # how much is read from the stream at a time
EXTENDED_BYTES = 1 << 20  # the most pax and GNU long-name header data one member may have (tar's own are <1 KiB)
REGULAR = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
PAX = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE})
GNU_LONG = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})
EXTENDED = PAX | GNU_LONG  # headers that describe the member after them
UNSAFE_TYPES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}
_DRIVE = re.compile(r"^[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")
_ZEROS = bytes(BLOCK)  # an end-of-archive block


def unsafe(name: str, kind: bytes, link: str) -> str | None:
    """Why a member must not be read (a name or type that could escape a directory), or None.

    >>> unsafe("../etc/passwd.txt", b"0", ""), unsafe("a.jpg", b"2", "/etc/passwd")
    ("a name with a '..' component", "a symbolic link (to '/etc/passwd')")
    """
    if name.startswith(("/", "\\")) or (name[1:2] == ":" and _DRIVE.match(name)):
        return "an absolute name"
    if ".." in name and ".." in _SEPARATORS.split(name):  # the substring test spares most names the split
        return "a name with a '..' component"
    if kind in REGULAR or kind == tarfile.DIRTYPE:
        return None
    if kind in UNSAFE_TYPES:
        return UNSAFE_TYPES[kind] + (f" (to {link!r})" if link else "")
    return f"a member of type {kind.decode('ascii', 'replace')!r}, which headrace does not read"


class Member(NamedTuple):
    """One archive member: its name, type, the byte of its first header, and its data if it was read.

    ``problem`` says why it cannot be read (its extended headers are over :data:`EXTENDED_BYTES`), and
    ``over`` is the room a wanted member did not fit in (its data was not read): either makes its sample
    a malformed record.
    """

    name: str
    kind: bytes
    byte: int  # where its headers start (a pax or GNU long-name header before the member's own included)
    link: str = ""
    data: bytes | None = None
    problem: str | None = None
    size: int = 0
    over: int | None = None


class TarDamage(SourceError):
    """Corrupt tar data; ``member`` names the member whose data it cuts (None: the damage is in a header,
    so every member before it was read whole)."""

    member: str | None = None


def _damage(message: str, member: str | None) -> TarDamage:
    error = TarDamage(message)
    error.member = member  # an instance attribute: pickled with the error (BaseException keeps __dict__)
    return error


class Header(NamedTuple):
    """The fields of a 512-byte tar header that a reader needs (ustar, GNU and v7 layouts)."""

    name: str
    type: bytes
    size: int
    link: str

    @classmethod
    def parse(cls, buf: bytes) -> Header:
        """The header in ``buf``; ValueError when its checksum or a number field is wrong.

        Parsed here rather than by ``tarfile.TarInfo.frombuf``, which decodes every field (owners,
        times, devices) and takes most of the time of reading small members.

        >>> info = tarfile.TarInfo("train/0001.cls")
        >>> info.size = 1
        >>> Header.parse(info.tobuf(tarfile.USTAR_FORMAT))
        Header(name='train/0001.cls', type=b'0', size=1, link='')
        """
        _check_sum(buf)
        name = _string(buf[0:100])
        kind = buf[156:157]
        if buf[257:265] == b"ustar\x0000" and buf[345] != 0:
            name = _string(buf[345:500]) + "/" + name  # a POSIX name split into prefix and name
        if kind == tarfile.AREGTYPE and name.endswith("/"):
            kind = tarfile.DIRTYPE  # v7 tar: a directory is a file whose name ends with "/"
        if kind == tarfile.DIRTYPE:
            name = name.rstrip("/")
        return cls(name, kind, _number(buf[124:136]), _string(buf[157:257]))


def _check_sum(buf: bytes) -> None:
    """ValueError unless the checksum field holds the sum of the header's bytes, itself counted as 8 spaces."""
    stored = _number(buf[148:156])
    if stored != 256 + _byte_sum(buf) - sum(buf[148:156]):
        signed = 256 + sum(b - 256 if b > 127 else b for i, b in enumerate(buf) if not 148 <= i < 156)
        if stored != signed:  # some old tars summed signed chars
            raise ValueError("bad checksum")


def _byte_sum(data: bytes) -> int:
    """The sum of the bytes of ``data``; for a header, in C: the low half of ``zlib.adler32`` is 1 + that sum
    modulo 65521, which is the sum itself for up to 256 bytes (at most 65280), so two halves give it exactly.

    >>> block = bytes(range(256)) + bytes([255]) * 256
    >>> _byte_sum(block) == sum(block), _byte_sum(b"abc") == sum(b"abc")
    (True, True)
    """
    if len(data) != BLOCK:
        return sum(data)
    return (adler32(data[:256]) & 0xFFFF) + (adler32(data[256:]) & 0xFFFF) - 2


def _string(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "replace")


def _number(field: bytes) -> int:
    """An octal number field, or GNU's base-256 (first byte 0x80, or 0xff for negative numbers)."""
    if field[0] in (0x80, 0xFF):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0xFF else n
    text = field.split(b"\0", 1)[0].strip()
    if text and not text.isdigit():
        raise ValueError(f"bad number field {field!r}")
    return int(text or b"0", 8)


class _Reader:
    """Exact-size reads over a stream in large blocks, counting the bytes (of the tar, decompressed)."""

    def __init__(self, f: BinaryIO, byte: int, shard: Shard) -> None:
        skip_to(f, byte, shard.compression is not None)
        self.f, self.pos, self.shard = f, byte, shard
        self.size = shard.size if shard.compression is None else None  # what the bytes cannot go past
        self.seekable = shard.compression is None and f.seekable()
        self._buf, self._i = b"", 0

    def fits(self, n: int) -> bool:
        """Whether ``n`` more bytes may be there (always, when the size of the data is not known)."""
        return self.size is None or self.pos + n <= self.size

    def read(self, n: int) -> bytes:
        """``n`` bytes, or fewer at the end of the data; ``n`` was checked to be a size worth holding."""
        if self._i + n <= len(self._buf):
            out = self._buf[self._i : self._i + n]
            self._i += n
        else:
            parts, need = [self._buf[self._i :]], n - (len(self._buf) - self._i)
            self._buf, self._i = b"", 0
            while need > 0:
                got = self.f.read(max(need, READ_BYTES))
                if not got:
                    break
                if len(got) > need:
                    self._buf, self._i = got, need
                    got = got[:need]
                parts.append(got)
                need -= len(got)
            out = b"".join(parts)
        self.pos += len(out)
        return out

    def skip(self, n: int) -> bool:
        """Past ``n >= 0`` bytes (within the buffer, by a seek, or read and dropped a block at a time: never
        ``n`` bytes in memory at once); False when the data ends first."""
        if n <= len(self._buf) - self._i:
            self._i += n
            self.pos += n
            return True
        if not self.fits(n):
            return False
        if self.seekable:
            self.pos += n
            self._buf, self._i = b"", 0
            self.f.seek(self.pos)
            return True
        n -= len(self._buf) - self._i
        self.pos += len(self._buf) - self._i
        self._buf, self._i = b"", 0
        readinto = getattr(self.f, "readinto", None)  # io's streams have it; BinaryIO does not promise it
        scratch = memoryview(bytearray(min(n, READ_BYTES)))  # one block, refilled: no allocation per read
        while n > 0:
            step = min(n, len(scratch))
            got = readinto(scratch[:step]) if readinto is not None else len(self.f.read(step))
            if not got:
                return False
            n -= got
            self.pos += got
        return True

    def corrupt(self, what: str, at: int | None = None, member: str | None = None) -> TarDamage:
        """The damage at byte ``at`` (default: here); ``member``: the member whose data it cuts."""
        where = f"byte {self.pos if at is None else at}" + (
            " of the decompressed data" if self.shard.compression else ""
        )
        return _damage(
            f"{self.shard.url}: corrupt tar data at {where}: {what}; the shard is truncated or damaged: "
            "re-write or remove it",
            member,
        )


def members(f: BinaryIO, start: int, shard: Shard, room: Callable[[str], int | None]) -> Iterator[Member]:
    """The members from byte ``start`` (a header) to the end of the archive, the data of a regular member
    read when it has at most ``room(name)`` bytes (None: it is not wanted). Damage raises
    :class:`TarDamage` once the members before it are out."""
    reader = _Reader(f, start, shard)
    while (member := _member(reader, room)) is not None:
        yield member


def _member(reader: _Reader, room: Callable[[str], int | None]) -> Member | None:
    """The next member, its pax and GNU long-name headers folded in; None at the end of the archive."""
    first = reader.pos
    long_name = long_link = problem = None
    pax: dict[bytes, bytes] = {}
    extended = 0  # bytes of extended headers so far
    while True:  # extended headers, then the member's own
        at = reader.pos
        buf = reader.read(BLOCK)
        if len(buf) < BLOCK:
            if not buf and at == first:
                return None  # the end of the data at a member boundary (no end-of-archive blocks): as tar does
            raise reader.corrupt("the data ends inside a header", at)
        if buf == _ZEROS:
            if at != first:
                raise reader.corrupt("an extended header is followed by the end of the archive", at)
            return None
        kind = buf[156:157]
        try:
            info, size = _parsed(buf, kind)
        except ValueError as e:
            raise reader.corrupt(f"not a valid tar header ({e})", at) from None
        if info is None:  # an extended header
            raw = _extended(reader, size, at, room=EXTENDED_BYTES - extended)
            extended += size
            if raw is None:
                problem = (
                    f"has extended headers (pax or GNU long-name, from byte {first}) of over {EXTENDED_BYTES} bytes"
                )
            elif kind == tarfile.GNUTYPE_LONGNAME:
                long_name = _text(raw.split(b"\0", 1)[0])
            elif kind == tarfile.GNUTYPE_LONGLINK:
                long_link = _text(raw.split(b"\0", 1)[0])
            elif kind != tarfile.XGLTYPE:  # global headers set defaults this reader has no use for
                pax.update(_pax_records(raw, reader, at))
            continue
        if b"size" in pax:  # a pax size is the member's, never an extended header's
            size = int(_text(pax[b"size"]))  # checked by _pax_records
        name = _text(pax[b"path"]) if b"path" in pax else long_name if long_name is not None else info.name
        link = _text(pax[b"linkpath"]) if b"linkpath" in pax else long_link if long_link is not None else info.link
        if reader.size is not None and reader.pos + size > reader.size:  # (reader.fits, inlined: once a member)
            raise reader.corrupt(f"the data ends inside member {name!r} (its header says {size} bytes, the file "
                                 f"ends {(reader.size or 0) - reader.pos} bytes on)", first, name)  # fmt: skip
        budget = room(name) if problem is None and info.type in REGULAR else None
        if budget is None or size > budget:
            return _skipped(reader, Member(name, info.type, first, link, None, problem, size, budget))
        data = reader.read(size)
        if len(data) < size:
            raise reader.corrupt(f"the data ends inside member {name!r}", first, name)
        reader.skip(-size % BLOCK)
        return Member(name, info.type, first, link, data, problem, size)


def _extended(reader: _Reader, size: int, at: int, room: int) -> bytes | None:
    """The data of the extended header at byte ``at``, or None (skipped) when it has over ``room`` bytes."""
    if not reader.fits(size):
        raise reader.corrupt(f"the data ends inside an extended header (its header says {size} bytes, the file "
                             f"ends {(reader.size or 0) - reader.pos} bytes on)", at)  # fmt: skip
    if size > room:
        if not reader.skip(size + (-size % BLOCK)):
            raise reader.corrupt("the data ends inside an extended header", at)
        return None
    raw = reader.read(size)
    if len(raw) < size:
        raise reader.corrupt("the data ends inside an extended header", at)
    reader.skip(-size % BLOCK)
    return raw


def _skipped(reader: _Reader, member: Member) -> Member:
    """``member``, its data skipped."""
    if not reader.skip(member.size + (-member.size % BLOCK)):
        raise reader.corrupt(f"the data ends inside member {member.name!r} (of {member.size} bytes)",
                             member.byte, member.name)  # fmt: skip
    return member


def _parsed(buf: bytes, kind: bytes) -> tuple[Header | None, int]:
    """The member's own header and its size, or None and the size for an extended header (whose name and
    link are never used: it is only checked); ValueError as :meth:`Header.parse`, or for a negative size."""
    if kind in EXTENDED:
        _check_sum(buf)
        info, size = None, _number(buf[124:136])
    else:
        info = Header.parse(buf)
        size = info.size
    if size < 0:
        raise ValueError(f"a negative size, {size}")
    return info, size


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _pax_records(data: bytes, reader: _Reader, at: int) -> dict[bytes, bytes]:
    """The ``"%d key=value\\n"`` records of a pax extended header, keys and values undecoded."""
    out: dict[bytes, bytes] = {}
    i = 0
    while i < len(data) and data[i] != 0:
        space = data.find(b" ", i)
        try:
            length = int(data[i:space])
        except ValueError:
            length = 0
        record = data[space + 1 : i + length]
        if space < 0 or length <= 0 or i + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise reader.corrupt("a malformed pax extended header", at)
        key, _, value = record[:-1].partition(b"=")
        out[key] = value
        i += length
    if b"size" in out and not _natural(_text(out[b"size"])):
        raise reader.corrupt(f"a malformed pax extended header (size {_text(out[b'size'])[:40]!r})", at)
    return out


def _natural(text: str) -> bool:
    """Whether ``int(text)`` is a number >= 0."""
    try:
        return int(text) >= 0
    except ValueError:
        return False
