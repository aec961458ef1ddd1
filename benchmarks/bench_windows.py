"""Pre-tokenized windows for causal-LM training: headrace against nanoGPT, litdata and MosaicML ``streaming``.

Same run, same tokens, same machine. The real paragraphs of ``corpora/`` (``tests/corpora.py``;
10,000 of them spread over the corpus with ``--quick``) are tokenized once with the byte-level BPE of
``bench_text.py`` (16,384 ids, ``<|endoftext|>`` after every document) and written as a nanoGPT
``.bin`` (flat uint16), the corpus repeated to 50M tokens (2M with ``--quick``). From that one token
stream every peer's format is written **with the peer's own tool**, as ``2049``-token blocks (a window
of 2048 and its 1-token label shift), so that every reader delivers the same windows:

- **litdata**: ``litdata.optimize(fn, inputs, chunk_size=2049 * 8012, item_loader=TokensLoader())`` as its
  README does for LLM pre-training (``fn`` yields the 2049-token blocks in order, one worker, so the
  chunks keep the stream's order); read with ``StreamingDataset(dir, item_loader=TokensLoader(block_size=
  2049), shuffle=False | True, seed=0)`` + ``StreamingDataLoader(batch_size=16, num_workers=0)``.
- **MosaicML streaming**: ``MDSWriter(columns={"tokens": "ndarray:uint16:2049"})`` (its defaults: 64 MB
  shards, no compression); read with ``StreamingDataset(local=dir, shuffle=False | True, shuffle_seed=0,
  batch_size=16)`` + its ``StreamingDataLoader(batch_size=16, num_workers=0)``.
- **headrace** reads the nanoGPT ``.bin`` as it is: ``hr.open(bin).window(2048, stride=2049, shift=1)
  .batch(16)`` in a ``Loader`` (``num_workers`` 0 and 2; ``stride=2049`` makes its windows the peers'
  blocks), shuffled with the global order ``.shuffle(seed=0, buffer_size=None)`` before ``window`` (windows
  addressed by index, permuted over the epoch), and nanoGPT-style random offsets with its random-access
  reader ``TokenShards(bin).windows(starts, 2049)``.
- **References** (the floor of overhead): sequential, numpy slices of a ``memmap`` of the ``.bin`` viewed as
  ``[n, 2049]``; shuffled, nanoGPT's ``get_batch`` exactly as in its ``train.py`` (the memmap re-opened
  every batch, 16 ``torch.randint`` offsets, ``torch.stack`` of ``from_numpy(...astype(int64))``).

Every contender ends each step with what a training step takes: ``x`` and ``y``, contiguous int64 torch
tensors ``[16, 2048]`` (litdata and MosaicML deliver uint16 ``[16, 2049]`` tensors, cut and cast as litgpt does,
``batch[:, :-1].contiguous().long()``; headrace delivers int32 ``input_ids``/``labels``, cast with ``.long()``).

Metrics, per contender and repetition: **tokens/s** (tokens of ``x`` over a fixed number of batches, 300, or
30 with ``--quick``, timed after the first batch), **seconds to the first batch** (from building the dataset
object, imports excluded, to the first ``(x, y)``) and **tokens per CPU-second** (all threads; it moves much
less with other load than wall time). Repetitions are interleaved (A B C ... A B C ..., the first contender
rotating); medians are reported. The files are read once before timing (warm page cache).

Checks, so that the comparison is fair: before timing, each contender runs once untimed over as many batches
as a timed run and **every window** is checked: shape ``[16, 2048]``, int64, ``y`` is ``x`` shifted by one,
and its 2049 tokens are really a block of the ``.bin`` (found by content, compared exactly; the random-offset
readers at the offsets they drew). Sequential readers must deliver blocks 0, 1, 2, ... in order (the first
window is the file's first 2049 tokens); shuffled ones distinct blocks, not in file order. Each timed run's last
batch must equal the checked run's (the orders are seeded). A peer that fails or is missing is recorded in the
notes and the run goes on.

Run: ``.venv/bin/python benchmarks/bench_windows.py [--quick] [--suite-out DIR]``. Data goes into ``.bench/``
once and is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

import headrace as hr
from headrace.formats.tokens import TokenShards

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from peers import mds_samples, mosaic, peer_data  # noqa: E402
from suite import (  # noqa: E402
    DATA_VERSION,
    Result,
    build_once,
    build_tokenizer,
    corpus_table,
    eos_id,
    warm_page_cache,
)
from suite import cpu_time as _cpu_time  # noqa: E402

NAME = "windows"
SEQ_LEN = 2048
BLOCK = SEQ_LEN + 1  # a window and its 1-token label shift
BATCH = 16
LITDATA_CHUNK_TOKENS = BLOCK * 8012  # litdata's README (LLM pre-training): chunk_size=(2049 * 8012)
SEQUENTIAL = f"sequential windows, {BATCH}x{SEQ_LEN} (+1 label shift)"
SHUFFLED = f"shuffled windows, {BATCH}x{SEQ_LEN} (+1 label shift)"

Batch = tuple[torch.Tensor, torch.Tensor, np.ndarray | None]  # x, y, the token offsets if the reader drew them
Batches = Generator[Batch, None, None]
Open = Callable[[], Batches]


@dataclass
class Contender:
    key: str
    name: str
    case: str
    role: str
    open: Open  # a fresh generator: builds the dataset when first advanced, cleans up when closed
    order: str  # "sequential": blocks 0, 1, 2, ...; "shuffled": distinct blocks; "random": offsets it reports
    note: str = ""
    first_s: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    tokens_per_cpu_s: list[float] = field(default_factory=list)
    expect_last: tuple[torch.Tensor, torch.Tensor] | None = None


# -- data ---------------------------------------------------------------------------------------------
def cpu_time() -> float:
    """CPU seconds of this process (its children, such as litdata's workers, are not counted)."""
    return _cpu_time(children=False)


def build_bin(root: Path, rows: int | None, min_tokens: int) -> Path:
    """The tokenized corpus (EOS after each document) as a nanoGPT ``.bin``, repeated to ``min_tokens``; reused."""
    tok_path = build_tokenizer(root)
    folder = root / f"windows-nanogpt-{rows or 'all'}r-{min_tokens}"
    spec = {"rows": rows, "min_tokens": min_tokens, "tokenizer": str(tok_path), "version": DATA_VERSION}

    def write(tmp: Path) -> dict[str, Any]:
        tok = Tokenizer.from_file(str(tok_path))
        eos = eos_id(tok)
        texts = corpus_table(rows)["text"].to_pylist()
        pieces: list[np.ndarray] = []
        for lo in range(0, len(texts), 1000):
            for e in tok.encode_batch_fast(texts[lo : lo + 1000], add_special_tokens=False):
                pieces.append(np.array([*e.ids, eos], dtype=np.uint16))
        once = np.concatenate(pieces)
        with (tmp / "train.bin").open("wb") as f:
            for _ in range(-(-min_tokens // len(once))):
                once.tofile(f)
        return {"tokens_once": len(once)}

    build_once(folder, spec, write, "the token file (the corpus' tokens, repeated)")
    return folder / "train.bin"


def blocks_of(bin_path: Path) -> np.ndarray:
    """The ``.bin`` as ``[n, 2049]`` blocks (a read-only view of a memmap; the last partial block left out)."""
    data = np.memmap(bin_path, dtype=np.uint16, mode="r")
    n = len(data) // BLOCK
    return data[: n * BLOCK].reshape(n, BLOCK)


def _spec_of(bin_path: Path, **extra: Any) -> dict[str, Any]:
    st = bin_path.stat()
    return {"bin": str(bin_path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "version": DATA_VERSION, **extra}


def _litdata_items(lo: int, bin_path: str, per: int) -> Iterator[np.ndarray]:
    """litdata ``optimize`` fn: blocks ``lo .. lo + per`` of the ``.bin``, one 2049-token array each."""
    blocks = blocks_of(Path(bin_path))
    for k in range(lo, min(lo + per, len(blocks))):
        yield np.array(blocks[k])


def build_litdata(bin_path: Path) -> Path:
    """The blocks written by ``litdata.optimize(..., item_loader=TokensLoader())``; reused."""
    import litdata

    folder = bin_path.parent.with_name(bin_path.parent.name + "-litdata")
    spec = _spec_of(bin_path, chunk_size=LITDATA_CHUNK_TOKENS, litdata=litdata.__version__)

    def write(tmp: Path) -> None:
        per = 1024
        n = len(blocks_of(bin_path))
        # one worker: litdata splits the inputs between workers, each writing its own chunks; one keeps the order
        with contextlib.redirect_stdout(io.StringIO()):
            litdata.optimize(
                fn=partial(_litdata_items, bin_path=str(bin_path), per=per),
                inputs=list(range(0, n, per)),
                output_dir=str(tmp),
                chunk_size=LITDATA_CHUNK_TOKENS,
                item_loader=litdata.TokensLoader(),
                num_workers=1,
                verbose=False,
            )

    build_once(folder, spec, write, "litdata token chunks")
    return folder


def build_mds(bin_path: Path) -> Path:
    """The blocks written by ``streaming.MDSWriter`` as ``ndarray:uint16:2049`` samples (its defaults); reused."""
    ms = mosaic()
    if ms is None:
        raise RuntimeError("mosaicml-streaming is not installed")
    folder = bin_path.parent.with_name(bin_path.parent.name + "-mds")
    columns = {"tokens": f"ndarray:uint16:{BLOCK}"}
    spec = _spec_of(bin_path, columns=columns, streaming=ms.__version__)

    def write(tmp: Path) -> None:
        blocks = blocks_of(bin_path)
        mds_samples(tmp, [({"tokens": np.array(blocks[k])} for k in range(len(blocks)))], columns)

    build_once(folder, spec, write, "MDS token shards")
    return folder


# -- the contenders -----------------------------------------------------------------------------------
def _cut(block: torch.Tensor) -> Batch:
    """A ``[16, 2049]`` uint16 batch as litgpt cuts it: ``x``, ``y`` contiguous int64."""
    return block[:, :-1].contiguous().long(), block[:, 1:].contiguous().long(), None


def memmap_sequential(bin_path: Path) -> Batches:
    """Reference: numpy slices of the ``.bin``'s memmap viewed as ``[n, 2049]``, 16 rows at a time."""
    blocks = blocks_of(bin_path)
    for lo in range(0, len(blocks) - BATCH + 1, BATCH):
        b = blocks[lo : lo + BATCH]
        yield torch.from_numpy(b[:, :-1].astype(np.int64)), torch.from_numpy(b[:, 1:].astype(np.int64)), None


def nanogpt_get_batch(bin_path: Path) -> Batches:
    """Reference: nanoGPT ``train.py``'s ``get_batch('train')`` on CPU, the memmap re-opened every batch."""
    gen = torch.Generator().manual_seed(0)
    while True:
        data = np.memmap(bin_path, dtype=np.uint16, mode="r")  # nanoGPT: recreated every batch to avoid a leak
        ix = torch.randint(len(data) - SEQ_LEN, (BATCH,), generator=gen)
        x = torch.stack([torch.from_numpy(data[i : i + SEQ_LEN].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + SEQ_LEN].astype(np.int64)) for i in ix])
        yield x, y, ix.numpy()


def headrace_loader(bin_path: Path, shuffle: bool, num_workers: int) -> Batches:
    ds = hr.open(str(bin_path))
    if shuffle:
        ds = ds.shuffle(seed=0, buffer_size=None)  # the global order: windows addressed by index
    ds = ds.window(SEQ_LEN, stride=BLOCK, shift=1).batch(BATCH)
    it = iter(hr.Loader(ds, num_workers=num_workers))
    try:
        for b in it:
            yield torch.from_numpy(b["input_ids"]).long(), torch.from_numpy(b["labels"]).long(), None
    finally:
        it.close()


def headrace_random(bin_path: Path) -> Batches:
    """headrace's random-access reader, nanoGPT-style: 16 random offsets, one ``windows`` call per batch."""
    shards = TokenShards(str(bin_path))
    rng = np.random.default_rng(0)
    try:
        while True:
            ix = rng.integers(shards.num_tokens - BLOCK + 1, size=BATCH)
            w = shards.windows(ix, BLOCK)
            yield torch.from_numpy(w[:, :-1].astype(np.int64)), torch.from_numpy(w[:, 1:].astype(np.int64)), ix
    finally:
        shards.close()


def litdata_loader(folder: Path, shuffle: bool) -> Batches:
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    ds = StreamingDataset(str(folder), item_loader=TokensLoader(block_size=BLOCK), shuffle=shuffle, seed=0)
    loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)
    it = iter(loader)
    try:
        for b in it:
            yield _cut(b)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        reader = getattr(getattr(ds, "cache", None), "_reader", None)
        thread = getattr(reader, "_prepare_thread", None)
        if thread is not None:  # stop its chunk-preparing thread now, not at garbage collection
            with contextlib.suppress(Exception):
                thread.force_stop()
                thread.join(timeout=5)


def mosaic_loader(folder: Path, shuffle: bool) -> Batches:
    ms = mosaic()
    assert ms is not None
    ds = ms.StreamingDataset(local=str(folder), shuffle=shuffle, shuffle_seed=0, batch_size=BATCH)
    loader = ms.StreamingDataLoader(ds, batch_size=BATCH, num_workers=0)
    it = iter(loader)
    try:
        for b in it:
            yield _cut(b["tokens"])
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        if hasattr(ds, "_iterator"):
            ds._iterator.exit()  # stop its download/ready threads now rather than at garbage collection


def contenders(bin_path: Path, litdata_dir: Path | None, mds_dir: Path | None, workers: list[int]) -> list[Contender]:
    out = [
        Contender("memmap", "numpy memmap slices", SEQUENTIAL, "reference", partial(memmap_sequential, bin_path),
                  "sequential", "the floor: x, y = blocks[k:k+16] cut and cast, no loader"),
    ]  # fmt: skip
    for w in workers:
        out.append(Contender(f"headrace_w{w}", f"headrace num_workers={w}", SEQUENTIAL, "headrace",
                             partial(headrace_loader, bin_path, False, w), "sequential",
                             "hr.open(bin).window(2048, stride=2049, shift=1).batch(16)"))  # fmt: skip
    if litdata_dir is not None:
        out.append(Contender("litdata", "litdata TokensLoader", SEQUENTIAL, "peer",
                             partial(litdata_loader, litdata_dir, False), "sequential"))  # fmt: skip
    if mds_dir is not None:
        out.append(Contender("mosaic", "MosaicML streaming (MDS)", SEQUENTIAL, "peer",
                             partial(mosaic_loader, mds_dir, False), "sequential"))  # fmt: skip
    out.append(Contender("nanogpt", "nanoGPT get_batch (memmap)", SHUFFLED, "reference",
                         partial(nanogpt_get_batch, bin_path), "random",
                         "random offsets, memmap re-opened every batch as in nanoGPT's train.py"))  # fmt: skip
    for w in workers:
        out.append(Contender(f"headrace_global_w{w}", f"headrace global order, num_workers={w}", SHUFFLED,
                             "headrace", partial(headrace_loader, bin_path, True, w), "shuffled",
                             "hr.open(bin).shuffle(seed=0, buffer_size=None).window(2048, stride=2049, shift=1)"
                             ".batch(16)"))  # fmt: skip
    out.append(Contender("headrace_random", "headrace TokenShards, random offsets", SHUFFLED, "headrace",
                         partial(headrace_random, bin_path), "random",
                         "TokenShards(bin).windows(16 random starts, 2049): nanoGPT's get_batch"))  # fmt: skip
    if litdata_dir is not None:
        out.append(Contender("litdata_shuffle", "litdata TokensLoader, shuffle=True", SHUFFLED, "peer",
                             partial(litdata_loader, litdata_dir, True), "shuffled"))  # fmt: skip
    if mds_dir is not None:
        out.append(Contender("mosaic_shuffle", "MosaicML streaming (MDS), shuffle=True", SHUFFLED, "peer",
                             partial(mosaic_loader, mds_dir, True), "shuffled"))  # fmt: skip
    return out


# -- checks -------------------------------------------------------------------------------------------
class Blocks:
    """The ``.bin``'s blocks, found by content: ``index(row)`` is the block a 2049-token row is, or -1."""

    def __init__(self, bin_path: Path) -> None:
        self.data = np.memmap(bin_path, dtype=np.uint16, mode="r")
        self.blocks = blocks_of(bin_path)
        self.by_hash: dict[int, list[int]] = {}
        for k in range(len(self.blocks)):
            self.by_hash.setdefault(hash(self.blocks[k].tobytes()), []).append(k)
        self.unique = sum(len(v) == 1 for v in self.by_hash.values())
        self.duplicated = len(self.blocks) - self.unique

    def index(self, row: np.ndarray) -> int:
        for k in self.by_hash.get(hash(row.tobytes()), []):
            if np.array_equal(self.blocks[k], row):
                return k
        return -1


def check(c: Contender, blocks: Blocks, batches: int) -> str:
    """Run ``c`` once, untimed, over a timed run's batches and check every window; what was checked."""
    found: list[int] = []
    it = c.open()
    x = y = torch.empty(0)
    try:
        for step in range(batches + 1):
            try:
                x, y, starts = next(it)
            except StopIteration:
                raise AssertionError(f"{c.key}: ended after {step} batches, {batches + 1} needed") from None
            if x.shape != (BATCH, SEQ_LEN) or y.shape != (BATCH, SEQ_LEN):
                raise AssertionError(f"{c.key}: batch {step} has shapes {tuple(x.shape)}, {tuple(y.shape)}")
            if x.dtype != torch.int64 or y.dtype != torch.int64 or not (x.is_contiguous() and y.is_contiguous()):
                raise AssertionError(f"{c.key}: batch {step} is {x.dtype}/{y.dtype}, not contiguous int64")
            if not torch.equal(x[:, 1:], y[:, :-1]):
                raise AssertionError(f"{c.key}: batch {step}: labels are not the inputs shifted by one")
            rows = torch.cat([x, y[:, -1:]], dim=1).numpy().astype(np.uint16)
            if c.order == "random":
                assert starts is not None
                for r, s in zip(rows, starts.tolist(), strict=True):
                    if not np.array_equal(r, blocks.data[s : s + BLOCK]):
                        raise AssertionError(f"{c.key}: batch {step}: a window is not the file's tokens at {s}")
                found.extend(int(s) for s in starts)
                continue
            for r in rows:
                k = blocks.index(r)
                if k < 0:
                    raise AssertionError(f"{c.key}: batch {step}: a window is no 2049-token block of the file")
                found.append(k)
    finally:
        it.close()
    c.expect_last = (x, y)
    n = len(found)
    if c.order == "sequential":
        if found != list(range(n)):
            bad = next(i for i, k in enumerate(found) if k != i)
            raise AssertionError(f"{c.key}: window {bad} is block {found[bad]}, expected block {bad}")
        return f"{n} windows = blocks 0..{n - 1} of the file, in order"
    if c.order == "shuffled":
        distinct = len(set(found))
        if distinct < n and blocks.duplicated == 0:
            raise AssertionError(f"{c.key}: {n - distinct} windows repeated within one epoch")
        if found == sorted(found):
            raise AssertionError(f"{c.key}: the 'shuffled' windows come in file order")
        return f"{n} windows, all blocks of the file, {distinct} distinct, not in file order"
    return f"{n} windows equal to the file's tokens at the offsets drawn"


# -- timing -------------------------------------------------------------------------------------------
def timed(c: Contender, batches: int) -> tuple[float, float, float]:
    """One repetition: seconds to the first batch, then tokens/s and tokens/CPU-s over ``batches`` more."""
    gc.collect()
    t0 = time.perf_counter()
    it = c.open()
    try:
        next(it)
        t1, c1 = time.perf_counter(), cpu_time()
        n = 0
        x = y = torch.empty(0)
        for _ in range(batches):
            x, y, _starts = next(it)
            n += x.numel()
        t2, c2 = time.perf_counter(), cpu_time()
    finally:
        it.close()
    if c.expect_last is not None and not (torch.equal(x, c.expect_last[0]) and torch.equal(y, c.expect_last[1])):
        raise AssertionError(f"{c.key}: the last batch differs from the checked run's (an unseeded order?)")
    return t1 - t0, n / (t2 - t1), n / max(c2 - c1, 1e-9)


def interleaved(cs: list[Contender], repeat: int, batches: int, failed: dict[str, str]) -> None:
    for rep in range(repeat):
        shift = rep % len(cs)
        for c in cs[shift:] + cs[:shift]:
            if c.key in failed:
                continue
            try:
                first, rate, cpu_rate = timed(c, batches)
            except Exception as e:
                if c.role == "headrace":
                    raise
                failed[c.key] = f"{type(e).__name__}: {e}"[-1500:]
                print(f"  {c.key} failed, dropped: {failed[c.key]}", flush=True)
                continue
            c.first_s.append(first)
            c.tokens_per_s.append(rate)
            c.tokens_per_cpu_s.append(cpu_rate)
        done = [c for c in cs if c.key not in failed and c.tokens_per_s]
        print(
            f"  repetition {rep + 1}/{repeat}: " + ", ".join(f"{c.key} {c.tokens_per_s[-1] / 1e6:.0f}M" for c in done),
            flush=True,
        )


# -- report -------------------------------------------------------------------------------------------
def print_table(cs: list[Contender], args: argparse.Namespace) -> None:
    print("\n" + "=" * 108)
    for case in (SEQUENTIAL, SHUFFLED):
        rows = [c for c in cs if c.case == case and c.tokens_per_s]
        if not rows:
            continue
        ref = next((c for c in rows if c.role == "reference"), rows[0])
        print(f"{case}: tokens/s over {args.batches} batches after the first; median of {args.repeat}")
        print(
            f"  {'contender':<44}{'tokens/s':>14}{'vs ' + ref.key:>12}{'tok/CPU-s':>14}{'vs ' + ref.key:>12}"
            f"{'1st batch s':>13}"
        )
        r_rate, r_cpu = statistics.median(ref.tokens_per_s), statistics.median(ref.tokens_per_cpu_s)
        for c in rows:
            rate, cpu = statistics.median(c.tokens_per_s), statistics.median(c.tokens_per_cpu_s)
            print(
                f"  {c.name:<44}{rate:>14,.0f}{rate / r_rate:>11.2f}x{cpu:>14,.0f}{cpu / r_cpu:>11.2f}x"
                f"{statistics.median(c.first_s):>13.4f}"
            )
        print()
    print("=" * 108)


def plot(cs: list[Contender], folder: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    colors = {"headrace": "tab:blue", "peer": "tab:orange", "reference": "tab:gray"}
    for ax, case in zip(axes, (SEQUENTIAL, SHUFFLED), strict=True):
        rows = [c for c in cs if c.case == case and c.tokens_per_s]
        med = [statistics.median(c.tokens_per_s) / 1e6 for c in rows]
        lo = [m - min(c.tokens_per_s) / 1e6 for m, c in zip(med, rows, strict=True)]
        hi = [max(c.tokens_per_s) / 1e6 - m for m, c in zip(med, rows, strict=True)]
        ax.barh([c.name for c in rows], med, xerr=[lo, hi], color=[colors[c.role] for c in rows])
        ax.invert_yaxis()
        ax.set_xscale("log")  # the references and MosaicML are 10-100x apart
        ax.set_xlabel("million tokens/s, log scale (median, min-max)")
        ax.set_title(case, fontsize=10)
    fig.tight_layout()
    name = "windows.png"
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    return name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: the whole script in about a minute")
    p.add_argument("--suite-out", type=Path, default=None, help=f"write DIR/{NAME}.json (benchmarks/suite.py)")
    p.add_argument("--tokens", type=int, default=None, help="tokens of the .bin (default 50M, 2M with --quick)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per run (default 300, 30 with --quick)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 5, 2 with --quick)")
    p.add_argument("--workers", default="0,2", help="headrace num_workers values (comma-separated)")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="where generated data goes")
    args = p.parse_args(argv)
    args.rows = 10_000 if args.quick else None
    args.tokens = args.tokens or (2_000_000 if args.quick else 50_000_000)
    args.batches = args.batches or (30 if args.quick else 300)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # MosaicML's collate
    t_start = time.perf_counter()
    result = Result(NAME, "Pre-tokenized windows: headrace vs nanoGPT memmap, litdata TokensLoader, MosaicML MDS",
                    args.quick)  # fmt: skip
    print(result.title)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in result.machine.items() if k != "versions"), flush=True)
    bin_path = build_bin(args.data_dir, args.rows, args.tokens)
    failed: dict[str, str] = {}
    litdata_dir = peer_data(lambda: build_litdata(bin_path), failed, ("litdata", "litdata_shuffle"),
                            "writing with litdata.optimize")  # fmt: skip
    mds_dir = peer_data(lambda: build_mds(bin_path), failed, ("mosaic", "mosaic_shuffle"), "writing with MDSWriter")
    blocks = Blocks(bin_path)
    need = (args.batches + 1) * BATCH
    if len(blocks.blocks) < need:
        raise SystemExit(f"{bin_path} holds {len(blocks.blocks)} blocks of {BLOCK}; {need} needed: raise --tokens")
    for folder in [bin_path.parent, litdata_dir, mds_dir]:
        if folder is not None:
            warm_page_cache(sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".mds")))
    ntok = len(blocks.data)
    print(
        f"\ndata: {bin_path} ({ntok:,} uint16 tokens, {len(blocks.blocks):,} blocks of {BLOCK}, "
        f"{blocks.duplicated} duplicated); litdata: {litdata_dir}; MDS: {mds_dir}",
        flush=True,
    )
    result.notes.append(
        f"Data: the real corpus ({'10,000 paragraphs' if args.quick else 'all paragraphs'}) tokenized once with a "
        f"16k byte-level BPE (EOS after each document), repeated to {ntok:,} tokens = {len(blocks.blocks):,} blocks "
        f"of {BLOCK}; nanoGPT .bin for headrace and the references, litdata.optimize(TokensLoader, chunk_size="
        f"{LITDATA_CHUNK_TOKENS}) and MDSWriter(ndarray:uint16:{BLOCK}) for the peers, written with their own tools."
    )
    result.notes.append(
        f"Each run: seconds from building the dataset to the first (x, y); then tokens/s over {args.batches} "
        f"batches of {BATCH}x{SEQ_LEN}, every contender delivering contiguous int64 torch tensors x and y; "
        f"{args.repeat} interleaved repetitions; headrace window stride=2049 so that every sequential reader "
        "delivers the same windows."
    )
    cs = [c for c in contenders(bin_path, litdata_dir, mds_dir, args.workers) if c.key not in failed]
    print(f"\nchecking every window of one untimed run of {args.batches + 1} batches per contender:", flush=True)
    for c in cs:
        try:
            what = check(c, blocks, args.batches)
        except Exception as e:
            if c.role == "headrace":
                raise
            failed[c.key] = f"{type(e).__name__}: {e}"[-1500:]
            print(f"  {c.key}: FAILED, dropped: {failed[c.key]}", flush=True)
            continue
        print(f"  {c.key}: {what}", flush=True)
        result.notes.append(f"Checked {c.name}: {what}.")
    alive = [c for c in cs if c.key not in failed]
    print(f"\ntiming: {len(alive)} contenders x {args.repeat} repetitions, interleaved", flush=True)
    interleaved(alive, args.repeat, args.batches, failed)
    for c in cs:
        if c.key in failed or not c.tokens_per_s:
            continue
        kw = {"role": c.role, "note": c.note}
        result.add(c.case, c.name, "tokens/s", c.tokens_per_s, **kw)
        result.add(c.case, c.name, "tokens/CPU-s", c.tokens_per_cpu_s, **kw)
        result.add(c.case, c.name, "first batch s", c.first_s, higher_is_better=False, **kw)
    for key, why in failed.items():
        result.notes.append(f"{key} not measured: {why}")
    print_table(cs, args)
    result.seconds = round(time.perf_counter() - t_start, 1)
    if args.suite_out is not None:
        args.suite_out.mkdir(parents=True, exist_ok=True)
        name = plot([c for c in cs if c.key not in failed], args.suite_out)
        if name:
            result.plots.append(name)
        path = result.write(args.suite_out)
        print(f"wrote {path}")
    print(json.dumps({c.key: round(statistics.median(c.tokens_per_s)) for c in cs if c.tokens_per_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
