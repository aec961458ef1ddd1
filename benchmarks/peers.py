"""The peers' packages for the benchmark scripts: imported when installed (HF ``datasets`` offline, with a
temporary cache), and their formats written with their own tools (``MDSWriter``, ``litdata.optimize``) from
the same data headrace reads.

    >>> sorted(LITDATA_ENV)
    ['LITDATA_DISABLE_VERSION_CHECK']
    >>> group_texts({"input_ids": [[1, 2, 3], [4, 5]]}, seq_len=2)
    {'input_ids': [[1, 2], [3, 4]]}
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

LITDATA_ENV = {"LITDATA_DISABLE_VERSION_CHECK": "1"}  # litdata asks PyPI for a newer version otherwise

HF_CACHE = tempfile.mkdtemp(prefix="headrace-bench-hf-")
atexit.register(shutil.rmtree, HF_CACHE, ignore_errors=True)  # last: after datasets' own exit hooks
HF_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HOME": HF_CACHE,
    "HF_DATASETS_CACHE": os.path.join(HF_CACHE, "datasets"),
}


def hf() -> Any:
    """``datasets``, offline, with a temporary cache and no 5 s sleep when a shuffled stream closes."""
    os.environ.update(HF_ENV)
    import datasets

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def hf_parquet(data_files: str | list[str], **options: Any) -> Any:
    """HF ``datasets`` streaming Parquet ``data_files`` (``split="train"``, the temporary cache); ``options``
    such as ``columns=`` or ``storage_options=`` go to ``load_dataset``."""
    return hf().load_dataset(
        "parquet", data_files=data_files, split="train", streaming=True, cache_dir=HF_CACHE, **options
    )


def group_texts(examples: dict[str, list[list[int]]], seq_len: int = 2048) -> dict[str, list[list[int]]]:
    """The classic ``group_texts`` of ``run_clm.py``: concatenate the batch, cut it into ``seq_len``, drop the rest."""
    concatenated = {k: list(chain(*examples[k])) for k in examples}
    total = len(concatenated[next(iter(examples))]) // seq_len * seq_len
    return {k: [t[i : i + seq_len] for i in range(0, total, seq_len)] for k, t in concatenated.items()}


def mosaic() -> Any | None:
    """``streaming`` (MosaicML), or None if it is not installed.

    ``import streaming`` imports ``streaming.vision``, which needs ``torchvision``; the only torchvision
    wheels here are CUDA builds that do not load with the CPU torch, so that unused subpackage is stubbed.
    """
    if importlib.util.find_spec("streaming") is None:
        return None
    if importlib.util.find_spec("torchvision") is None:
        sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))
    import streaming

    logging.getLogger("streaming").setLevel(logging.ERROR)
    return streaming


def litdata() -> Any | None:
    """``litdata``, or None if it is not installed (its PyPI version check off)."""
    if importlib.util.find_spec("litdata") is None:
        return None
    os.environ.update(LITDATA_ENV)
    import litdata as ld

    return ld


def peer_data(build: Callable[[], Path], skip: dict[str, str], keys: tuple[str, ...], what: str) -> Path | None:
    """``build()``, or None with the reason recorded in ``skip`` for each contender of ``keys``."""
    try:
        return build()
    except Exception as e:
        for key in keys:
            skip[key] = f"{what}: {type(e).__name__}: {e}"
        return None


def parquet_rows(path: str) -> Iterator[dict[str, Any]]:
    """The rows of one Parquet file as ``{"id", "text"}`` dicts (litdata's ``optimize`` function)."""
    for batch in pq.ParquetFile(path).iter_batches(columns=["id", "text"]):
        for i, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            yield {"id": i, "text": text}


def write_mds(
    out: Path, files: list[Path], columns: dict[str, str], shard_per_file: bool = False, check_ids: bool = False
) -> None:
    """The ``id`` and ``text`` of Parquet ``files`` written by MosaicML's ``MDSWriter`` into ``out`` (64 MB
    shards, or one shard per file). ``check_ids``: the ids must be 0, 1, 2, ... in file order (so that MDS
    sample ``i`` holds id ``i``)."""
    groups: Iterable[Iterable[dict[str, Any]]] = (parquet_rows(str(path)) for path in files)
    if check_ids:
        groups = [_counted(chain.from_iterable(groups), files)]
    mds_samples(out, groups, columns, 1 << 30 if shard_per_file else 1 << 26, flush_groups=shard_per_file)


def _counted(rows: Iterator[dict[str, Any]], files: list[Path]) -> Iterator[dict[str, Any]]:
    for n, row in enumerate(rows):
        if row["id"] != n:
            raise RuntimeError(f"{files[0].parent}: id {row['id']} at position {n}; the Parquet ids must be 0..rows-1")
        yield row


def mds_samples(
    out: Path,
    groups: Iterable[Iterable[dict[str, Any]]],
    columns: dict[str, str],
    size_limit: int = 1 << 26,
    flush_groups: bool = False,
) -> None:
    """``groups`` of samples written by MosaicML's ``MDSWriter`` into ``out`` (its defaults: 64 MB shards, no
    compression); ``flush_groups``: one shard per group, whatever its bytes."""
    ms = mosaic()
    if ms is None:
        raise RuntimeError("mosaicml-streaming is not installed")
    with ms.MDSWriter(out=str(out), columns=columns, size_limit=size_limit) as writer:
        for group in groups:
            for sample in group:
                writer.write(sample)
            if flush_groups:
                writer.flush_shard()  # one shard per group, whatever its bytes: what write() does
                writer._reset_cache()  # when a shard is full (flush_shard alone keeps the samples)


def write_litdata(out: Path, files: list[Path], **chunking: Any) -> None:
    """The ``id`` and ``text`` of Parquet ``files`` written by ``litdata.optimize`` into ``out``
    (``chunk_bytes=`` or ``chunk_size=``), files in order."""
    ld = litdata()
    if ld is None:
        raise RuntimeError("litdata is not installed")
    ld.optimize(
        fn=parquet_rows,
        inputs=[str(p) for p in files],
        output_dir=str(out),
        num_workers=min(2, len(files)),
        reorder_files=False,
        verbose=False,
        **chunking,
    )
