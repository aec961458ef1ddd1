"""What a prepare run is: its inputs and options (a :class:`Job`) and its units of work (:class:`Unit`).

A unit is a pure function of the inputs and options — one input shard, or for indexed inputs a fixed
range of ``unit_rows`` rows of it — and names its output shards (``part-UUUUU-KKKKK.bin``), so the
output is the same whatever the number of workers, the engine or the order units finish in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.errors import HeadraceError, SchemaError
from headrace.core.redact import redact
from headrace.formats import format_named
from headrace.formats.tokens import WRITE_CODES, token_dtype
from headrace.io.resolve import Shard
from headrace.tokenizer import HFTokenizersTokenizer, TiktokenTokenizer, Tokenizer, TokenizerError, load_tokenizer

DEFAULT_TOKENS_PER_SHARD = 1 << 28  # about 268M tokens: 512 MiB of uint16 per shard
DEFAULT_UNIT_ROWS = 100_000  # rows of an indexed input per unit of work
DTYPES = ("auto", "uint16", "int32")


class PrepareError(HeadraceError):
    """A prepare run that cannot start or go on (options, output folder, or a run already there)."""


@dataclass(frozen=True)
class Unit:
    """Rows ``[lo, hi)`` of input shard ``source`` (``hi = -1``: to the end); its outputs are ``part-{index}-*``."""

    index: int
    source: int
    lo: int
    hi: int

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    def shard_name(self, k: int) -> str:
        return f"{self.name}-{k:05d}"

    def describe(self, shards: Sequence[Shard]) -> dict[str, Any]:
        return {"unit": self.index, "source": redact(shards[self.source].url), "rows": [self.lo, self.hi]}


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to run any unit: picklable, no open files, no credentials in ``describe``."""

    shards: tuple[Shard, ...]
    out: str
    tokenizer: Any  # a spec (path, "tiktoken:NAME") or a picklable headrace Tokenizer
    column: str = "text"
    format: str | None = None
    text_mode: str = "line"
    errors: str = "raise"
    add_bos: bool = False
    add_eos: bool = True
    dtype: str = "uint16"
    tokens_per_shard: int = DEFAULT_TOKENS_PER_SHARD
    unit_rows: int = DEFAULT_UNIT_ROWS
    batch_rows: int = 1024  # documents tokenized at a time: speed and memory only, never the output
    storage_options: dict[str, Any] | None = field(default=None, repr=False)
    tokenizer_info: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The options that decide the output bytes (recorded in the manifest and checked on resume)."""
        return {
            "column": self.column, "format": self.format, "text_mode": self.text_mode, "errors": self.errors,
            "add_bos": self.add_bos, "add_eos": self.add_eos, "dtype": self.dtype,
            "tokens_per_shard": self.tokens_per_shard, "unit_rows": self.unit_rows,
        }  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run: sources, options and tokenizer (by content)."""
        return {
            "sources": [[redact(s.url), s.size] for s in self.shards],  # no credentials in files written
            "options": self.options(),
            "tokenizer": {k: v for k, v in self.tokenizer_info.items() if k != "spec"},
        }


def describe_tokenizer(tok: Tokenizer, spec: Any) -> dict[str, Any]:
    """``tok.describe()`` plus the spec it was loaded from and a sha256 of what defines it."""
    info = dict(tok.describe())
    info["spec"] = spec if isinstance(spec, str) else type(spec).__name__
    if isinstance(tok, HFTokenizersTokenizer):
        info["sha256"] = hashlib.sha256(tok.tok.to_str().encode()).hexdigest()
    elif isinstance(tok, TiktokenTokenizer):
        info["sha256"] = hashlib.sha256(f"tiktoken:{tok.enc.name}".encode()).hexdigest()
    return info


def check_tokenizer(spec: Any, *, add_bos: bool, add_eos: bool, dtype: str) -> tuple[Tokenizer, str]:
    """Load the tokenizer and choose the dtype; a tokenizer that cannot do what the options ask is an error."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    try:
        tok = load_tokenizer(spec)
    except TokenizerError:
        raise
    except Exception as e:  # a broken tokenizer.json or an encoding that cannot be fetched offline
        raise TokenizerError(f"{spec}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    if add_eos and tok.eos_id is None:
        raise TokenizerError(f"{tok.name}: the tokenizer has no end-of-text token to append (--add-eos); "
                             "pass --no-add-eos, or a tokenizer with one")  # fmt: skip
    if add_bos and tok.bos_id is None:
        raise TokenizerError(f"{tok.name}: the tokenizer has no beginning-of-text token to prepend (--add-bos)")
    if dtype not in DTYPES:
        raise PrepareError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    chosen = token_dtype(tok.vocab_size) if dtype == "auto" else np.dtype(dtype)
    top = int(np.iinfo(chosen).max)
    if tok.vocab_size - 1 > top:
        raise PrepareError(f"{tok.name}: a vocabulary of {tok.vocab_size:,} ids does not fit {chosen.name} "
                           f"(ids up to {top:,}); use --dtype int32 or --dtype auto")  # fmt: skip
    assert chosen in WRITE_CODES
    return tok, chosen.name


def check_text_column(schema: pa.Schema, column: str, where: str) -> None:
    """A :class:`SchemaError` unless ``column`` holds text."""
    i = schema.get_field_index(column)
    if i < 0:
        raise SchemaError(f"{where}: no column {column!r}; the columns are {schema.names} (choose one with --column)")
    if not is_text(schema.field(i).type):
        raise SchemaError(f"{where}: column {column!r} holds {schema.field(i).type}, not text; prepare tokenizes a "
                          "string column (choose it with --column)")  # fmt: skip


def is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def plan(job: Job, source_opts: Any, fs: Any) -> list[Unit]:
    """The units of ``job``: indexed inputs split every ``unit_rows`` rows, sequential ones one unit each."""

    def rows(shard: Shard) -> int:
        fmt = format_named(shard.format)
        return fmt.count(fs, shard, source_opts) if fmt.indexed else -1

    with ThreadPoolExecutor(max_workers=8) as pool:
        counts = list(pool.map(rows, job.shards))
    units: list[Unit] = []
    for s, n in enumerate(counts):
        if n < 0:
            units.append(Unit(len(units), s, 0, -1))
            continue
        for lo in range(0, n, job.unit_rows):
            units.append(Unit(len(units), s, lo, min(n, lo + job.unit_rows)))
    return units


def json_dumps(value: Any) -> str:
    """Canonical JSON (sorted keys) so that the same run writes the same bytes."""
    return json.dumps(value, indent=2, sort_keys=True) + "\n"
