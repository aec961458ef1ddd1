"""The peers' packages for the benchmark scripts: imported when installed, and their formats written with
their own tools (``MDSWriter``, ``litdata.optimize``) from the same Parquet files headrace reads.

    >>> sorted(LITDATA_ENV)
    ['LITDATA_DISABLE_VERSION_CHECK']
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

LITDATA_ENV = {"LITDATA_DISABLE_VERSION_CHECK": "1"}  # litdata asks PyPI for a newer version otherwise


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


def write_mds(out: Path, files: list[Path], columns: dict[str, str], shard_per_file: bool = False) -> None:
    """The ``id`` and ``text`` of Parquet ``files`` written by MosaicML's ``MDSWriter`` into ``out`` (64 MB
    shards, or one shard per file)."""
    ms = mosaic()
    if ms is None:
        raise RuntimeError("mosaicml-streaming is not installed")
    limit = 1 << 30 if shard_per_file else 1 << 26
    with ms.MDSWriter(out=str(out), columns=columns, size_limit=limit) as writer:
        for path in files:
            for row in parquet_rows(str(path)):
                writer.write(row)
            if shard_per_file:
                writer.flush_shard()  # one shard per Parquet file, whatever its bytes: what write() does
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
