"""WebDataset-style tar shards: one row per sample, a sample being the consecutive members sharing a key.

A member's *key* is its path up to the first dot of its file name, the rest is its *extension*
(lower-cased): ``train/000123.jpg``, ``train/000123.cls`` and ``train/000123.seg.png`` make one sample
with key ``train/000123`` and columns ``jpg``, ``cls`` and ``seg.png``. Each row has a ``__key__``
column and one column per extension, typed by the extension:

- ``cls``, ``cls2``, ``class``, ``count``, ``index``, ``inx``, ``id``, ``label``: ``int64`` (the text
  of the member, a decimal integer);
- ``txt``, ``text``: ``string`` (UTF-8);
- ``json``: ``string`` holding the member's JSON text, checked to parse (decode it in a ``map`` with
  ``json.loads``: a struct column typed from the first samples would break on the first sample
  whose fields differ);
- anything else (``jpg``, ``png``, ``npy``, ...): ``binary``, the member's bytes as they are.

A sample missing an extension has a null there. The columns are the extensions of the first
samples of the first shard (see :data:`SCHEMA_SAMPLES`); pass ``columns=[...]`` when later samples
add extensions. Directories, files without an extension and top-level ``__name__`` metadata are
ignored, as WebDataset does.

Shards are read sequentially from :func:`~headrace.io.resolve.open_stream` (local, remote, and
compressed: ``.tar.gz``, ``.tar.zst``, ...), in pieces of about ``chunk_bytes`` of the archive. A piece
starts at the first header of its first sample (pax and GNU long-name headers included), which is the
``Start.byte`` a checkpoint stores: a resume seeks there (or, compressed, reads up to it) and reads
nothing before it.

Nothing is ever extracted: members are read into memory only. Still, a member that could escape a
directory if it were — an absolute name, a ``..`` component, a symbolic or hard link, a device or
FIFO, or a type headrace does not read — makes its sample a malformed record (a
:class:`RecordError` naming the shard and the member; ``errors="skip"``/``"warn"`` skip and count
it), as do an integer or JSON member that does not parse and a sample with the same extension twice.
A header with a bad checksum and data that ends inside a member are a :class:`SourceError` naming the
shard and the byte, raised after the samples before the damage were delivered (under ``errors="skip"``
the rest of the shard is then quarantined).

>>> import io, tarfile, tempfile, pathlib, headrace as hr
>>> path = pathlib.Path(tempfile.mkdtemp(), "shard-0.tar")
>>> with tarfile.open(path, "w") as tar:
...     for name, data in [("a.cls", b"3"), ("a.txt", b"three"), ("b.cls", b"5"), ("b.txt", b"five")]:
...         info = tarfile.TarInfo(name)
...         info.size = len(data)
...         tar.addfile(info, io.BytesIO(data))
>>> list(hr.open(str(path)))
[{'__key__': 'a', 'cls': 3, 'txt': 'three'}, {'__key__': 'b', 'cls': 5, 'txt': 'five'}]
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from headrace.core.errors import RecordError, SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, split_at_errors
from headrace.formats.chunks import skip_to
from headrace.io.resolve import Shard, open_stream

BLOCK = 512
READ_BYTES = 1 << 20  # how much is read from the stream at a time
SCHEMA_SAMPLES = 1000  # the schema is the union of the extensions of this many first samples
KEY = "__key__"
INT_EXTENSIONS = frozenset({"cls", "cls2", "class", "count", "index", "inx", "id", "label"})
TEXT_EXTENSIONS = frozenset({"txt", "text"})
JSON_EXTENSIONS = frozenset({"json"})
REGULAR = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
PAX = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE})
GNU_LONG = frozenset({tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})
UNSAFE_TYPES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}
_DRIVE = re.compile(r"^[A-Za-z]:")


def column_type(extension: str) -> pa.DataType:
    """The Arrow type of an extension's column.

    >>> column_type("cls"), column_type("json"), column_type("jpg")
    (DataType(int64), DataType(string), DataType(binary))
    """
    if extension in INT_EXTENSIONS:
        return pa.int64()
    if extension in TEXT_EXTENSIONS or extension in JSON_EXTENSIONS:
        return pa.string()
    return pa.binary()


def split_name(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member name, WebDataset's way; None when the file name has no extension.

    >>> split_name("train/000123.seg.PNG"), split_name("README"), split_name("d/.hidden")
    (('train/000123', 'seg.png'), None, None)
    """
    folder, slash, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem or not extension:
        return None
    return folder + slash + stem, extension.lower()


def unsafe(name: str, kind: bytes, link: str) -> str | None:
    """Why a member must not be read (a name or type that could escape a directory), or None.

    >>> unsafe("../etc/passwd.txt", b"0", ""), unsafe("a.jpg", b"2", "/etc/passwd")
    ("a name with a '..' component", "a symbolic link (to '/etc/passwd')")
    """
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "an absolute name"
    if ".." in re.split(r"[/\\]", name):
        return "a name with a '..' component"
    if kind in UNSAFE_TYPES:
        return UNSAFE_TYPES[kind] + (f" (to {link!r})" if link else "")
    if kind not in REGULAR and kind != tarfile.DIRTYPE:
        return f"a member of type {kind.decode('ascii', 'replace')!r}, which headrace does not read"
    return None


@dataclass(frozen=True)
class Member:
    """One archive member: its name, type, the byte of its first header, and its data if it was read."""

    name: str
    kind: bytes
    byte: int  # where its headers start (a pax or GNU long-name header before the member's own included)
    link: str = ""
    data: bytes | None = None


@dataclass
class Sample:
    """The consecutive members sharing a key; ``problem`` says why it cannot be read (None: it can)."""

    key: str
    byte: int
    values: dict[str, bytes | None] = field(default_factory=dict)
    problem: str | None = None


@dataclass(frozen=True)
class Header:
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
        stored = _number(buf[148:156])
        if stored != 256 + sum(buf) - sum(buf[148:156]):  # the checksum field counted as 8 spaces
            signed = 256 + sum(b - 256 if b > 127 else b for i, b in enumerate(buf) if not 148 <= i < 156)
            if stored != signed:  # some old tars summed signed chars
                raise ValueError("bad checksum")
        name = _string(buf[0:100])
        kind = buf[156:157]
        if buf[257:265] == b"ustar\x0000" and buf[345] != 0:
            name = _string(buf[345:500]) + "/" + name  # a POSIX name split into prefix and name
        if kind == tarfile.AREGTYPE and name.endswith("/"):
            kind = tarfile.DIRTYPE  # v7 tar: a directory is a file whose name ends with "/"
        if kind == tarfile.DIRTYPE:
            name = name.rstrip("/")
        return cls(name, kind, _number(buf[124:136]), _string(buf[157:257]))


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

    def read(self, n: int) -> bytes:
        """``n`` bytes, or fewer at the end of the data."""
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

    def skip(self, n: int) -> None:
        buffered = len(self._buf) - self._i
        if n <= buffered or not self.seekable:
            if len(self.read(n)) < n:
                raise self.corrupt("the data ends inside a member")
            return
        self.pos += n
        self._buf, self._i = b"", 0
        if self.size is not None and self.pos > self.size:
            raise self.corrupt(f"the data ends inside a member (the file has {self.size} bytes)")
        self.f.seek(self.pos)

    def corrupt(self, what: str) -> SourceError:
        where = f"byte {self.pos}" + (" of the decompressed data" if self.shard.compression else "")
        return SourceError(
            f"{self.shard.url}: corrupt tar data at {where}: {what}; the shard is truncated or damaged: "
            "re-write or remove it"
        )


def members(f: BinaryIO, start: int, shard: Shard, wanted: Callable[[str], bool]) -> Iterator[Member]:
    """The members from byte ``start`` (a header) to the end of the archive; data read where ``wanted(name)``."""
    reader = _Reader(f, start, shard)
    while True:
        first = reader.pos
        long_name = long_link = None
        pax: dict[str, str] = {}
        while True:  # extended headers, then the member's own
            at = reader.pos
            buf = reader.read(BLOCK)
            if not buf and at == first:
                return  # the end of the data at a member boundary (no end-of-archive blocks): as tar does
            if len(buf) < BLOCK:
                raise reader.corrupt("the data ends inside a header")
            if buf.count(0) == BLOCK:
                if at != first:
                    raise reader.corrupt("an extended header is followed by the end of the archive")
                return
            try:
                info = Header.parse(buf)
            except ValueError as e:
                reader.pos = at
                raise reader.corrupt(f"not a valid tar header ({e})") from None
            size = int(pax.get("size", info.size))
            if info.type in PAX or info.type in GNU_LONG:
                extended = reader.read(size)
                if len(extended) < size:
                    raise reader.corrupt("the data ends inside an extended header")
                reader.skip(-size % BLOCK)
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = _text(extended.split(b"\0", 1)[0])
                elif info.type == tarfile.GNUTYPE_LONGLINK:
                    long_link = _text(extended.split(b"\0", 1)[0])
                elif info.type != tarfile.XGLTYPE:  # global headers set defaults this reader has no use for
                    pax.update(_pax_records(extended, reader, at))
                continue
            name = pax.get("path", long_name if long_name is not None else info.name)
            link = pax.get("linkpath", long_link if long_link is not None else info.link)
            data = None
            if info.type in REGULAR and wanted(name):
                data = reader.read(size)
                if len(data) < size:
                    raise reader.corrupt(f"the data ends inside member {name!r}")
                reader.skip(-size % BLOCK)
            else:
                reader.skip(size + (-size % BLOCK))
            yield Member(name, info.type, first, link, data)
            break


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _pax_records(data: bytes, reader: _Reader, at: int) -> dict[str, str]:
    """The ``"%d key=value\\n"`` records of a pax extended header."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data) and data[i] != 0:
        space = data.find(b" ", i)
        try:
            length = int(data[i:space])
        except ValueError:
            length = 0
        record = data[space + 1 : i + length]
        if space < 0 or length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            reader.pos = at
            raise reader.corrupt("a malformed pax extended header")
        key, _, value = record[:-1].partition(b"=")
        out[_text(key)] = _text(value)
        i += length
    return out


def samples(f: BinaryIO, start: int, shard: Shard, wanted: frozenset[str] | None) -> Iterator[Sample]:
    """The samples from byte ``start``, their values read for the extensions ``wanted`` (None: all)."""

    def want(name: str) -> bool:
        parts = split_name(name)
        return parts is not None and (wanted is None or parts[1] in wanted)

    sample: Sample | None = None
    for m in members(f, start, shard, want):
        problem = unsafe(m.name, m.kind, m.link)
        parts = split_name(m.name)
        if problem is None and (m.kind == tarfile.DIRTYPE or parts is None or _metadata(m.name)):
            continue  # what WebDataset ignores
        key, extension = parts if parts is not None else (m.name, "")
        if sample is None or key != sample.key:
            if sample is not None:
                yield sample
            sample = Sample(key, m.byte)
        if problem is not None:
            sample.problem = sample.problem or f"member {m.name!r} (byte {m.byte}) is {problem}"
        elif extension in sample.values:
            sample.problem = sample.problem or f"member {m.name!r} (byte {m.byte}) repeats extension {extension!r}"
        else:
            sample.values[extension] = m.data
    if sample is not None:
        yield sample


def _metadata(name: str) -> bool:
    return "/" not in name and name.startswith("__") and name.split(".", 1)[0].endswith("__")


def _value(extension: str, raw: bytes) -> Any:
    """A member's bytes as its column holds them; ValueError when they do not parse."""
    if extension in INT_EXTENSIONS:
        return int(raw.decode("ascii").strip())
    if extension in TEXT_EXTENSIONS:
        return raw.decode("utf-8")
    if extension in JSON_EXTENSIONS:
        text = raw.decode("utf-8")
        json.loads(text)
        return text
    return raw


class TarFormat(Format):
    name = "tar"

    def schema(self, fs: Any, shard: Shard, opts: ReadOptions, log: ErrorLog) -> pa.Schema:
        """``__key__`` and the extensions of the first :data:`SCHEMA_SAMPLES` readable samples, sorted."""
        found: set[str] = set()
        seen = 0
        with open_stream(fs, shard) as f:
            try:
                for sample in samples(f, 0, shard, frozenset()):
                    if sample.problem is None:
                        found.update(sample.values)
                        seen += 1
                        if seen >= SCHEMA_SAMPLES:
                            break
            except SourceError:
                if not seen:
                    raise
                # corrupt data further on: the samples before it give the schema; reading raises at the byte
        if not seen:
            raise SourceError(f"{shard.url}: no samples in the tar file (members named KEY.EXTENSION); "
                              "remove it or fix the glob")  # fmt: skip
        return pa.schema([(KEY, pa.string())] + [(e, column_type(e)) for e in sorted(found)])

    def count(self, fs: Any, shard: Shard, opts: ReadOptions) -> int:
        with open_stream(fs, shard) as f:
            return sum(1 for _ in samples(f, 0, shard, frozenset()))

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        wanted = None if opts.columns is None else frozenset(opts.columns)
        first, byte = start.slot, max(start.byte, 0)
        batch: list[Sample] = []
        with open_stream(fs, shard) as f:
            try:
                for sample in samples(f, byte, shard, wanted):
                    if batch and sample.byte - byte >= opts.chunk_bytes:  # a pure function of where the piece starts
                        yield from _piece(batch, first, byte, shard, opts, seek, log)
                        first, batch = first + len(batch), []
                    if not batch:
                        byte = sample.byte
                    batch.append(sample)
            except SourceError:  # corrupt data: the whole samples before it are delivered first
                yield from _piece(batch, first, byte, shard, opts, seek, log)
                raise
            yield from _piece(batch, first, byte, shard, opts, seek, log)


def _piece(
    batch: list[Sample], first: int, byte: int, shard: Shard, opts: ReadOptions, seek: int, log: ErrorLog
) -> Iterator[Piece]:
    """The pieces of ``batch`` (samples ``first..``, starting at ``byte``), cut at malformed samples."""
    end = first + len(batch)
    if not batch or end <= seek:
        return  # all before the first slot needed: nothing to decode
    rows: list[dict[str, Any]] = []
    good: list[int] = []
    errors: list[tuple[int, RecordError]] = []
    for i, sample in enumerate(batch):
        problem = sample.problem
        row: dict[str, Any] = {KEY: sample.key}
        if problem is None:
            for extension, raw in sample.values.items():
                if raw is None:
                    continue
                try:
                    row[extension] = _value(extension, raw)
                except ValueError as e:
                    problem = f"member {sample.key + '.' + extension!r} is not a valid {extension} value ({e})"
                    break
        if problem is None:
            rows.append(row)
            good.append(first + i)
        else:
            errors.append((first + i, RecordError(
                f"{shard.url}: sample {sample.key!r}: {problem}; remove it from the shard or open with errors='skip'"
            )))  # fmt: skip
    extensions = sorted({e for r in rows for e in r if e != KEY})
    names = [KEY, *extensions] if opts.columns is None else list(opts.columns)
    arrays = [pa.array([r.get(n) for r in rows], type=pa.string() if n == KEY else column_type(n)) for n in names]
    table = pa.RecordBatch.from_arrays(arrays, names=names)
    slots = np.asarray(good, dtype=np.int64)
    yield from split_at_errors(table, slots, (first, end), Start(first, byte, 0), errors, seek, log)
