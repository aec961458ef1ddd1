"""One unit of work: read rows of one input shard, tokenize them, write Megatron shards, record it done.

Runs in a worker process (local pool), a Ray task, or the calling process. The output depends only
on the unit and the job's options: batches are a speed knob, shards close at the first document
boundary at or after ``tokens_per_shard`` tokens.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.errors import RecordError, SchemaError
from headrace.core.policy import ErrorLog, check_policy
from headrace.formats import format_named
from headrace.formats.base import ReadOptions, Start
from headrace.formats.tokens import MegatronWriter
from headrace.io.resolve import fs_for
from headrace.prepare.job import Job, Unit, is_text
from headrace.prepare.store import write_done
from headrace.tokenizer import Tokenizer, load_tokenizer

BATCH_CHARS = 4 << 20  # also cut a tokenizer batch at about this much text
Report = Callable[[int, int], None]  # (documents, tokens) just written


class Cancelled(Exception):
    """The run was stopped (another unit failed, or the user interrupted it)."""


_TOKENIZERS: dict[str, Tokenizer] = {}
_WORKER: dict[str, Any] = {}  # per worker process: the job, the progress queue and the stop event


def tokenizer_of(job: Job) -> Tokenizer:
    """The job's tokenizer, loaded once per process."""
    spec = job.tokenizer
    if not isinstance(spec, str):
        return load_tokenizer(spec)
    if spec not in _TOKENIZERS:
        _TOKENIZERS[spec] = load_tokenizer(spec)
    return _TOKENIZERS[spec]


def texts(job: Job, unit: Unit, log: ErrorLog) -> Iterator[list[str]]:
    """The text of the unit's rows in order, in lists; a null text follows the error policy."""
    shard = job.shards[unit.source]
    fs, _ = fs_for(shard.url, job.storage_options)
    fmt = format_named(shard.format)
    opts = ReadOptions(columns=(job.column,), text_mode=job.text_mode, text_column=job.column)
    hi = unit.hi if unit.hi >= 0 else 1 << 62
    for piece in fmt.pieces(fs, shard, opts, Start(), unit.lo, log):
        a, b = (int(x) for x in np.searchsorted(piece.slots, [unit.lo, hi]))
        if b > a:
            i = piece.batch.schema.get_field_index(job.column)
            if i < 0:
                raise SchemaError(f"{shard.url} (record {int(piece.slots[a])}): no column {job.column!r}; the "
                                  f"columns are {piece.batch.schema.names}")  # fmt: skip
            col = piece.batch.column(i).slice(a, b - a)
            if not (is_text(col.type) or pa.types.is_null(col.type)):
                raise SchemaError(f"{shard.url} (record {int(piece.slots[a])}): column {job.column!r} holds "
                                  f"{col.type}, not text")  # fmt: skip
            values = col.to_pylist()
            if col.null_count:
                slots = piece.slots[a:b]
                keep = []
                for j, v in enumerate(values):
                    if v is None:
                        where = f"{shard.url} (record {int(slots[j])})"
                        log.record(RecordError(f"{where}: no text (null) in column {job.column!r}; filter such "
                                               "rows out or pass --errors skip"))  # fmt: skip
                    else:
                        keep.append(v)
                values = keep
            yield values
        if piece.end >= hi:
            return


def batches(job: Job, unit: Unit, log: ErrorLog) -> Iterator[list[str]]:
    """The unit's texts in batches of about ``batch_rows`` documents or ``BATCH_CHARS`` characters."""
    pending: list[str] = []
    chars = 0
    for values in texts(job, unit, log):
        for v in values:
            pending.append(v)
            chars += len(v)
            if len(pending) >= job.batch_rows or chars >= BATCH_CHARS:
                yield pending
                pending, chars = [], 0
    if pending:
        yield pending


def with_specials(
    flat: np.ndarray, lengths: np.ndarray, bos: int | None, eos: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each document's ids with ``bos`` before and ``eos`` after (vectorized: no per-document Python)."""
    extra = int(bos is not None) + int(eos is not None)
    if not extra:
        return flat, lengths
    lengths = lengths + extra
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    body = np.ones(len(out), dtype=bool)
    if bos is not None:
        out[starts] = bos
        body[starts] = False
    if eos is not None:
        out[ends - 1] = eos
        body[ends - 1] = False
    out[body] = flat
    return out, lengths


def run_unit(job: Job, unit: Unit, report: Report | None = None, stop: Any = None) -> dict[str, Any]:
    """Tokenize one unit into its shards and record it done; returns the completion record."""
    tok = tokenizer_of(job)
    bos = tok.bos_id if job.add_bos else None
    eos = tok.eos_id if job.add_eos else None
    log = ErrorLog(check_policy(job.errors))
    shards: list[dict[str, Any]] = []
    writer: MegatronWriter | None = None
    totals = {"documents": 0, "tokens": 0, "empty": 0}

    def finish(w: MegatronWriter) -> None:
        w.close()
        shards.append({
            "name": os.path.basename(w.prefix), "tokens": w.num_tokens, "documents": w.num_documents,
            "bin_bytes": w.digests["bin"][0], "bin_sha256": w.digests["bin"][1],
            "idx_bytes": w.digests["idx"][0], "idx_sha256": w.digests["idx"][1],
        })  # fmt: skip

    try:
        for batch in batches(job, unit, log):
            if stop is not None and stop.is_set():
                raise Cancelled(unit.name)
            flat, lengths = tok.encode_batch(batch)
            flat, lengths = with_specials(flat, lengths, bos, eos)
            if not lengths.all():  # a document without tokens (empty text, no bos/eos) is left out, counted
                totals["empty"] += int((lengths == 0).sum())
                lengths = lengths[lengths > 0]
            ends = np.cumsum(lengths)
            done = 0  # documents of this batch written
            while done < len(lengths):
                if writer is None:
                    writer = MegatronWriter(os.path.join(job.out, unit.shard_name(len(shards))), job.dtype)
                before = int(ends[done - 1]) if done else 0
                room = job.tokens_per_shard - writer.num_tokens
                # the shard closes after the first document that brings it to tokens_per_shard
                last = int(np.searchsorted(ends, before + room, side="left"))
                stop_at = min(len(lengths), last + 1)
                a, b = before, int(ends[stop_at - 1])
                writer.add_documents(flat[a:b], lengths[done:stop_at])
                done = stop_at
                if writer.num_tokens >= job.tokens_per_shard:
                    finish(writer)
                    writer = None
            totals["documents"] += len(lengths)
            totals["tokens"] += int(lengths.sum())
            if report is not None:
                report(len(lengths), int(lengths.sum()))
        if writer is not None:
            finish(writer)
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    record = {**totals, "skipped": log.skipped, "shards": shards}
    write_done(job.out, unit, job.shards, record)
    return record


# -- worker processes ---------------------------------------------------------------------------------


def init_worker(job: Job, queue: Any, stop: Any, parent: int) -> None:
    """Pool initializer: keep the job, quit when the parent (pid ``parent``) dies, leave Ctrl-C to the parent."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one process per core already; no nested thread pools
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER.update(job=job, queue=queue, stop=stop)
    # the pid comes from the parent: one read here could already be the new parent of an orphan

    def watch() -> None:  # a killed parent must not leave workers writing into the folder
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="headrace-parent-watch").start()


def run_in_worker(unit: Unit) -> dict[str, Any]:
    """Pool task: run ``unit`` of the job set by :func:`init_worker`, reporting progress on the queue."""
    queue = _WORKER["queue"]

    def report(rows: int, tokens: int) -> None:
        queue.put((rows, tokens))

    return run_unit(_WORKER["job"], unit, report, _WORKER["stop"])
