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
nothing before it. The archive itself (headers, members, which members are unsafe) is read by
:mod:`headrace.formats.tar_archive`; this module groups its members into samples and rows.

Nothing is ever extracted: members are read into memory only. Still, a member that could escape a
directory if it were — an absolute name, a ``..`` component, a symbolic or hard link, a device or
FIFO, or a type headrace does not read — makes its sample a malformed record (a
:class:`RecordError` naming the shard and the member; ``errors="skip"``/``"warn"`` skip and count
it), as do an integer or JSON member that does not parse and a sample with the same extension twice.
A header with a bad checksum, a size past the end of the file and data that ends inside a member are a
:class:`SourceError` naming the shard and the byte, raised after every sample before the damage was
delivered — the sample just before a damaged header too, all of whose members were read whole; a
sample whose member the damage cuts is lost with the rest of the shard (under ``errors="skip"`` the
rest of the shard is quarantined and counted as one skip).

Member sizes are not trusted either. A member is held in memory only when its column is read (others
are skipped by a seek, or read and dropped 1 MiB at a time in a compressed stream), and only up to
``format_options={"max_member_bytes": N}`` bytes, :data:`MAX_MEMBER_BYTES` (256 MiB) by default, for
a member and for the members of one sample together: a larger member, one that would take its sample
past that, or pax and GNU long-name headers of over 1 MiB make its sample a malformed record (a
:class:`RecordError` naming the shard, the member and its size; ``errors="skip"`` skips and counts it)
and is skipped without being read. 256 MiB holds any image, audio clip or short video a training
sample carries, and bounds what one sample costs a worker: the member, its Arrow column and its
decoded form, several samples in flight per worker; raise it for longer videos or whole documents.

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
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from headrace.core.errors import RecordError, SourceError
from headrace.core.policy import ErrorLog
from headrace.formats.base import Format, Piece, ReadOptions, Start, split_at_errors
from headrace.formats.tar_archive import TarDamage, members, unsafe
from headrace.io.resolve import Shard, open_stream

FIRST_PIECE_BYTES = 64 << 10  # the first piece of a shard; pieces double from there to chunk_bytes
SCHEMA_SAMPLES = 1000  # the schema is the union of the extensions of this many first samples
MAX_MEMBER_BYTES = 256 << 20  # the largest member read into memory, unless format_options says otherwise
KEY = "__key__"
INT_EXTENSIONS = frozenset({"cls", "cls2", "class", "count", "index", "inx", "id", "label"})
TEXT_EXTENSIONS = frozenset({"txt", "text"})
JSON_EXTENSIONS = frozenset({"json"})


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


@dataclass
class Sample:
    """The consecutive members sharing a key; ``problem`` says why it cannot be read (None: it can)."""

    key: str
    byte: int
    values: dict[str, bytes | None] = field(default_factory=dict)
    problem: str | None = None


def samples(
    f: BinaryIO, start: int, shard: Shard, wanted: frozenset[str] | None, max_bytes: int = MAX_MEMBER_BYTES
) -> Iterator[Sample]:
    """The samples from byte ``start``, their values read for the extensions ``wanted`` (None: all), up to
    ``max_bytes`` for each sample. On damage, the sample before it is yielded when all its members were whole.
    """

    split = lru_cache(maxsize=2)(split_name)  # each name is split to choose what to read, then to group

    def room(name: str) -> int | None:
        """How many bytes of member ``name`` may be read: what its sample's members read so far leave."""
        parts = split(name)
        if parts is None or (wanted is not None and parts[1] not in wanted):
            return None
        if sample is None or parts[0] != sample.key:
            return max_bytes
        return None if sample.problem is not None else max_bytes - used  # a malformed sample's are never used

    sample: Sample | None = None
    used = 0  # bytes of the sample's values
    try:
        for m in members(f, start, shard, room):
            problem = unsafe(m.name, m.kind, m.link)
            parts = split(m.name)
            ignored = m.kind == tarfile.DIRTYPE or parts is None or _metadata(m.name)
            if ignored and problem is None and m.problem is None:  # (m.over is None: it was not wanted)
                continue  # what WebDataset ignores
            key, extension = parts if parts is not None else (m.name, "")
            if sample is None or key != sample.key:
                if sample is not None:
                    yield sample
                sample, used = Sample(key, m.byte), 0
            if problem is not None:
                why: str | None = f"is {problem}"
            elif m.problem is not None:
                why = m.problem
            elif m.over is not None:
                why = f"has {m.size} bytes, {_over(max_bytes, m.over)}"
            elif extension in sample.values:
                why = f"repeats extension {extension!r}"
            else:
                why = None
                sample.values[extension] = m.data
                used += 0 if m.data is None else len(m.data)
            if why is not None:
                sample.problem = sample.problem or f"member {m.name!r} (byte {m.byte}) {why}"
    except TarDamage as e:
        cut = None if e.member is None else (split(e.member) or (e.member, ""))[0]
        if sample is not None and cut != sample.key:
            yield sample  # the damage is after its last member: it is whole
        raise
    if sample is not None:
        yield sample


def _metadata(name: str) -> bool:
    return "/" not in name and name.startswith("__") and name.split(".", 1)[0].endswith("__")


def _over(max_bytes: int, room: int) -> str:
    """Why a member of more than ``room`` bytes was not read."""
    what = f"max_member_bytes={max_bytes}"
    if room < max_bytes:
        what = f"the {room} bytes its sample's other members leave of {what}"
    return f"over {what} (open with format_options={{'max_member_bytes': N}} to read it)"


def max_member_bytes(opts: ReadOptions) -> int:
    """``format_options={"max_member_bytes": N}``, checked; :data:`MAX_MEMBER_BYTES` when not given.

    >>> max_member_bytes(ReadOptions()) >> 20, max_member_bytes(ReadOptions(extra=(("max_member_bytes", 10),)))
    (256, 10)
    """
    value = dict(opts.extra).get("max_member_bytes", MAX_MEMBER_BYTES)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"format_options: max_member_bytes must be a positive number of bytes, got {value!r}")
    return value


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
        """``__key__`` and the extensions of the first :data:`SCHEMA_SAMPLES` readable samples, sorted.

        With ``opts.columns``, it stops at the first sample by which all of them were found: their types
        follow from their names, and a column not found in those samples is still an unknown column.
        """
        found: set[str] = set()
        needed = None if opts.columns is None else set(opts.columns) - {KEY}
        seen = 0
        max_bytes = max_member_bytes(opts)
        with open_stream(fs, shard) as f:
            try:
                for sample in samples(f, 0, shard, frozenset(), max_bytes):
                    if sample.problem is None:
                        found.update(sample.values)
                        seen += 1
                        if seen >= SCHEMA_SAMPLES or (needed is not None and needed <= found):
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
            return sum(1 for _ in samples(f, 0, shard, frozenset(), max_member_bytes(opts)))

    def pieces(
        self, fs: Any, shard: Shard, opts: ReadOptions, start: Start, seek: int, log: ErrorLog
    ) -> Iterator[Piece]:
        wanted = None if opts.columns is None else frozenset(opts.columns)
        max_bytes = max_member_bytes(opts)
        first, byte = start.slot, max(start.byte, 0)
        batch: list[Sample] = []
        with open_stream(fs, shard) as f:
            try:
                for sample in samples(f, byte, shard, wanted, max_bytes):
                    if batch and sample.byte - byte >= piece_bytes(byte, opts.chunk_bytes):
                        yield from _piece(batch, first, byte, shard, opts, seek, log)
                        first, batch = first + len(batch), []
                    if not batch:
                        byte = sample.byte
                    batch.append(sample)
            except SourceError:  # corrupt data: the whole samples before it are delivered first
                yield from _piece(batch, first, byte, shard, opts, seek, log)
                raise
            yield from _piece(batch, first, byte, shard, opts, seek, log)


def piece_bytes(byte: int, chunk_bytes: int) -> int:
    """Bytes of archive in the piece that starts at ``byte``: 64 KiB at the start of a shard, doubling to
    ``chunk_bytes`` — small first pieces for a soon first batch; a pure function of where the piece starts,
    so a resumed read cuts the same pieces.

    >>> [piece_bytes(b, 1 << 20) >> 10 for b in (0, 70_000, 140_000, 600_000, 5_000_000)]
    [64, 68, 136, 585, 1024]
    """
    return min(chunk_bytes, max(FIRST_PIECE_BYTES, byte))


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
