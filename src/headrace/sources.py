"""Where pipelines start: files (:func:`open`), a mixture (:func:`mix`), a Hugging Face dataset (:func:`from_hf`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from headrace.checks import positive
from headrace.core.errors import SourceError, empty_file
from headrace.core.policy import ErrorLog, check_policy
from headrace.core.rng import DEFAULT_SEED
from headrace.formats import format_named, format_of
from headrace.formats.base import ReadOptions, project
from headrace.formats.chunks import MAX_LINE_BYTES
from headrace.io.cache import DiskCache
from headrace.io.remote import RemoteFS
from headrace.io.resolve import Shard, fs_for, resolve, split_suffix
from headrace.io.retry import Retry
from headrace.pipeline import Dataset
from headrace.plan import HFStage, MixStage, SourceStage
from headrace.stages.hf import HFSource
from headrace.stages.mix_schedule import STOPS, check_stop, weights_by_name
from headrace.stages.source import Source


def from_hf(dataset: Any, *, block_rows: int = 1024) -> Dataset:
    """A ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``) as a headrace :class:`Dataset`.

    Add headrace stages, mixing and the :class:`Loader` on top; checkpoints carry HF's own position
    (``IterableDataset.state_dict``). Shuffle with headrace: HF does not restore its shuffle buffer.
    """
    if not hasattr(dataset, "state_dict") or not hasattr(dataset, "iter"):
        raise TypeError(f"from_hf() takes a datasets.IterableDataset, got {type(dataset).__name__} "
                        "(load_dataset(..., streaming=True), or Dataset.to_iterable_dataset())")  # fmt: skip
    return Dataset(HFStage(HFSource(dataset, positive(block_rows, "block_rows"))))


def mix(
    datasets: Mapping[str, Dataset],
    weights: Mapping[str, float] | None = None,
    *,
    seed: int = DEFAULT_SEED,
    stop: str = "first_exhausted",
    budgets: Mapping[str, int] | None = None,
    block_rows: int = 4096,
) -> Dataset:
    """Interleave named datasets by weight, deterministically, resumably.

    ``weights`` (default: equal) are normalized; every prefix of the output holds each source within
    one row of its share. ``stop``: ``"first_exhausted"`` ends when any source ends;
    ``"all_exhausted"`` restarts exhausted sources (next epoch of that source) until every source has
    ended once; ``"never"`` cycles forever. ``budgets`` caps a source at a number of rows per epoch of
    the mixture. Weights can be changed mid-run by name with :meth:`Loader.set_weights` (from the
    mixer's next block of ``block_rows`` rows: pass ``block_rows=batch_size`` for a switch exactly at
    a batch boundary).

    >>> import headrace as hr, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.jsonl").write_text("".join(f'{{"x": "a{i}"}}\\n' for i in range(6)))
    >>> _ = (d / "b.jsonl").write_text("".join(f'{{"x": "b{i}"}}\\n' for i in range(6)))
    >>> rows = hr.mix({"a": hr.open(str(d / "a.jsonl")), "b": hr.open(str(d / "b.jsonl"))}, {"a": 2, "b": 1})
    >>> sorted(r["x"][0] for r in rows.take(6))
    ['a', 'a', 'a', 'a', 'b', 'b']
    """
    if not datasets:
        raise ValueError("mix() needs at least one named dataset")
    names = tuple(datasets)
    for name, ds in datasets.items():
        if not isinstance(ds, Dataset):
            raise TypeError(f"mix(): {name!r} is a {type(ds).__name__}, not a headrace Dataset")
        if ds.batched:
            raise ValueError(f"mix(): {name!r} is batched; mix rows, then batch() the mixture")
    shares = weights_by_name(names, dict.fromkeys(names, 1.0) if weights is None else weights, "mix()")
    check_stop(stop)
    if seed < 0:
        raise ValueError(f"mix(seed=...) must be >= 0, got {seed}")
    caps = dict(budgets or {})
    bad = {k: v for k, v in caps.items() if not isinstance(v, int) or v < 0}
    if bad:
        raise ValueError(f"mix(budgets=...) must be whole numbers of rows >= 0, got {bad}")
    unknown = sorted(set(caps) - set(names))
    if unknown:
        raise ValueError(f"mix(): budgets name unknown source(s) {unknown}; the sources are {list(names)}")
    stage = MixStage(names=names, children=tuple(datasets[n] for n in names), weights=tuple(shares), seed=seed,
                     stop=stop, budgets=tuple(caps.get(n) for n in names),
                     block_rows=positive(block_rows, "block_rows"))  # fmt: skip
    return Dataset(stage)


def open(  # noqa: A001 - the public name, as in DESIGN.md; never imported unqualified inside headrace
    urls: str | Sequence[str],
    *,
    format: str | None = None,  # noqa: A002
    columns: Sequence[str] | None = None,
    errors: str = "raise",
    storage_options: Mapping[str, Any] | None = None,
    block_rows: int = 4096,
    text_mode: str = "line",
    text_column: str = "text",
    delimiter: str | None = None,
    schema: pa.Schema | None = None,
    chunk_bytes: int = 1 << 20,
    max_line_bytes: int = MAX_LINE_BYTES,
    format_options: Mapping[str, Any] | None = None,
    retry: Retry | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | None = None,
    cache_ahead: int = 2,
) -> Dataset:
    """Open files, globs, directories or a list of them as a :class:`Dataset`.

    The format comes from each file's suffix (compression suffixes ``.gz``, ``.zst``, ``.bz2``,
    ``.xz`` looked through) or from ``format=``: ``parquet``, ``jsonl``/``json``, ``csv``, ``tsv``,
    ``text``, ``arrow``, ``tar`` (WebDataset shards). ``columns`` projects (Parquet, Arrow and CSV read
    only those columns).
    ``errors`` is the policy for malformed records and unreadable files (corrupt, truncated, empty):
    ``raise``, ``skip`` or ``warn``; a skipped file is counted once. A JSON Lines or text line longer
    than ``max_line_bytes`` (default and most 1 GiB) is a malformed record, read through without being
    kept in memory. Token shards:
    ``megatron`` (``x.bin`` with ``x.idx``), ``nanogpt`` (a ``.bin`` alone), ``npy``;
    ``format_options={"tokens_per_row": 2048}`` sets the row length of a raw token stream.

    Remote URLs (``s3://``, ``gs://``, ``az://``/``abfs://``, ``http(s)://``, ``hf://``; credentials and
    endpoints in ``storage_options``) are read by ranged requests retried on transient errors as
    ``retry`` says (default :class:`Retry`: 10 tries, exponential backoff with jitter), resuming at the
    first byte not yet delivered. ``cache_dir`` keeps whole shards on local disk (at most
    ``cache_limit`` bytes, least recently used evicted; shared safely by processes), downloading the
    next ``cache_ahead`` shards in the background.

    >>> import headrace as hr, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp(), "lines.txt")
    >>> _ = path.write_text("to be\\nor not\\n")
    >>> path = str(path)
    >>> [r["text"] for r in hr.open(path)]
    ['to be', 'or not']
    """
    policy = check_policy(errors)
    if text_mode not in ("line", "file"):
        raise ValueError(f"text_mode must be 'line' or 'file', got {text_mode!r}")
    if block_rows < 1 or chunk_bytes < 1:
        raise ValueError("block_rows and chunk_bytes must be positive")
    if not 1 <= max_line_bytes <= MAX_LINE_BYTES:
        raise ValueError(f"max_line_bytes must be between 1 and {MAX_LINE_BYTES} (1 GiB), got {max_line_bytes}")
    try:
        fmt = format_named(format) if format is not None else None
    except SourceError as e:
        named = urls if isinstance(urls, str) else ", ".join(map(str, urls))
        raise SourceError(f"{named}: {e}") from None
    first_fs: list[Any] = []
    if cache_ahead < 0:
        raise ValueError(f"cache_ahead must be >= 0, got {cache_ahead}")
    cache = DiskCache(cache_dir, cache_limit) if cache_dir is not None else None
    if cache is None and cache_limit is not None:
        raise ValueError("cache_limit needs cache_dir: pass the directory the cache lives in")

    def fs_of(url: str) -> tuple[Any, str]:
        fs, path = fs_for(url, storage_options, retry, cache, cache_ahead)
        if not first_fs:
            first_fs.append(fs)
            if isinstance(fs, RemoteFS):
                fs.invalidate_cache()  # list afresh: fsspec keeps listings per filesystem instance
        return fs, path

    def exists(url: str) -> bool:  # with the dataset's credentials and retries
        fs, path = fs_of(url)
        return bool(fs.exists(path))

    found = resolve(urls, fs_of, lambda p: fmt is not None or format_of(p) is not None)
    shards = []
    for url, size in found:
        f = fmt or format_of(url, exists)
        if f is None:
            raise SourceError(f"{url}: unknown format from the file name; pass format= (one of parquet, jsonl, "
                              "csv, tsv, text, arrow, tar)")  # fmt: skip
        if size == 0 and policy == "raise":  # else quarantined and counted when the reader gets to it
            raise empty_file(url)
        shards.append(Shard(url, size, f.name, split_suffix(url)[1]))
    fs = first_fs[0]
    opts = ReadOptions(
        columns=tuple(columns) if columns is not None else None, chunk_bytes=chunk_bytes, text_mode=text_mode,
        text_column=text_column, delimiter=delimiter, schema=schema, max_line_bytes=max_line_bytes,
        extra=tuple(sorted((format_options or {}).items())),
    )  # fmt: skip
    full, origin = (schema, "schema=") if schema is not None else _first_schema(fs, shards, opts, policy)
    projected = project(full, opts.columns, shards[0].url)
    source = Source(tuple(shards), opts, projected, policy, block_rows, None, fs, origin=origin)
    return Dataset(SourceStage(source))


def _first_schema(fs: Any, shards: Sequence[Shard], opts: ReadOptions, policy: str) -> tuple[pa.Schema, str]:
    """The schema of the first shard and where it came from; under ``errors="skip"``/``"warn"``, of the first
    shard that can be read (the others are quarantined when the readers get to them)."""
    failed: SourceError | None = None
    for shard in shards:
        try:
            if shard.size == 0:
                raise empty_file(shard.url, skipping=policy != "raise")
            return format_named(shard.format).schema(fs, shard, opts, ErrorLog("skip")), f"the shard {shard.url}"
        except SourceError as e:
            if policy == "raise":
                raise
            failed = failed or e
    raise SourceError(f"no file can be read, the first because {failed}; pass schema= to open them anyway")


__all__ = ["STOPS", "from_hf", "mix", "open"]
