"""``prepare()``: check the inputs and the tokenizer, plan the units, resume, run an engine, write the manifest."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import headrace
from headrace.core.policy import check_policy
from headrace.core.redact import redact
from headrace.formats.tokens import WRITE_CODES
from headrace.prepare.engines import default_workers, run_local, run_ray
from headrace.prepare.job import (
    DEFAULT_TOKENS_PER_SHARD,
    DEFAULT_UNIT_ROWS,
    Job,
    PrepareError,
    Unit,
    check_text_column,
    check_tokenizer,
    describe_tokenizer,
    plan,
)
from headrace.prepare.progress import Progress
from headrace.prepare.store import MANIFEST, OutDir
from headrace.sources import open as open_dataset

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class PrepareResult:
    """What a run did: the manifest (also in ``OUT/manifest.json``) and how this run went."""

    manifest: dict[str, Any]
    path: str  # the manifest's path
    units: int
    resumed_units: int  # units an earlier run had finished (checked, not redone)
    seconds: float
    new_tokens: int  # tokens this run wrote (the rest came from an earlier run)

    @property
    def tokens(self) -> int:
        return int(self.manifest["totals"]["tokens"])


def prepare(
    inputs: str | Sequence[str],
    out: str | os.PathLike[str],
    tokenizer: Any,
    *,
    column: str = "text",
    format: str | None = None,  # noqa: A002 - as in hr.open
    text_mode: str = "line",
    errors: str = "raise",
    add_eos: bool = True,
    add_bos: bool = False,
    dtype: str = "auto",
    tokens_per_shard: int = DEFAULT_TOKENS_PER_SHARD,
    unit_rows: int = DEFAULT_UNIT_ROWS,
    workers: int | None = None,
    engine: str = "local",
    quiet: bool = False,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
    batch_rows: int = 1024,
) -> PrepareResult:
    """Tokenize the text column of ``inputs`` into Megatron ``.bin``/``.idx`` shards in ``out``, plus ``manifest.json``.

    ``inputs`` is anything :func:`headrace.open` opens; ``tokenizer`` a ``tokenizer.json`` path, a
    folder, ``"tiktoken:NAME"`` or a tokenizer object. The output is the same bytes for any
    ``workers`` and either ``engine`` (``"local"`` processes or ``"ray"``); a killed run restarted with
    the same arguments redoes only the units it had not finished.

    >>> import tempfile, os, headrace as hr
    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> folder = tempfile.mkdtemp()
    >>> tok = Tokenizer(models.WordLevel({"[UNK]": 0, "</s>": 1, "to": 2, "be": 3}, unk_token="[UNK]"))
    >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> tok.save(os.path.join(folder, "tokenizer.json"))
    >>> with open(os.path.join(folder, "in.txt"), "w") as f:
    ...     _ = f.write("to be\\nbe to be\\n")
    >>> result = prepare(os.path.join(folder, "in.txt"), os.path.join(folder, "out"), folder, quiet=True)
    >>> result.manifest["totals"]["tokens"], result.manifest["dtype"]
    (7, 'uint16')
    >>> [r["input_ids"] for r in hr.open(os.path.join(folder, "out", "*.bin"))]
    [[2, 3, 1], [3, 2, 3, 1]]
    """
    began = time.monotonic()
    check_policy(errors)
    for name, value in (("tokens_per_shard", tokens_per_shard), ("unit_rows", unit_rows), ("batch_rows", batch_rows)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    tok, dtype_name = check_tokenizer(tokenizer, add_bos=add_bos, add_eos=add_eos, dtype=dtype)
    spec = os.fspath(tokenizer) if isinstance(tokenizer, str | os.PathLike) else tok
    ds = open_dataset(inputs, format=format, columns=[column], text_mode=text_mode, text_column=column,
                      storage_options=storage_options)  # fmt: skip
    src = ds.source
    check_text_column(ds.schema, column, src.shards[0].url)
    out_dir = os.path.abspath(os.fspath(out))
    job = Job(
        shards=src.shards, out=out_dir, tokenizer=spec, column=column, format=format, text_mode=text_mode,
        errors=errors, add_bos=add_bos, add_eos=add_eos, dtype=dtype_name, tokens_per_shard=tokens_per_shard,
        unit_rows=unit_rows, batch_rows=batch_rows,
        storage_options=dict(storage_options) if storage_options else None,
        tokenizer_info=describe_tokenizer(tok, spec if isinstance(spec, str) else tokenizer),
    )  # fmt: skip
    units = plan(job, src.opts, src.fs)
    store = OutDir(out_dir)
    with store.locked():
        store.start(job, overwrite=overwrite)
        done = store.resume(units, job.shards)
        todo = [u for u in units if u.index not in done]
        known = all(u.hi >= 0 for u in units)
        progress = Progress(total_rows=sum(u.hi - u.lo for u in units) if known else None, total_units=len(units),
                            done_units=len(done), quiet=quiet)  # fmt: skip
        if known:
            progress.skip_rows(sum(u.hi - u.lo for u in units if u.index in done))

        def on_done(unit: Unit, record: dict[str, Any]) -> None:
            done[unit.index] = record
            progress.unit_done()

        n = workers or default_workers()
        try:
            if engine == "ray":
                run_ray(job, todo, n, progress, on_done, ray_address)
            else:
                run_local(job, todo, n, progress, on_done)
        finally:
            progress.close()
        missing = [u.name for u in units if u.index not in done]
        if missing:
            raise PrepareError(f"units {missing[:5]} did not finish; run the same command again to resume")
        manifest = build_manifest(job, units, done)
        path = store.write_manifest(manifest)
    new = sum(int(done[u.index]["tokens"]) for u in todo)
    return PrepareResult(manifest, path, len(units), len(units) - len(todo), time.monotonic() - began, new)


def build_manifest(job: Job, units: Sequence[Unit], done: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The manifest: a pure function of the job and the units' records (no times, no hosts)."""
    import numpy as np

    dtype = np.dtype(job.dtype)
    sources: list[dict[str, Any]] = [
        {
            "path": redact(s.url),
            "bytes": s.size,
            "format": s.format,
            "documents": 0,
            "tokens": 0,
            "skipped": 0,
            "empty": 0,
        }
        for s in job.shards
    ]
    shards = []
    for unit in units:
        record = done[unit.index]
        src = sources[unit.source]
        for key in ("documents", "tokens", "skipped", "empty"):
            src[key] += int(record[key])
        for shard in record["shards"]:
            shards.append({
                "path": shard["name"] + ".bin", "index": shard["name"] + ".idx",
                "tokens": shard["tokens"], "documents": shard["documents"],
                "bin_bytes": shard["bin_bytes"], "bin_sha256": shard["bin_sha256"],
                "idx_bytes": shard["idx_bytes"], "idx_sha256": shard["idx_sha256"],
                "source": unit.source, "source_rows": [unit.lo, unit.hi], "unit": unit.index,
            })  # fmt: skip
    return {
        "headrace_version": headrace.__version__,
        "format": "megatron",
        "layout": "Megatron-LM MMapIndexedDataset: <name>.bin tokens + <name>.idx (MMIDIDX, version 1)",
        "dtype": dtype.name,
        "dtype_code": WRITE_CODES[dtype],
        "tokenizer": job.tokenizer_info,
        "options": job.options(),
        "sources": sources,
        "shards": shards,
        "totals": {
            "sources": len(sources),
            "source_bytes": sum(s.size for s in job.shards),
            "units": len(units),
            "shards": len(shards),
            "documents": sum(s["documents"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "skipped": sum(s["skipped"] for s in sources),
            "empty": sum(s["empty"] for s in sources),  # documents with no tokens (no text, no bos/eos): left out
            "bytes": sum(s["bin_bytes"] + s["idx_bytes"] for s in shards),
        },
    }


__all__ = ["ENGINES", "MANIFEST", "PrepareResult", "prepare"]
