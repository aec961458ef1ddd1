"""Remote reads from S3 (SeaweedFS on loopback), same run, same data, same machine.

Real text (the paragraphs of ``corpora/``, repeated with fresh ids, as ``suite.build_data`` writes it)
as Parquet shards uploaded to a real S3 server, SeaweedFS, started on 127.0.0.1 by ``tests/servers.py``.
One tokenizer for all: the byte-level BPE (16k) of ``suite.build_tokenizer``, trained on the corpus.

1. **Throughput from S3** (tokens/s, rows/s, seconds to the first batch): ``s3://.../data/*.parquet``
   (``columns=["id", "text"]``) -> tokenize -> pack 2048 -> batches of 8.
   - headrace: ``hr.Loader(hr.open(url, storage_options=..., columns=["id", "text"]).tokenize(tok)
     .pack(2048).batch(8), num_workers=2)``;
   - HF ``datasets`` streaming from the same bucket: ``load_dataset("parquet", data_files=url,
     storage_options=..., streaming=True)`` + a batched tokenizing ``map`` (the same ``encode_batch_fast``,
     EOS appended) + ``group_texts`` as a second batched ``map``, iterated in batches of 8;
   - headrace through the fault proxy (``tests/faultproxy.py``) at 0%, 1% and 5% of GET requests failed with
     a connection reset or a truncated body (both mid-body) or a 503 with ``Retry-After: 1``;
   - headrace on the same files on local disk (no S3): what S3 costs.
   Every pass is followed by an **exactness pass** over the same configuration: ``columns=["id", "text"]``
   batched rows, no tokenizer, every ``id`` collected: lost and duplicated ids must be 0. headrace's token
   passes are checked too: the tokens delivered and their sum must equal the local run's.
2. **Time to first batch over many small shards** (1,000 x 200 rows): from the ``hr.open`` (or
   ``load_dataset``) call to the first batch of the same token pipeline, in a fresh Python process each time,
   so that no client cache helps (the server is warm). Also the requests each makes before its first batch
   (counted by a fault-free proxy, in an extra untimed run).

Repetitions are interleaved (A B C ... A B C ..., the first rotating), each pass with a fresh S3 client
(fsspec's instance cache cleared) and, for the proxy, a fresh proxy and fault seed; 3 of each, but 2 of the
HF run, which takes 3x as long (``--hf-repeat``). A configuration that raises (a fault that reaches the
reader) is recorded as ``failed: <error>`` and the run goes on. CPU time is recorded too: this process's
(loader, S3 client and, in the proxy runs, the proxy's threads: it runs in this process) and SeaweedFS's.
Everything shares the machine's cores: the server, the proxy and the loader.

Run: ``.venv/bin/python benchmarks/bench_remote.py`` (``make bench``); ``--quick`` is a smoke run under a
minute. Data is generated into ``.bench/remote/`` once and reused; the server and its bucket are new each
run. Prints a table, then one JSON line; with ``--suite-out DIR`` it also writes ``DIR/remote.json``
(``benchmarks/suite.py``: every pass of every configuration, for ``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import headrace as hr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402 - benchmarks/suite.py: the suite's common result format
from faultproxy import FaultProxy  # noqa: E402 - tests/faultproxy.py
from peers import HF_ENV, group_texts, hf_parquet  # noqa: E402
from servers import SeaweedS3, Store  # noqa: E402 - tests/servers.py
from suite import (  # noqa: E402
    EOS,
    DataSpec,
    Result,
    build_data,
    build_tokenizer,
    cpu_time,
    eos_id,
    report_header,
    report_json,
    warm_page_cache,
    write_suite,
)

SEQ_LEN = 2048
PACK_BATCH = 8  # batches of 8 sequences of 2048, as in bench_text.py

ID_BATCH = 4096  # rows per batch of the exactness pass
MANY_ROWS = 200  # rows per shard of part 2
FAULT_KINDS = ("reset", "truncate", "503")  # reset and truncate cut a body part-way (10-90% of it)
STALL_S = 0.05
COLUMNS = ["id", "text"]


# -- one pass -----------------------------------------------------------------------------------------
@dataclass
class Pass:
    """One timed pass of the token pipeline, or ``error`` when it raised."""

    seconds: float = 0.0
    cpu_s: float = 0.0  # this process (loader, client, in-process proxy), all threads
    server_cpu_s: float = 0.0  # SeaweedFS
    first_s: float = 0.0  # from the open call to the first batch in hand
    delivered: int = 0  # tokens in the batches
    checksum: int = 0  # their sum: the same tokens in the same multiset
    tokenized: int = 0  # HF only: every document's tokens + EOS, counted in its tokenizing map
    requests: int = 0  # proxy only
    faults: dict[str, int] = field(default_factory=dict)
    warnings: int = 0  # headrace's log warnings (one per retried read, where it logs them)
    error: str | None = None


@dataclass
class IdPass:
    """One exactness pass: ``columns=["id", "text"]`` rows, every id collected."""

    seconds: float = 0.0
    rows: int = 0
    lost: int = 0
    duplicated: int = 0
    foreign: int = 0  # ids outside 0..rows-1
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    warnings: int = 0
    error: str | None = None


@dataclass
class Config:
    key: str
    name: str
    passes: list[Pass] = field(default_factory=list)
    id_passes: list[IdPass] = field(default_factory=list)

    def ok(self) -> list[Pass]:
        return [p for p in self.passes if p.error is None]

    def failures(self) -> list[str]:
        errors = [p.error for p in self.passes] + [q.error for q in self.id_passes]
        return [e for e in errors if e is not None]


class Warnings(logging.Handler):
    """Counts (and keeps a few of) the warnings headrace logs, instead of printing one line per retried read."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 5:
            self.samples.append(record.getMessage()[:300])

    def __enter__(self) -> Warnings:
        self._logger = logging.getLogger("headrace")
        self._propagate = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate


WARNINGS = Warnings()


def describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".replace("\n", " ")[:600]


def fresh_clients() -> None:
    """Forget fsspec's cached S3 filesystems (their listings and connections): every pass starts cold."""
    import fsspec

    fsspec.get_filesystem_class("s3").clear_instance_cache()


class ServerCpu:
    """CPU seconds (user + system) of the SeaweedFS process, from ``/proc``; 0 where it cannot be read."""

    def __init__(self, server: SeaweedS3) -> None:
        proc = getattr(server, "_proc", None)  # tests/servers.py keeps the Popen; read-only use
        self.pid = proc.pid if proc is not None else None
        self.tick = os.sysconf("SC_CLK_TCK")

    def __call__(self) -> float:
        if self.pid is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime


class Runner:
    """The contenders of part 1, each a function ``(store, on_first) -> (delivered, checksum, tokenized)``."""

    def __init__(self, tok_path: Path, workers: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tok_path))
        self.eos = eos_id(self.tok)
        self.workers = workers
        self.tokenized = 0

    # headrace: open -> tokenize -> pack -> batch, num_workers threads
    def headrace(self, url: str, options: dict[str, Any] | None, first_only: bool = False) -> tuple[int, int, float]:
        t0 = time.perf_counter()
        ds = hr.open(url, storage_options=options, columns=COLUMNS).tokenize(self.tok).pack(SEQ_LEN).batch(PACK_BATCH)
        return _drain(iter(hr.Loader(ds, num_workers=self.workers)), t0, first_only)

    def hf_tokenize(self, batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        out = [[*e.ids, self.eos] for e in self.tok.encode_batch_fast(batch["text"], add_special_tokens=False)]
        self.tokenized += sum(len(ids) for ids in out)
        return {"input_ids": out}

    def hf(self, url: str, options: dict[str, Any] | None, first_only: bool = False) -> tuple[int, int, float]:
        t0 = time.perf_counter()
        ds = hf_parquet(url, storage_options=options, columns=COLUMNS)
        ds = ds.map(self.hf_tokenize, batched=True, remove_columns=COLUMNS).map(group_texts, batched=True)
        return _drain(iter(ds.iter(batch_size=PACK_BATCH)), t0, first_only)

    def headrace_ids(self, url: str, options: dict[str, Any] | None) -> np.ndarray:
        ds = hr.open(url, storage_options=options, columns=COLUMNS).batch(ID_BATCH)
        return _ids(iter(hr.Loader(ds, num_workers=self.workers)))

    def hf_ids(self, url: str, options: dict[str, Any] | None) -> np.ndarray:
        ds = hf_parquet(url, storage_options=options, columns=COLUMNS)
        return _ids(iter(ds.iter(batch_size=ID_BATCH)))


def _drain(it: Any, t0: float, first_only: bool) -> tuple[int, int, float]:
    """Tokens and their sum over the batches; the seconds from ``t0`` to the first batch.

    ``np.asarray``: a training step needs an array, as headrace delivers; HF yields lists.
    """
    n = total = 0
    first = float("nan")
    try:
        for b in it:
            ids = np.asarray(b["input_ids"])
            if n == 0:
                first = time.perf_counter() - t0
            n += ids.size
            total += int(ids.sum(dtype=np.int64))
            if first_only:
                break
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return n, total, first


def _ids(it: Any) -> np.ndarray:
    parts = []
    try:
        for b in it:
            parts.append(np.asarray(b["id"], dtype=np.int64))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def check_ids(ids: np.ndarray, rows: int) -> tuple[int, int, int]:
    """``(lost, duplicated, foreign)`` of the ids delivered, against exactly ``0..rows-1`` once each."""
    inside = ids[(ids >= 0) & (ids < rows)]
    counts = np.bincount(inside, minlength=rows)
    return int((counts == 0).sum()), int((counts[counts > 1] - 1).sum()), int(ids.size - inside.size)


# -- part 1 -------------------------------------------------------------------------------------------
Variant = tuple[str, str, Callable[[int, bool], tuple[Pass, IdPass | None]]]


def variants(
    runner: Runner,
    store: Store,
    local_glob: str,
    rows: int,
    rates: list[float],
    server_cpu: ServerCpu,
    retry_after: int,
) -> list[Variant]:
    url_path = "data/*.parquet"

    def timed(
        fn: Callable[[str, dict[str, Any] | None, bool], tuple[int, int, float]],
        ids_fn: Callable[[str, dict[str, Any] | None], np.ndarray] | None,
        where: Callable[[int, str], tuple[str, dict[str, Any] | None, FaultProxy | None]],
    ) -> Callable[[int, bool], tuple[Pass, IdPass | None]]:
        def run(rep: int, first_only: bool) -> tuple[Pass, IdPass | None]:
            out = Pass()
            url, options, proxy = where(rep, "tokens")
            fresh_clients()
            gc.collect()
            runner.tokenized = 0
            c0, s0, t0, w0 = cpu_time(), server_cpu(), time.perf_counter(), WARNINGS.count
            try:
                out.delivered, out.checksum, out.first_s = fn(url, options, first_only)
            except Exception as e:
                out.error = describe(e)
            out.seconds = time.perf_counter() - t0
            out.warnings = WARNINGS.count - w0
            out.cpu_s, out.server_cpu_s = cpu_time() - c0, server_cpu() - s0
            out.tokenized = runner.tokenized
            if proxy is not None:
                out.requests, out.faults = proxy.requests, dict(proxy.counts)
                proxy.stop()
            if first_only or ids_fn is None:
                return out, None
            check = IdPass()
            url, options, proxy = where(rep, "ids")
            fresh_clients()
            t0, w0 = time.perf_counter(), WARNINGS.count
            try:
                ids = ids_fn(url, options)
                check.rows = int(ids.size)
                check.lost, check.duplicated, check.foreign = check_ids(ids, rows)
            except Exception as e:
                check.error = describe(e)
            check.seconds = time.perf_counter() - t0
            check.warnings = WARNINGS.count - w0
            if proxy is not None:
                check.requests, check.faults = proxy.requests, dict(proxy.counts)
                proxy.stop()
            return out, check

        return run

    def direct(rep: int, what: str) -> tuple[str, dict[str, Any] | None, FaultProxy | None]:
        return store.url(url_path), store.storage_options, None

    def local(rep: int, what: str) -> tuple[str, dict[str, Any] | None, FaultProxy | None]:
        return local_glob, None, None

    def proxied(rate: float) -> Callable[[int, str], tuple[str, dict[str, Any] | None, FaultProxy | None]]:
        def where(rep: int, what: str) -> tuple[str, dict[str, Any] | None, FaultProxy | None]:
            seed = 1 + rep * 2 + (what == "ids")  # a fresh fault schedule for every pass
            proxy = FaultProxy(
                store.endpoint, rate=rate, kinds=FAULT_KINDS, seed=seed, stall_s=STALL_S, retry_after=retry_after
            ).start()
            via = store.via(proxy.endpoint)
            return via.url(url_path), via.storage_options, proxy

        return where

    out: list[Variant] = [
        ("local", "headrace, local disk (no S3)", timed(runner.headrace, runner.headrace_ids, local)),
        ("headrace", "headrace S3", timed(runner.headrace, runner.headrace_ids, direct)),
        ("hf", "HF datasets streaming S3", timed(runner.hf, runner.hf_ids, direct)),
    ]
    for rate in rates:
        name = f"headrace S3 via proxy, {rate:.0%} faults"
        out.append((proxy_key(rate), name, timed(runner.headrace, runner.headrace_ids, proxied(rate))))
    return out


def proxy_key(rate: float) -> str:
    return f"proxy_{round(rate * 1000) / 10:g}pct"


def throughput(vs: list[Variant], repeat: dict[str, int]) -> dict[str, Config]:
    configs = {key: Config(key, name) for key, name, _ in vs}
    for key, _, run in vs:  # untimed: imports, HF's module resolution, the tokenizer's first call
        warm, _ = run(0, True)
        if warm.error is not None:
            print(f"  warm-up {key} failed: {warm.error}", flush=True)
    for rep in range(max(repeat.values())):
        shift = rep % len(vs)
        for key, _, run in vs[shift:] + vs[:shift]:
            if rep >= repeat[key]:
                continue
            p, check = run(rep, False)
            configs[key].passes.append(p)
            if check is not None:
                configs[key].id_passes.append(check)
        line = []
        for key, c in configs.items():
            if len(c.passes) <= rep:
                continue
            p = c.passes[-1]
            if p.error is not None:
                line.append(f"{key} failed")
            else:
                line.append(f"{key} {p.delivered / p.seconds / 1e6:.2f}M tok/s")
        print(f"  repetition {rep + 1}: " + ", ".join(line), flush=True)
        for key, c in configs.items():
            if len(c.passes) > rep:
                for e in [c.passes[-1].error, c.id_passes[-1].error if c.id_passes else None]:
                    if e is not None:
                        print(f"    {key}: failed: {e}", flush=True)
    return configs


# -- part 2: time to first batch over many shards, in fresh processes -----------------------------------
# Run with ``python -c`` so that it imports only the library it measures. Imports happen before the clock
# starts (s3fs and botocore are imported by fsspec on first use, inside it, for both); the tokenizer is
# loaded inside it, for both.
_CHILD = r"""
import itertools, json, os, sys, time
cfg = json.loads(sys.argv[1])
import numpy as np
import tokenizers
if cfg["lib"] == "headrace":
    import headrace as hr
    t0 = time.perf_counter()
    ds = hr.open(cfg["url"], storage_options=cfg["options"], columns=["id", "text"])
    ds = ds.tokenize(cfg["tok"]).pack(cfg["seq_len"]).batch(cfg["batch"])
    first = next(iter(hr.Loader(ds, num_workers=cfg["workers"])))
else:
    os.environ.update(cfg["env"])
    import datasets
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    t0 = time.perf_counter()
    tok = tokenizers.Tokenizer.from_file(cfg["tok"])
    eos = tok.token_to_id(cfg["eos"])

    def tokenize(batch):
        return {"input_ids": [[*e.ids, eos] for e in tok.encode_batch_fast(batch["text"], add_special_tokens=False)]}

    def group_texts(examples):
        n = cfg["seq_len"]
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples}
        total = len(concatenated[next(iter(examples))]) // n * n
        return {k: [t[i : i + n] for i in range(0, total, n)] for k, t in concatenated.items()}

    ds = datasets.load_dataset("parquet", data_files=cfg["url"], storage_options=cfg["options"], split="train",
                               streaming=True, columns=["id", "text"], cache_dir=cfg["env"]["HF_HOME"])
    ds = ds.map(tokenize, batched=True, remove_columns=["id", "text"]).map(group_texts, batched=True)
    first = next(iter(ds.iter(batch_size=cfg["batch"])))
seconds = time.perf_counter() - t0
print(json.dumps({"open_to_first": seconds, "first_wall": time.time(), "shape": list(np.shape(first["input_ids"]))}))
sys.stdout.flush()
os._exit(0)
"""


@dataclass
class FirstBatch:
    key: str
    name: str
    shards: int
    open_to_first_s: list[float] = field(default_factory=list)  # hr.open / load_dataset -> first batch
    launch_to_first_s: list[float] = field(default_factory=list)  # new Python -> first batch (imports too)
    requests_to_first: int | None = None
    errors: list[str] = field(default_factory=list)


def first_batch_child(cfg: dict[str, Any]) -> tuple[float, float]:
    launch = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, check=False, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fresh process ({cfg['lib']}) failed: {proc.stderr[-1500:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if report["shape"] != [PACK_BATCH, SEQ_LEN]:
        raise RuntimeError(f"fresh process ({cfg['lib']}): first batch of shape {report['shape']}")
    return float(report["open_to_first"]), float(report["first_wall"]) - launch


def first_batch(store: Store, shards: int, tok_path: Path, workers: int, repeat: int) -> list[FirstBatch]:
    base = {
        "tok": str(tok_path),
        "eos": EOS,
        "seq_len": SEQ_LEN,
        "batch": PACK_BATCH,
        "workers": workers,
        "env": HF_ENV,
    }
    out = [
        FirstBatch("headrace", f"headrace num_workers={workers}", shards),
        FirstBatch("hf", "HF datasets streaming", shards),
    ]
    for rep in range(repeat):
        for fb in out if rep % 2 == 0 else out[::-1]:
            cfg = {**base, "lib": fb.key, "url": store.url("many/*.parquet"), "options": store.storage_options}
            try:
                seconds, launch = first_batch_child(cfg)
            except Exception as e:
                fb.errors.append(describe(e))
                print(f"    {fb.key}: failed: {fb.errors[-1]}", flush=True)
                continue
            fb.open_to_first_s.append(seconds)
            fb.launch_to_first_s.append(launch)
        print(
            f"  repetition {rep + 1}/{repeat}: "
            + ", ".join(f"{fb.key} {fb.open_to_first_s[-1]:.2f} s" for fb in out if fb.open_to_first_s),
            flush=True,
        )
    for fb in out:  # untimed: the requests made before the first batch, through a fault-free proxy
        with FaultProxy(store.endpoint, rate=0.0, methods=()) as proxy:
            via = store.via(proxy.endpoint)
            cfg = {**base, "lib": fb.key, "url": via.url("many/*.parquet"), "options": via.storage_options}
            try:
                first_batch_child(cfg)
                fb.requests_to_first = proxy.requests
            except Exception as e:
                fb.errors.append(f"request count: {describe(e)}")
    return out


# -- report -------------------------------------------------------------------------------------------
def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str = ",.0f") -> str:
    """``median (min-max)`` (just the value for one)."""
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(med(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def summarize(configs: dict[str, Config], rows: int, basis: int) -> dict[str, dict[str, Any]]:
    """Per configuration: rates (corpus tokens / s), ratios, exactness and failures, for the table and JSON."""
    ref = configs.get("local")
    truth = (ref.ok()[0].delivered, ref.ok()[0].checksum) if ref is not None and ref.ok() else None
    out: dict[str, dict[str, Any]] = {}
    for key, c in configs.items():
        ok = c.ok()
        tokens_per_s = [basis / p.seconds for p in ok]
        by_rep = [basis / p.seconds if p.error is None else None for p in c.passes]
        ids_ok = [q for q in c.id_passes if q.error is None]
        exact_tokens = None
        if key != "hf" and truth is not None and ok:
            exact_tokens = all((p.delivered, p.checksum) == truth for p in ok)
        faults: dict[str, int] = {}
        for counts in [p.faults for p in c.passes] + [q.faults for q in c.id_passes]:
            for k, v in counts.items():
                faults[k] = faults.get(k, 0) + v
        out[key] = {
            "name": c.name,
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_by_rep": by_rep,
            "rows_per_s": [rows / p.seconds for p in ok],
            "tokens_per_cpu_s": [basis / p.cpu_s for p in ok if p.cpu_s > 0],
            "first_batch_s": [p.first_s for p in ok],
            "seconds": [round(p.seconds, 3) for p in c.passes],
            "cpu_s": [round(p.cpu_s, 2) for p in ok],
            "server_cpu_s": [round(p.server_cpu_s, 2) for p in ok],
            "delivered_tokens": [p.delivered for p in ok],
            "requests": [p.requests for p in c.passes] if key.startswith("proxy") else None,
            "id_pass_s": [round(q.seconds, 3) for q in ids_ok],
            "ids_lost": sum(q.lost for q in ids_ok),
            "ids_duplicated": sum(q.duplicated for q in ids_ok),
            "ids_foreign": sum(q.foreign for q in ids_ok),
            "id_passes": len(ids_ok),
            "tokens_exact": exact_tokens,
            "faults_injected": faults,
            "warnings_logged": sum(p.warnings for p in c.passes) + sum(q.warnings for q in c.id_passes),
            "passes": len(c.passes),
            "failed": [f"failed: {e}" for e in c.failures()],
        }
    for s in out.values():
        for ref_key, name in (("hf", "vs_hf"), (proxy_key(0.0), "vs_proxy_0"), ("local", "vs_local")):
            r = out.get(ref_key)
            if r is None or not s["tokens_per_s"] or not r["tokens_per_s"]:
                s[name] = None
                continue
            pairs = zip(s["tokens_per_s_by_rep"], r["tokens_per_s_by_rep"], strict=False)
            paired = [a / b for a, b in pairs if a is not None and b is not None]
            s[name] = {"median_ratio": med(s["tokens_per_s"]) / med(r["tokens_per_s"]), "per_rep": paired}
    return out


def ratio_text(r: dict[str, Any] | None) -> str:
    if r is None or not r["per_rep"]:
        return "-" if r is None else f"{r['median_ratio']:.2f}x"
    lo, hi = min(r["per_rep"]), max(r["per_rep"])
    return f"{r['median_ratio']:.2f}x" if len(r["per_rep"]) < 2 else f"{r['median_ratio']:.2f}x ({lo:.2f}-{hi:.2f})"


def print_summary(summary: dict[str, dict[str, Any]], fb: list[FirstBatch], info: dict[str, Any]) -> None:
    print("\n" + "=" * 110)
    if summary:
        print(
            f"[1] S3 (SeaweedFS on loopback): {info['rows']:,} rows, {info['shards']} Parquet shards "
            f"({info['mb']:.0f} MB) -> tokenize -> pack({SEQ_LEN}) -> batch({PACK_BATCH}); tokens/s = "
            f"{info['basis']:,} corpus tokens / s; median (min-max) of the passes; ratios: of the medians "
            "(range of the per-repetition ratios); 'read pass': the exactness pass (id, text rows, no tokenizer)"
        )
        head = f"  {'loader':<34}{'passes':>7}{'tokens/s':>34}{'rows/s':>9}{'first batch s':>19}{'vs HF':>19}"
        head += f"{'vs proxy 0%':>19}{'tok/CPU-s':>11}{'read pass s':>19}"
        print(head + f"{'lost/dup ids':>13}{'tokens exact':>13}  faults injected")
        for s in summary.values():
            lost = f"{s['ids_lost']}/{s['ids_duplicated']}" if s["id_passes"] else "-"
            exact = "-" if s["tokens_exact"] is None else str(s["tokens_exact"])
            faults = ",".join(f"{k}:{v}" for k, v in sorted(s["faults_injected"].items())) or "-"
            if s["warnings_logged"]:
                faults += f"; {s['warnings_logged']} retry warnings logged"
            cpu = format(med(s["tokens_per_cpu_s"]), ",.0f") if s["tokens_per_cpu_s"] else "-"
            print(
                f"  {s['name']:<34}{str(len(s['tokens_per_s'])) + '/' + str(s['passes']):>7}"
                f"{spread(s['tokens_per_s']):>34}"
                f"{format(med(s['rows_per_s']), ',.0f') if s['rows_per_s'] else '-':>9}"
                f"{spread(s['first_batch_s'], '.2f'):>19}{ratio_text(s['vs_hf']):>19}"
                f"{ratio_text(s['vs_proxy_0']):>19}{cpu:>11}{spread(s['id_pass_s'], '.2f'):>19}"
                f"{lost:>13}{exact:>13}  {faults}"
            )
            for e in s["failed"]:
                print(f"      {e[:300]}")
        print("  target (issue 5): >= 0.9x the no-fault rate at 1% faults, zero lost/duplicated ids")
    if fb:
        print(
            f"\n[2] time to first batch, {fb[0].shards:,} shards x {MANY_ROWS} rows in S3, fresh process each "
            "time; seconds, median (min-max)"
        )
        print(f"  {'loader':<30}{'open -> first batch':>28}{'launch -> first batch':>28}{'requests':>10}")
        for f in fb:
            print(
                f"  {f.name:<30}{spread(f.open_to_first_s, '.2f'):>28}{spread(f.launch_to_first_s, '.2f'):>28}"
                f"{f.requests_to_first if f.requests_to_first is not None else '-':>10}"
            )
            for e in f.errors:
                print(f"      failed: {e[:300]}")
        print("  target (issue 5): < 2 s from hr.open to the first batch over 1,000 shards")
    print("=" * 110)


ROLES: dict[str, suite.Role] = {"local": "reference", "hf": "peer"}  # the suite's roles; headrace otherwise


def _role(key: str) -> suite.Role:
    return ROLES.get(key, "headrace")


def _rate_label(rate: float) -> str:
    return f"{rate * 100:g}% faults"


# Why headrace's first batch of the token pipeline comes after HF's (written from a profile; added to the
# notes when it does in the run).
FIRST_BATCH_BEHIND = (
    "Seconds to the first batch, where headrace trails HF: pack(2048) fills a whole block of 256 sequences "
    "(about 524k tokens, some 13,000 documents here) before it emits anything (stages/pack.py MAX_ROWS, "
    "stages/tokens.py TokenStream.fill). A cProfile of the same pipeline on the full data (row groups of 4,000) "
    "from local disk, num_workers=0 prefetch=0, spends 1.54 of its 1.79 s to the first batch in encode_batch_fast "
    "over 4 blocks, 16,004 documents, for a first batch of 8 × 2048 tokens; HF's first batch needs one "
    "1,000-document map batch. The fix: let pack emit its first blocks as soon as one batch's sequences are there "
    "(grow the block from the batch size to 256), and tokenize large source blocks in slices."
)


# Why headrace makes more requests than HF before its first batch over many small shards (added when it does).
REQUESTS_BEHIND = (
    "Requests before the first batch over {shards:,} shards of {rows} rows, where headrace makes more than HF "
    "({ours} against {theirs}): pack(2048) fills a block of 256 sequences (stages/pack.py MAX_ROWS), "
    "about 13,000 documents here, so headrace opens about {need} shards (one request each, with the listing) before "
    "it emits (all of them, if fewer); HF's first batch needs one 1,000-document map batch, {hf_need} shards."
)


def suite_result(
    configs: dict[str, Config],
    summary: dict[str, dict[str, Any]],
    fb: list[FirstBatch],
    info: dict[str, Any],
    args: argparse.Namespace,
    machine_info: dict[str, Any],
) -> Result:
    """The run as the suite's ``Result`` "remote": every pass of every configuration (``benchmarks/suite.py``).

    Cases: the token pipeline and the exactness (read) pass from S3, local disk as the ceiling, HF the peer;
    the same through the fault proxy, one case per fault rate, with the proxy's 0% run as the no-fault
    ceiling; and the time to the first batch over many shards.
    """
    res = Result(
        "remote",
        "Remote reads from S3 (SeaweedFS on loopback), with injected faults: headrace vs HF datasets streaming",
        quick=args.quick,
        machine=machine_info,
    )
    tokens = f"tokenize → pack {SEQ_LEN} → batch {PACK_BATCH}"
    read = f"read (id, text) → batch {ID_BATCH}"
    basis, rows = info["basis"], args.rows
    rate_of = {proxy_key(rate): rate for rate in args.rates}
    ceiling = configs.get(proxy_key(0.0))

    def add(where: str, faults: str, c: Config, role: suite.Role, name: str) -> None:
        ok = c.ok()
        values = {
            "tokens/s": [basis / p.seconds for p in ok],
            "rows/s": [rows / p.seconds for p in ok],
            "seconds to first batch": [p.first_s for p in ok if p.first_s == p.first_s],  # NaN: no batch
            "tokens/CPU-s (this process)": [basis / p.cpu_s for p in ok if p.cpu_s > 0],
        }
        for metric, vs in values.items():
            if vs:
                case, higher = f"{where}: {tokens}{faults}", metric != "seconds to first batch"
                res.add(case, name, metric, vs, role=role, higher_is_better=higher)
        ids_ok = [q for q in c.id_passes if q.error is None]
        if ids_ok:
            res.add(f"{where}: {read}{faults}", name, "rows/s", [rows / q.seconds for q in ids_ok], role=role)

    if basis:
        for key, c in configs.items():
            if key in rate_of:
                faults = f", {_rate_label(rate_of[key])}"
                add("S3 via fault proxy", faults, c, "headrace", c.name)
                if ceiling is not None and rate_of[key] > 0:
                    add("S3 via fault proxy", faults, ceiling, "reference", f"{ceiling.name} (no-fault ceiling)")
            else:
                add("S3", "", c, _role(key), c.name)
    first = {
        k: [p.first_s for p in configs[k].ok() if p.first_s == p.first_s] for k in ("headrace", "hf") if k in configs
    }
    if all(first.get(k) for k in ("headrace", "hf")) and med(first["headrace"]) > med(first["hf"]):
        res.notes.append(FIRST_BATCH_BEHIND)
    add_first_batch(res, fb, args, tokens)
    res.notes.insert(
        0,
        f"Data: {rows:,} rows of real paragraphs (tests/corpora.py, repeated with fresh ids) in {args.shards} Parquet "
        f"shards ({info['mb']:,.0f} MB, row groups of {args.row_group_size:,}) on SeaweedFS "
        f"{machine_info.get('seaweedfs', '')} at 127.0.0.1 (new server and bucket each run); "
        f"{args.many:,} shards × {MANY_ROWS} rows for the first batch. tokens/s: the corpus' {basis:,} tokens "
        f"(EOS included) / seconds for every contender. Repetitions: {args.repeat} interleaved ({args.hf_repeat} of "
        "HF), each pass with a fresh S3 client; 'local disk' is headrace on the same files without S3 (the "
        "ceiling). The server, the proxy and the loader share the machine's cores.",
    )
    if args.rates:
        res.notes.insert(
            1,
            f"Fault proxy (tests/faultproxy.py, in this process: its threads count in tokens/CPU-s): "
            f"{', '.join(_rate_label(r) for r in args.rates)} of GET requests failed with a connection reset or a "
            f"truncated body (both mid-body) or a 503 with Retry-After: {args.retry_after} s; a fresh fault schedule "
            "for every pass. The read case is the exactness pass: id and text rows, no tokenizer, every id collected.",
        )
    res.notes += check_notes(summary, rows)
    return res


def add_first_batch(res: Result, fb: list[FirstBatch], args: argparse.Namespace, tokens: str) -> None:
    """The time and the requests to the first batch over many shards, and why headrace needs more requests."""
    counts = {f.key: f.requests_to_first for f in fb}
    ours, theirs = counts.get("headrace"), counts.get("hf")
    if ours is not None and theirs is not None and ours > theirs:
        need, hf_need = -(-13_000 // MANY_ROWS), -(-1_000 // MANY_ROWS)
        res.notes.append(REQUESTS_BEHIND.format(shards=args.many, rows=MANY_ROWS, ours=ours, theirs=theirs,
                                                need=need, hf_need=hf_need))  # fmt: skip
    for f in fb:
        case = f"S3, {f.shards:,} shards × {MANY_ROWS} rows: open → first batch ({tokens}), fresh process"
        role = _role(f.key)
        if f.open_to_first_s:
            res.add(case, f.name, "seconds, open → first batch", f.open_to_first_s, role=role, higher_is_better=False)
            res.add(
                case, f.name, "seconds, launch → first batch", f.launch_to_first_s, role=role, higher_is_better=False
            )
        if f.requests_to_first is not None:
            requests = [float(f.requests_to_first)]
            res.add(case, f.name, "requests before the first batch", requests, role=role, higher_is_better=False)
        res.notes += [f"{f.name}, first batch over {f.shards:,} shards: failed: {e[:300]}" for e in f.errors]


def check_notes(summary: dict[str, dict[str, Any]], rows: int) -> list[str]:
    """One note per configuration: the exactness checks that passed or failed, the faults injected."""
    notes = []
    for s in summary.values():
        checks = []
        if s["id_passes"]:
            bad = s["ids_lost"] or s["ids_duplicated"] or s["ids_foreign"]
            checks.append(
                f"{'CHECK FAILED' if bad else 'passed'}: lost/duplicated/foreign ids {s['ids_lost']}/"
                f"{s['ids_duplicated']}/{s['ids_foreign']} over {s['id_passes']} exactness pass(es) of {rows:,} rows"
            )
        if s["tokens_exact"] is not None:
            checks.append(
                ("passed" if s["tokens_exact"] else "CHECK FAILED")
                + ": tokens delivered and their sum equal to the local run's in every pass"
            )
        faults = ", ".join(f"{k} {v}" for k, v in sorted(s["faults_injected"].items()))
        if faults:
            checks.append(f"faults injected: {faults}; retry warnings logged: {s['warnings_logged']}")
        checks += s["failed"]
        notes.append(f"{s['name']}: " + "; ".join(checks or ["no check ran"]))
    return notes


def machine() -> dict[str, Any]:
    """The machine and the versions this script prints and records, SeaweedFS's included."""
    weed = "unknown"
    try:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "weed"), "version"], capture_output=True, text=True, timeout=30
        )
        weed = proc.stdout.split("\n", 1)[0].replace("version ", "").strip() or weed
    except (OSError, subprocess.SubprocessError):
        pass
    return suite.script_machine("tokenizers", "fsspec", "s3fs", "botocore", seaweedfs=weed)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None, help="rows of part 1 (default 600,000, about 51 MB)")
    p.add_argument("--shards", type=int, default=None, help="Parquet shards of part 1 (default 32)")
    p.add_argument("--row-group-size", type=int, default=None, help="rows per row group of part 1 (default 4,000)")
    p.add_argument("--many", type=int, default=None, help=f"shards of {MANY_ROWS} rows in part 2 (default 1,000)")
    p.add_argument("--rates", default="0,0.01,0.05", help="fault rates of the proxy runs (comma-separated)")
    p.add_argument("--workers", type=int, default=2, help="headrace Loader num_workers")
    p.add_argument("--retry-after", type=int, default=1, help="seconds the injected 503s ask for (Retry-After)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions, median reported (default 3)")
    p.add_argument(
        "--hf-repeat", type=int, default=None, help="repetitions of the slow HF run (default 2, at most --repeat)"
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run in under a minute")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="generated data goes to DATA_DIR/remote")
    p.add_argument("--skip", choices=["hf", "faults", "many"], action="append", default=[], help="skip a part")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON results to this file")
    p.add_argument("--suite-out", type=Path, default=None, help="also write the suite's result DIR/remote.json")
    args = p.parse_args(argv)
    args.rows = args.rows or (20_000 if args.quick else 600_000)
    args.shards = args.shards or (4 if args.quick else 32)
    args.row_group_size = args.row_group_size or (2_000 if args.quick else 4_000)
    args.many = args.many or (50 if args.quick else 1_000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.hf_repeat = min(args.hf_repeat or 2, args.repeat)  # HF takes 3x as long: 2 keep a full run near 9 min
    args.rates = [] if "faults" in args.skip else [float(r) for r in args.rates.split(",") if r.strip()]
    return args


def upload(store: Store, files: list[Path], many_files: list[Path]) -> dict[str, float]:
    """Upload the data (and the many small shards) to the bucket; the seconds and MB of each."""
    t0 = time.perf_counter()
    store.put(files[0].parent, "data")
    mb = sum(p.stat().st_size for p in files) / 1e6
    done = {"data_s": round(time.perf_counter() - t0, 2), "data_mb": round(mb, 1)}
    if many_files:
        t0 = time.perf_counter()
        store.put(many_files[0].parent, "many")
        done["many_s"] = round(time.perf_counter() - t0, 2)
        done["many_mb"] = round(sum(p.stat().st_size for p in many_files) / 1e6, 1)
    print(f"  SeaweedFS at {store.endpoint}, uploaded: {done}", flush=True)
    return done


def config_json(s: dict[str, Any]) -> dict[str, Any]:
    """One configuration's summary in the JSON line: its checks and counts, rates rounded, with medians."""
    rates = ("tokens_per_s", "rows_per_s", "first_batch_s", "tokens_per_cpu_s", "tokens_per_s_by_rep")
    return {
        **{k: v for k, v in s.items() if k not in rates},
        "tokens_per_s": [round(x) for x in s["tokens_per_s"]],
        "tokens_per_s_median": round(med(s["tokens_per_s"])) if s["tokens_per_s"] else None,
        "rows_per_s_median": round(med(s["rows_per_s"])) if s["rows_per_s"] else None,
        "tokens_per_cpu_s": [round(x) for x in s["tokens_per_cpu_s"]],
        "first_batch_s": [round(x, 3) for x in s["first_batch_s"]],
        "first_batch_s_median": round(med(s["first_batch_s"]), 3) if s["first_batch_s"] else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops SeaweedFS (the with block)
    title = "headrace remote benchmark: remote reads from S3 (SeaweedFS on loopback) vs HF datasets, with faults"
    results = report_header(title, machine(), args)
    t_start = time.perf_counter()
    suite_machine = {**suite.machine(), "seaweedfs": results["machine"]["seaweedfs"]}
    root = args.data_dir / "remote"
    tok_path = build_tokenizer(root)
    spec = DataSpec(rows=args.rows, shards=args.shards, row_group_size=args.row_group_size, max_chars=None)
    files = build_data(spec, root)
    many_spec = DataSpec(rows=args.many * MANY_ROWS, shards=args.many, row_group_size=MANY_ROWS, max_chars=None)
    many_files = build_data(many_spec, root) if "many" not in args.skip else []
    warm_page_cache(files)
    mb = sum(p.stat().st_size for p in files) / 1e6
    server = SeaweedS3()
    summary: dict[str, dict[str, Any]] = {}
    configs: dict[str, Config] = {}
    fb: list[FirstBatch] = []
    info = {"rows": args.rows, "shards": args.shards, "mb": mb, "basis": 0}
    with server as store, WARNINGS:
        results["upload"] = upload(store, files, many_files)
        print(f"\n[1] S3 throughput: {args.rows:,} rows in {args.shards} Parquet files ({mb:.0f} MB)", flush=True)
        runner = Runner(tok_path, args.workers)
        local_glob = str(files[0].parent / "part-*.parquet")
        vs = variants(runner, store, local_glob, args.rows, args.rates, ServerCpu(server), args.retry_after)
        if "hf" in args.skip:
            vs = [v for v in vs if v[0] != "hf"]
        repeat = {key: args.hf_repeat if key == "hf" else args.repeat for key, _, _ in vs}
        configs = throughput(vs, repeat)
        hf_tokenized = [p.tokenized for p in configs["hf"].ok()] if "hf" in configs else []
        local_ok = configs["local"].ok()
        # tokens/s counts the corpus' tokens (EOS included) for everyone, as bench_text.py does: HF's
        # group_texts drops the remainder of every 1,000-document map batch, pack only the last partial sequence
        basis = hf_tokenized[0] if hf_tokenized else (local_ok[0].delivered if local_ok else 0)
        info["basis"] = basis
        summary = summarize(configs, args.rows, basis) if basis else {}
        results["throughput"] = {
            "data": {**asdict(spec), "mb": round(mb, 1)},
            "basis_tokens": basis,
            "basis": "HF's tokenizing map's count" if hf_tokenized else "headrace local delivered tokens",
            "fault_kinds": list(FAULT_KINDS),
            "retry_after_s": args.retry_after,
            "configs": {k: config_json(c) for k, c in summary.items()},
        }
        if many_files:
            print(f"\n[2] time to first batch: {args.many:,} shards x {MANY_ROWS} rows in S3, fresh processes")
            fb = first_batch(store, args.many, tok_path, args.workers, args.repeat)
            results["first_batch_many"] = [
                {**asdict(f), "open_to_first_median_s": round(med(f.open_to_first_s), 3)} for f in fb
            ]
    results["warning_samples"] = WARNINGS.samples
    results["load_after"] = round(os.getloadavg()[0], 2)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    print_summary(summary, fb, info)
    write_suite(suite_result(configs, summary, fb, info, args, suite_machine), args, t_start)
    return report_json(results, args)


if __name__ == "__main__":
    sys.exit(main())
