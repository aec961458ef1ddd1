"""The text benchmark: the token pipeline against its peers, same run, same tokenizer, same text, same machine.

Three measurements on real text (the 139,128 paragraphs of ``corpora/``, via ``tests/corpora.py``):

1. **Parquet text -> tokenize -> pack 2048 -> batches of 8** (tokens/s). headrace
   ``Loader(open(glob, columns=["text"]).tokenize(tok).pack(2048).batch(8), num_workers=N)`` for N = 0 and 2;
   HF ``datasets`` streaming: ``load_dataset("parquet", streaming=True)`` + a batched tokenizing ``map`` +
   the classic ``group_texts`` (concatenate, cut into 2048) as a second batched ``map``, iterated in
   batches of 8, tokenizing with the same ``encode_batch_fast`` and, as ``run_clm.py`` does, with a
   ``transformers`` fast tokenizer wrapping the same tokenizer; and the tokenizer alone,
   ``Tokenizer.encode_batch_fast`` over the same texts in chunks of 1,000 (the ceiling). One tokenizer for
   all: a byte-level BPE with a 16k vocabulary trained on the corpus, with ``<|endoftext|>`` appended to
   every document by every contender.
2. **Windows from a token file vs nanoGPT's ``get_batch``** (tokens/s of 16x2048 batches). The tokenized
   corpus is written as a nanoGPT ``.bin`` (flat uint16), repeated to 100M+ tokens. nanoGPT draws 16 random
   offsets per batch from a ``numpy.memmap``; headrace reads the file with ``hr.open(bin).window(2048,
   shift=1).batch(16)`` (sequential windows; also after a row shuffle) and, for random offsets, with its
   ``TokenShards`` random-access reader.
3. **``headrace prepare``** (text -> token shards, ``--workers 2``) against the tokenizer alone, when the
   command exists.

Repetitions are interleaved (A B C ... A B C ..., the starting contender rotating), so load from other
processes falls on every contender alike; the median is reported. CPU time (all threads and child
processes) is recorded too: tokens per CPU-second moves much less with other load than wall time. Run:
``.venv/bin/python benchmarks/bench_text.py`` (``--quick``: a smoke run under a minute). Data and the
tokenizer are generated into ``.bench/`` once and reused. Prints a table, then one JSON line; with
``--suite-out DIR`` it also writes ``DIR/text.json`` (``benchmarks/suite.py``: every repetition of every
contender, for ``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tokenizers import Tokenizer

import headrace as hr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402 - benchmarks/suite.py: the suite's common result format
from peers import group_texts, hf_parquet  # noqa: E402
from suite import (  # noqa: E402
    EOS,
    VOCAB,
    Result,
    build_once,
    build_parquet,
    build_tokenizer,
    cpu_time,
    eos_id,
    report_header,
    report_json,
    warm_page_cache,
    write_suite,
)

SEQ_LEN = 2048
PACK_BATCH = 8  # part 1: batches of 8 sequences of 2048
WINDOW_BATCH = 16  # part 2: nanoGPT's 16 x 2048
ENCODE_CHUNK = 1000  # texts per encode_batch_fast call (tokenizer alone); also HF map's default batch
SHUFFLE_ROWS = 4096  # part 2: headrace row-shuffle window (rows of 2048 tokens: 8M tokens)


@dataclass
class Timing:
    """One contender: the tokens it delivered and the seconds of each timed repetition.

    ``basis``: when set, rates are this many tokens per second instead of the tokens delivered. Part 1 sets
    it to the corpus' tokens (EOS included) for every contender, so that its ratios are ratios of time for
    the same work: HF's ``group_texts`` drops the remainder of every 1,000-document map batch (2.7% of the
    tokens here) and ``pack`` drops only the last partial sequence, but both tokenized everything.
    """

    key: str
    name: str
    tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # user + system, all threads and child processes
    basis: int | None = None

    def _rate(self, seconds: list[float]) -> float:
        return statistics.median(self.rates(seconds))

    def rates(self, seconds: list[float]) -> list[float]:
        """The rate of each repetition (tokens per second of ``seconds``: wall or CPU), in order."""
        return [(self.basis or t) / s for t, s in zip(self.tokens, seconds, strict=True)]

    @property
    def tokens_per_s(self) -> float:
        return self._rate(self.seconds)

    @property
    def tokens_per_cpu_s(self) -> float:
        """Tokens per CPU-second: how much work each token costs, much less sensitive to other load than wall time."""
        return self._rate(self.cpu_seconds)


def interleaved(
    variants: list[tuple[str, str, Callable[..., int]]], repeat: int, optional: frozenset[str] = frozenset()
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Run every variant ``repeat`` times, A B C ... A B C ..., rotating who goes first.

    A variant in ``optional`` that raises is dropped (with its error) instead of ending the benchmark.
    """
    out = {key: Timing(key, name) for key, name, _ in variants}
    failed: dict[str, str] = {}
    for rep in range(repeat):
        shift = rep % len(variants)
        for key, _, run in variants[shift:] + variants[:shift]:
            if key in failed:
                continue
            gc.collect()
            c0 = cpu_time()
            t0 = time.perf_counter()
            try:
                n = run()
            except Exception as e:
                if key not in optional:
                    raise
                failed[key] = f"{type(e).__name__}: {e}"
                del out[key]
                print(f"  {key} failed, dropped: {failed[key][-1500:]}", flush=True)
                continue
            out[key].seconds.append(time.perf_counter() - t0)
            out[key].cpu_seconds.append(cpu_time() - c0)
            out[key].tokens.append(n)
        print(
            f"  repetition {rep + 1}/{repeat}: "
            + ", ".join(f"{k} {t.tokens[-1] / t.seconds[-1] / 1e6:.2f}M" for k, t in out.items()),
            flush=True,
        )
    return out, failed


# -- data ---------------------------------------------------------------------------------------------
def read_texts(files: list[Path]) -> list[str]:
    return pq.read_table([str(p) for p in files], columns=["text"])["text"].to_pylist()  # type: ignore[arg-type]


def build_bin(root: Path, files: list[Path], tok_path: Path, min_tokens: int) -> tuple[Path, int]:
    """The tokenized corpus (EOS after each document) as a nanoGPT ``.bin``, repeated to ``min_tokens``."""
    folder = root / f"tokens-nanogpt-{min_tokens}"
    spec = {"data": str(files[0].parent), "min_tokens": min_tokens, "version": suite.DATA_VERSION}

    def write(tmp: Path) -> None:
        tok = Tokenizer.from_file(str(tok_path))
        eos = eos_id(tok)
        texts = read_texts(files)
        ids: list[int] = []
        for lo in range(0, len(texts), ENCODE_CHUNK):
            for e in tok.encode_batch_fast(texts[lo : lo + ENCODE_CHUNK], add_special_tokens=False):
                ids.extend(e.ids)
                ids.append(eos)
        once = np.array(ids, dtype=np.uint16)
        with (tmp / "train.bin").open("wb") as f:
            for _ in range(-(-min_tokens // len(once))):
                once.tofile(f)

    build_once(folder, spec, write, "the token file")
    path = folder / "train.bin"
    return path, path.stat().st_size // 2


# -- 1. tokenize -> pack ------------------------------------------------------------------------------
def pack_variants(files: list[Path], tok_path: Path, workers: list[int]) -> list[tuple[str, str, Callable[..., int]]]:
    glob = str(files[0].parent / "part-*.parquet")
    tok = Tokenizer.from_file(str(tok_path))
    eos = eos_id(tok)
    texts = read_texts(files)  # the tokenizer alone starts from the texts in memory

    def tokenizer_alone(first: bool = False) -> int:
        n = 0
        for lo in range(0, len(texts), ENCODE_CHUNK):
            batch = tok.encode_batch_fast(texts[lo : lo + ENCODE_CHUNK], add_special_tokens=False)
            n += sum(len(e.ids) for e in batch) + len(batch)  # + one EOS per document
            if first:
                break
        return n

    def headrace(num_workers: int) -> Callable[..., int]:
        def run(first: bool = False) -> int:
            ds = hr.open(glob, columns=["text"]).tokenize(tok).pack(SEQ_LEN).batch(PACK_BATCH)
            return count(hr.Loader(ds, num_workers=num_workers), first)

        return run

    def hf_tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return {"input_ids": [[*e.ids, eos] for e in tok.encode_batch_fast(batch["text"], add_special_tokens=False)]}

    hf_tok: list[Any] = []  # the transformers wrapper, made on first use

    def hf_tokenize_transformers(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        if not hf_tok:
            from transformers import PreTrainedTokenizerFast

            hf_tok.append(PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS))
        out = hf_tok[0](batch["text"])  # run_clm.py: input_ids and attention_mask, both grouped
        return {
            "input_ids": [[*ids, eos] for ids in out["input_ids"]],
            "attention_mask": [[*m, 1] for m in out["attention_mask"]],
        }

    def hf_stream(fn: Callable[[Any], Any]) -> Callable[..., int]:
        def run(first: bool = False) -> int:
            ds = hf_parquet([str(p) for p in files], columns=["text"])
            ds = ds.map(fn, batched=True, remove_columns=["text"]).map(group_texts, batched=True)
            return count(ds.iter(batch_size=PACK_BATCH), first)

        return run

    variants: list[tuple[str, str, Callable[..., int]]] = [
        ("tokenizer", "tokenizer alone (encode_batch_fast)", tokenizer_alone)
    ]
    variants += [(f"headrace_w{n}", f"headrace num_workers={n}", headrace(n)) for n in workers]
    variants += [("hf", "HF streaming, encode_batch_fast map", hf_stream(hf_tokenize))]
    variants += [("hf_transformers", "HF streaming, transformers tok (run_clm)", hf_stream(hf_tokenize_transformers))]
    return variants


def count(batches: Iterable[dict[str, Any]], first: bool) -> int:
    """Tokens of ``input_ids`` in ``batches`` (only the first batch if ``first``).

    ``np.asarray``: a training step needs an array, as headrace delivers; HF yields lists (about 2% of its time).
    """
    it = iter(batches)
    n = 0
    try:
        for b in it:
            n += np.asarray(b["input_ids"]).size
            if first:
                break
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return n


def warm_up(variants: list[tuple[str, str, Callable[..., int]]], optional: frozenset[str] = frozenset()) -> None:
    """Imports, HF's module resolution, the tokenizer's first call: paid once, untimed, for the first batch.

    An optional variant that fails here is left in: ``interleaved`` drops it with its error.
    """
    for key, _, run in variants:
        try:
            run(first=True)
        except Exception:
            if key not in optional:
                raise


# -- 2. windows vs nanoGPT get_batch --------------------------------------------------------------------
def window_variants(bin_path: Path, num_tokens: int) -> list[tuple[str, str, Callable[..., int]]]:
    batch_tokens = WINDOW_BATCH * SEQ_LEN
    batches = num_tokens // batch_tokens  # nanoGPT draws as many batches as one pass holds

    def nanogpt(reopen: bool) -> Callable[[], int]:
        def run() -> int:
            rng = np.random.default_rng(0)
            data = np.memmap(bin_path, dtype=np.uint16, mode="r")
            n = 0
            for _ in range(batches):
                if reopen:  # nanoGPT's train.py recreates the memmap every batch (to avoid a memory leak)
                    data = np.memmap(bin_path, dtype=np.uint16, mode="r")
                ix = rng.integers(len(data) - SEQ_LEN - 1, size=WINDOW_BATCH)
                x = np.stack([data[i : i + SEQ_LEN] for i in ix]).astype(np.int64)
                y = np.stack([data[i + 1 : i + 1 + SEQ_LEN] for i in ix]).astype(np.int64)
                batch = (x, y)  # what a training step gets
                n += batch[0].size
            return n

        return run

    def headrace(shuffle: bool, prefetch: int) -> Callable[[], int]:
        def run() -> int:
            ds = hr.open(str(bin_path))
            if shuffle:
                ds = ds.shuffle(seed=0, buffer_size=SHUFFLE_ROWS)
            loader = hr.Loader(ds.window(SEQ_LEN, shift=1).batch(WINDOW_BATCH), prefetch=prefetch)
            return count(loader, first=False)

        return run

    def headrace_random() -> int:
        from headrace.formats.tokens import TokenShards

        rng = np.random.default_rng(0)
        shards = TokenShards(str(bin_path))
        n = 0
        for _ in range(batches):
            ix = rng.integers(shards.num_tokens - SEQ_LEN - 1, size=WINDOW_BATCH)
            # the same work as nanoGPT's loop: two contiguous int64 arrays, x and y, read separately
            x = np.stack([shards.tokens(int(i), SEQ_LEN) for i in ix]).astype(np.int64)
            y = np.stack([shards.tokens(int(i) + 1, SEQ_LEN) for i in ix]).astype(np.int64)
            batch = (x, y)
            n += batch[0].size
        return n

    return [
        ("nanogpt", "nanoGPT get_batch (memmap once)", nanogpt(False)),
        ("nanogpt_reopen", "nanoGPT get_batch (memmap per batch)", nanogpt(True)),
        ("headrace", "headrace window, sequential", headrace(False, 2)),
        ("headrace_p0", "headrace window, sequential, prefetch=0", headrace(False, 0)),
        ("headrace_shuffle", f"headrace shuffle({SHUFFLE_ROWS} rows) + window", headrace(True, 2)),
        ("headrace_random", "headrace TokenShards, random offsets", headrace_random),
    ]


# -- 3. headrace prepare --------------------------------------------------------------------------------
def prepare_available() -> tuple[bool, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "headrace", "prepare", "--help"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


class Prepare:
    """``headrace prepare IN OUT --tokenizer TOK --workers N --json`` into a fresh folder, as a timed variant.

    It runs interleaved with part 1, so that it meets the same load as the tokenizer alone. The variant's
    time is the whole command (a fresh process: imports, worker processes, writing shards and manifest);
    the run's own ``seconds`` from its JSON report are kept too.
    """

    def __init__(self, files: list[Path], tok_path: Path, workers: int) -> None:
        self.glob = str(files[0].parent / "part-*.parquet")
        self.tok_path, self.workers = tok_path, workers
        self.run_seconds: list[float] = []

    def __call__(self, first: bool = False) -> int:
        out = Path(tempfile.mkdtemp(prefix="headrace-bench-prepare-"))
        try:
            cmd = [sys.executable, "-m", "headrace", "prepare", self.glob, str(out), "--tokenizer", str(self.tok_path)]
            cmd += ["--workers", str(self.workers), "--json"]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            report = json.loads(proc.stdout)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if not first:
            self.run_seconds.append(float(report["run"]["seconds"]))
        return int(report["totals"]["tokens"])


# -- report -------------------------------------------------------------------------------------------
def print_summary(
    packed: dict[str, Timing], windows: dict[str, Timing], prep: dict[str, Any] | None, args: argparse.Namespace
) -> None:
    print("\n" + "=" * 100)
    if "hf" in packed:
        corpus = packed["tokenizer"].tokens[0]
        print(
            f"[1] Parquet text -> tokenize -> pack({SEQ_LEN}) -> batch({PACK_BATCH}); tokens/s = the corpus' "
            f"{corpus:,} tokens (EOS included) / seconds, for all; median of {args.repeat}"
        )
        hf_ref = packed["hf"].tokens_per_s
        tok_ref = packed["tokenizer"].tokens_per_s
        hf_cpu, tok_cpu = packed["hf"].tokens_per_cpu_s, packed["tokenizer"].tokens_per_cpu_s
        print(
            f"  {'loader':<42}{'tokens/s':>12}{'vs HF':>8}{'vs tok':>8}{'tok/CPU-s':>12}{'vs HF':>8}{'vs tok':>8}"
            f"{'delivered':>11}"
        )
        for t in packed.values():
            print(
                f"  {t.name:<42}{t.tokens_per_s:>12,.0f}{t.tokens_per_s / hf_ref:>7.2f}x"
                f"{t.tokens_per_s / tok_ref:>7.2f}x{t.tokens_per_cpu_s:>12,.0f}{t.tokens_per_cpu_s / hf_cpu:>7.2f}x"
                f"{t.tokens_per_cpu_s / tok_cpu:>7.2f}x{t.tokens[0]:>11,}"
            )
        print("  DESIGN targets: headrace >= 4x HF streaming, >= 0.85x the tokenizer alone")
    if windows:
        ref = windows["nanogpt"].tokens_per_s
        print(
            f"\n[2] {WINDOW_BATCH}x{SEQ_LEN} batches of (input_ids, labels) from a nanoGPT .bin of "
            f"{args.bin_actual:,} tokens; tokens/s (input_ids), median of {args.repeat}"
        )
        cpu_ref = windows["nanogpt"].tokens_per_cpu_s
        print(f"  {'loader':<46}{'tokens/s':>14}{'vs nanoGPT':>12}{'tok/CPU-s':>14}{'vs nanoGPT':>12}")
        for t in windows.values():
            print(
                f"  {t.name:<46}{t.tokens_per_s:>14,.0f}{t.tokens_per_s / ref:>11.2f}x"
                f"{t.tokens_per_cpu_s:>14,.0f}{t.tokens_per_cpu_s / cpu_ref:>11.2f}x"
            )
        print("  DESIGN target: headrace >= 0.9x nanoGPT get_batch")
    if prep is not None:
        print(f"\n[3] headrace prepare --workers {args.workers_prepare}")
        if prep["measured"]:
            tok = packed["tokenizer"].tokens_per_s if packed else float("nan")
            print(
                f"  {prep['tokens']:,} tokens (EOS included), median of {args.repeat}, interleaved with [1]; vs the "
                f"tokenizer alone ({tok:,.0f} tokens/s)"
            )
            for what, rate in (("whole command", prep["tokens_per_s"]), ("its run (JSON)", prep["run_tokens_per_s"])):
                print(f"  {what:<16}{rate:>14,.0f} tokens/s{rate / tok:>8.2f}x")
            print(
                f"  {'CPU':<16}{prep['tokens_per_cpu_s']:>14,.0f} tokens/CPU-s {prep['cpu_ratio_vs_tokenizer']:.2f}x "
                "(its worker processes included)"
            )
        else:
            print(f"  not measured: {prep['why']}")
    print("=" * 100)


PACK_CASE = f"Parquet text → tokenize → pack {SEQ_LEN} → batch {PACK_BATCH}"
# The suite's names of the HF contenders (the table keeps its shorter ones): the library, then the variant.
SUITE_NAMES = {
    "hf": "HF datasets streaming, encode_batch_fast map",
    "hf_transformers": "HF datasets streaming, transformers tokenizer (run_clm.py)",
}


def _role(key: str) -> suite.Role:
    if key == "tokenizer" or key.startswith("nanogpt"):
        return "reference"
    return "peer" if key.startswith("hf") else "headrace"


def _add_rates(res: Result, case: str, t: Timing, role: suite.Role, name: str | None = None) -> None:
    """tokens/s and tokens/CPU-s of every repetition of ``t``."""
    res.add(case, name or t.name, "tokens/s", t.rates(t.seconds), role=role)
    res.add(case, name or t.name, "tokens/CPU-s", t.rates(t.cpu_seconds), role=role)


def suite_result(
    packed: dict[str, Timing],
    whole: Timing | None,
    prep: Prepare | None,
    windows: dict[str, Timing],
    failed: dict[str, str],
    args: argparse.Namespace,
    notes: list[str],
    info: dict[str, Any],
) -> Result:
    """The run as the suite's ``Result`` "text": every repetition of every contender (``benchmarks/suite.py``)."""
    res = Result(
        "text",
        "Text → tokenize → pack → batch, and token windows: headrace vs HF datasets, the tokenizer alone, nanoGPT",
        quick=args.quick,
        notes=list(notes),
        machine=info,
    )
    for key, t in packed.items():
        _add_rates(res, PACK_CASE, t, _role(key), SUITE_NAMES.get(key))
    if packed:
        corpus = packed["tokenizer"].tokens[0]
        lines = []
        for key, t in packed.items():
            same = len(set(t.tokens)) == 1
            lines.append(
                f"{SUITE_NAMES.get(key, t.name)}: {t.tokens[0]:,}"
                + ("" if same else f" (CHANGED between repetitions: {t.tokens})")
            )
            if key.startswith("headrace") and not 0 <= corpus - t.tokens[0] < SEQ_LEN * PACK_BATCH:
                lines[-1] += " (CHECK FAILED: pack lost more than its last partial batch)"
        res.notes.append(
            f"{PACK_CASE}: tokens/s is the corpus' {corpus:,} tokens (EOS included) / seconds for every contender "
            "(the same work); tokens delivered in batches, the same in every repetition unless said: "
            + "; ".join(lines)
            + ". Check: headrace delivers the corpus' tokens less at most its last partial batch; HF's group_texts "
            "drops the remainder of every 1,000-document map batch."
        )
    if whole is not None and prep is not None:
        case = f"Parquet text → token shards (headrace prepare --workers {args.workers_prepare})"
        name = f"headrace prepare --workers {args.workers_prepare}"
        _add_rates(res, case, whole, "headrace", name + " (whole command)")
        run_rates = [whole.tokens[0] / s for s in prep.run_seconds]
        res.add(case, name + " (its run, from its JSON report)", "tokens/s", run_rates, role="headrace")
        if "tokenizer" in packed:
            _add_rates(res, case, packed["tokenizer"], "reference")
            corpus = packed["tokenizer"].tokens[0]
            equal = "equal to" if set(whole.tokens) == {corpus} else f"NOT equal to ({whole.tokens} vs)"
            res.notes.append(
                f"headrace prepare: the whole command is a fresh process (imports, worker processes, writing shards "
                f"and manifest), interleaved with the tokenize → pack contenders; the tokens it reports are {equal} "
                f"the tokenizer alone's count ({corpus:,})."
            )
    if windows:
        sequential = f"Token file → windows {SEQ_LEN} (sequential or row-shuffled) → batch {WINDOW_BATCH}"
        random = f"Token file → {WINDOW_BATCH} × {SEQ_LEN} windows at random offsets (x, y)"
        for key, t in windows.items():
            if key.startswith("nanogpt"):  # the ceiling of both cases
                _add_rates(res, sequential, t, "reference")
                _add_rates(res, random, t, "reference")
            else:
                _add_rates(res, random if key == "headrace_random" else sequential, t, "headrace")
        delivered = "; ".join(f"{t.name} {t.tokens[0]:,}" for t in windows.values())
        res.notes.append(
            f"Windows: a nanoGPT .bin of {args.bin_actual:,} uint16 tokens (the tokenized corpus repeated), in the "
            f"page cache; tokens/s counts input_ids delivered: {delivered}. nanoGPT draws one pass worth of random "
            "batches; headrace's window reads the file once, in non-overlapping windows (labels shifted by 1)."
        )
    for key, why in failed.items():
        res.notes.append(f"{key} failed and was dropped: {why[-500:]}")
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rows", type=int, default=None, help="paragraphs of text (default all 139,128)")
    p.add_argument("--bin-tokens", type=int, default=None, help="tokens of the nanoGPT .bin (default 100M)")
    p.add_argument("--workers", default="0,2", help="headrace num_workers values for part 1 (comma-separated)")
    p.add_argument("--workers-prepare", type=int, default=2, help="headrace prepare --workers")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions, median reported (default 5)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run in under a minute")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="where generated data goes")
    p.add_argument("--skip", choices=["pack", "window", "prepare"], action="append", default=[], help="skip a part")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON results to this file")
    p.add_argument("--suite-out", type=Path, default=None, help="also write the suite's result DIR/text.json")
    args = p.parse_args(argv)
    args.rows = args.rows or (10_000 if args.quick else None)
    args.bin_tokens = args.bin_tokens or (10_000_000 if args.quick else 100_000_000)
    args.repeat = args.repeat or (1 if args.quick else 5)
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    return args


def prepare_json(whole: Timing, prep: Prepare, tokenizer: Timing) -> dict[str, Any]:
    """``headrace prepare``'s part of the JSON line: its rates, alone and against the tokenizer alone."""
    info: dict[str, Any] = {
        "measured": True,
        "tokens": whole.tokens[0],
        "tokens_per_s": round(whole.tokens_per_s),
        "run_tokens_per_s": round(whole.tokens[0] / statistics.median(prep.run_seconds)),
        "seconds": [round(s, 3) for s in whole.seconds],
        "run_seconds": prep.run_seconds,
        "tokens_per_cpu_s": round(whole.tokens_per_cpu_s),
        "cpu_ratio_vs_tokenizer": round(whole.tokens_per_cpu_s / tokenizer.tokens_per_cpu_s, 3),
    }
    info["ratio_vs_tokenizer"] = round(info["tokens_per_s"] / tokenizer.tokens_per_s, 3)
    info["run_ratio_vs_tokenizer"] = round(info["run_tokens_per_s"] / tokenizer.tokens_per_s, 3)
    return info


def pack_json(packed: dict[str, Timing]) -> dict[str, Any]:
    """Part 1 in the JSON line: every contender's rates, against HF and the tokenizer alone, and raw timings."""
    return {
        "tokens_per_s": {k: round(v.tokens_per_s) for k, v in packed.items()},
        "ratio_vs_hf": {
            k: round(v.tokens_per_s / packed["hf"].tokens_per_s, 3) for k, v in packed.items() if "hf" in packed
        },
        "ratio_vs_tokenizer": {
            k: round(v.tokens_per_s / packed["tokenizer"].tokens_per_s, 3) for k, v in packed.items()
        },
        "tokens_per_cpu_s": {k: round(v.tokens_per_cpu_s) for k, v in packed.items()},
        "tokens": {k: v.tokens[0] for k, v in packed.items()},
        "seconds": {k: [round(s, 3) for s in v.seconds] for k, v in packed.items()},
        "cpu_seconds": {k: [round(s, 3) for s in v.cpu_seconds] for k, v in packed.items()},
    }


def window_json(windows: dict[str, Timing]) -> dict[str, Any]:
    """Part 2 in the JSON line: every reader's rates, against nanoGPT's ``get_batch``, and raw timings."""
    return {
        "tokens_per_s": {k: round(v.tokens_per_s) for k, v in windows.items()},
        "ratio_vs_nanogpt": {k: round(v.tokens_per_s / windows["nanogpt"].tokens_per_s, 3) for k, v in windows.items()},
        "tokens_per_cpu_s": {k: round(v.tokens_per_cpu_s) for k, v in windows.items()},
        "seconds": {k: [round(s, 3) for s in v.seconds] for k, v in windows.items()},
        "cpu_seconds": {k: [round(s, 3) for s in v.cpu_seconds] for k, v in windows.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    title = "headrace text benchmark: the token pipeline vs HF datasets, the tokenizer alone and nanoGPT"
    results = report_header(title, suite.script_machine("tokenizers", "transformers"), args)
    t_start = time.perf_counter()
    suite_machine = suite.machine()  # the suite's machine record, with the load when the run started
    files = build_parquet(args.data_dir, args.rows)
    tok_path = build_tokenizer(args.data_dir)
    warm_page_cache(files)
    rows = sum(pq.read_metadata(p).num_rows for p in files)
    mb = sum(p.stat().st_size for p in files) / 1e6
    notes = [
        f"Data: {rows:,} real paragraphs (tests/corpora.py) in {len(files)} Parquet files ({mb:,.0f} MB, row groups "
        f"of 10,000), in the page cache; one tokenizer for all (byte-level BPE, vocabulary {VOCAB:,}, trained on the "
        f"corpus), {EOS} after every document; repetitions: {args.repeat}, interleaved, the first rotating."
    ]
    all_failed: dict[str, str] = {}
    whole: Timing | None = None
    packed: dict[str, Timing] = {}
    prep: Prepare | None = None
    prep_info: dict[str, Any] = {"measured": False}
    if "prepare" not in args.skip:
        ok, help_text = prepare_available()
        if ok:
            prep = Prepare(files, tok_path, args.workers_prepare)
        else:
            prep_info["why"] = help_text.splitlines()[-1] if help_text else "headrace prepare: no output"
            print(f"\n[3] headrace prepare is not available, not measured: {prep_info['why']}", flush=True)
            notes.append(f"headrace prepare not measured: {prep_info['why']}")
    if "pack" not in args.skip or prep is not None:
        print(f"\n[1] tokenize -> pack: {args.rows or 'all'} paragraphs in {len(files)} Parquet files", flush=True)
        variants = pack_variants(files, tok_path, args.workers)
        if "pack" in args.skip:
            variants = variants[:1]  # the tokenizer alone, the reference of part 3
        if prep is not None:
            variants.append(("prepare", f"headrace prepare --workers {args.workers_prepare}", prep))
        warm_up(variants, optional=frozenset({"prepare"}))
        packed, failed = interleaved(variants, args.repeat, optional=frozenset({"prepare"}))
        all_failed.update(failed)
        for t in packed.values():  # rates over the same work: the corpus' tokens, EOS included
            t.basis = packed["tokenizer"].tokens[0]
        whole = packed.pop("prepare", None)
        if prep is not None and whole is None:
            prep_info["why"] = f"headrace prepare failed: {failed.get('prepare', '?')}"
        elif prep is not None and whole is not None:
            prep_info = prepare_json(whole, prep, packed["tokenizer"])
        results["pack"] = pack_json(packed)
    if "prepare" not in args.skip:
        results["prepare"] = prep_info
    windows: dict[str, Timing] = {}
    if "window" not in args.skip:
        bin_path, num_tokens = build_bin(args.data_dir, files, tok_path, args.bin_tokens)
        warm_page_cache([bin_path])
        args.bin_actual = num_tokens
        print(f"\n[2] windows: {bin_path} ({num_tokens:,} uint16 tokens)", flush=True)
        windows, failed = interleaved(
            window_variants(bin_path, num_tokens), args.repeat, optional=frozenset({"headrace_random"})
        )
        results["window"] = {"bin_tokens": num_tokens, **window_json(windows), "failed": failed}
        all_failed.update(failed)
    results["load_after"] = round(os.getloadavg()[0], 2)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    print_summary(packed, windows, prep_info if "prepare" not in args.skip else None, args)
    result = suite_result(packed, whole, prep, windows, all_failed, args, notes, suite_machine)
    write_suite(result, args, t_start)
    return report_json(results, args)


if __name__ == "__main__":
    sys.exit(main())
