"""Format readers and the suffix registry."""

from __future__ import annotations

from collections.abc import Callable

from headrace.core.errors import SourceError
from headrace.formats.arrow import ArrowFormat
from headrace.formats.base import Format, Piece, ReadOptions, Start
from headrace.formats.csv import CsvFormat, TsvFormat
from headrace.formats.jsonl import JsonlFormat
from headrace.formats.parquet import ParquetFormat
from headrace.formats.tar import TarFormat
from headrace.formats.text import TextFormat
from headrace.formats.tokens import MegatronFormat, NanoGPTFormat, NpyFormat, bin_format
from headrace.io.resolve import split_suffix

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        ParquetFormat(), JsonlFormat(), CsvFormat(), TsvFormat(), TextFormat(), ArrowFormat(),
        MegatronFormat(), NanoGPTFormat(), NpyFormat(), TarFormat(),
    )
}  # fmt: skip
ALIASES = {"json": "jsonl", "ndjson": "jsonl", "txt": "text", "feather": "arrow", "ipc": "arrow"}
SUFFIXES = {
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".csv": "csv", ".tsv": "tsv",
    ".txt": "text", ".text": "text", ".md": "text", ".rst": "text",
    ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
    ".npy": "npy",
    ".tar": "tar",  # .tar.gz, .tar.zst, ... too: compression suffixes are looked through
}  # fmt: skip
# ".bin" is Megatron when a ".idx" with the same prefix sits beside it, else nanoGPT (see format_of)


def format_named(name: str) -> Format:
    key = ALIASES.get(name, name)
    if key not in FORMATS:
        raise SourceError(f"unknown format {name!r}; use one of {sorted(FORMATS) + sorted(ALIASES)}")
    return FORMATS[key]


def format_of(url: str, exists: Callable[[str], bool] | None = None) -> Format | None:
    """The format a file's suffix names (compression suffixes looked through), or None. ``exists(url)``:
    the dataset's filesystem, asked whether a ``.bin`` has a Megatron ``.idx`` beside it."""
    base = split_suffix(url)[0].lower()  # an HTTP URL's query left out
    if base.endswith(".bin"):
        return FORMATS[bin_format(url, exists)]
    for suffix, name in SUFFIXES.items():
        if base.endswith(suffix):
            return FORMATS[name]
    return None


__all__ = ["FORMATS", "Format", "Piece", "ReadOptions", "Start", "format_named", "format_of"]
