"""The fluent ``Dataset``: an immutable, lazy, picklable description of a pipeline.

Each ``Dataset`` is a parent plus one stage; iterating (or a :class:`~headrace.Loader`) builds a fresh
tree of nodes for one epoch, rank and worker. This is the only module that imports every stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from headrace.core.block import Block
from headrace.core.errors import SchemaError, SourceError
from headrace.core.node import Node
from headrace.core.policy import ErrorLog, check_policy
from headrace.core.rng import DEFAULT_SEED
from headrace.core.state import fingerprint
from headrace.core.world import World
from headrace.formats import format_named, format_of
from headrace.formats.base import ReadOptions, project
from headrace.io.resolve import Shard, fs_for, resolve, split_suffix
from headrace.stages.batch import BatchNode, Pad
from headrace.stages.bestfit import BestFitNode
from headrace.stages.global_source import GlobalSourceNode
from headrace.stages.hf import HFNode, HFSource
from headrace.stages.limit import LimitNode
from headrace.stages.pack import WindowNode
from headrace.stages.partition import REMAINDERS, Remainder
from headrace.stages.repeat import RepeatNode
from headrace.stages.shuffle import ShuffleNode
from headrace.stages.source import Source, SourceNode
from headrace.stages.token_windows import TokenWindowNode, TokenWindows
from headrace.stages.tokenize import tokenize_fn
from headrace.stages.transform import BatchFormat, TransformNode, describe_fn, filter_fn, map_fn
from headrace.tokenizer import Tokenizer, TokenizerError, load_tokenizer


@dataclass(frozen=True)
class Context:
    """What a build needs beyond the description: the world, the epoch, and the execution resources."""

    world: World = field(default_factory=World)
    epoch: int = 0
    remainder: Remainder = "drop"
    pool: Executor | None = None
    depth: int = 1
    start: int = 0  # where a global-order source starts this epoch (an elastic resume)


class Stage:
    """One step of a pipeline description; ``build`` makes its node over the parent's."""

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class SourceStage(Stage):
    source: Source

    @property
    def shard_count(self) -> int:
        return len(self.source.shards)

    def lineage(self, shard: int, row: int) -> str:
        shards = self.source.shards
        return f"{shards[shard].url} (record {row})" if 0 <= shard < len(shards) else "a row made by a batched map"

    def describe(self) -> dict[str, Any]:
        return self.source.describe()

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        if self.source.ordering == "global":
            return GlobalSourceNode(self.source, ctx.world, ctx.epoch, ctx.remainder, ctx.start)
        return SourceNode(self.source, ctx.world, ctx.epoch, ctx.remainder)


@dataclass(frozen=True)
class TokenWindowStage(Stage):
    """The root of ``open(token shards).shuffle(buffer_size=None).window(...)``: windows by index."""

    spec: TokenWindows

    @property
    def shard_count(self) -> int:
        return len(self.spec.shards.urls)

    @property
    def block_rows(self) -> int:
        return self.spec.block_rows

    def lineage(self, shard: int, row: int) -> str:
        urls = self.spec.shards.urls
        return f"{urls[shard]} (window {row})" if 0 <= shard < len(urls) else "a row made by a batched map"

    def describe(self) -> dict[str, Any]:
        return self.spec.describe()

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        return TokenWindowNode(self.spec, ctx.world, ctx.epoch, ctx.remainder, ctx.start)


@dataclass(frozen=True)
class HFStage(Stage):
    """The root of :func:`from_hf`: a Hugging Face ``IterableDataset``."""

    source: HFSource

    @property
    def shard_count(self) -> int:
        return 1

    @property
    def block_rows(self) -> int:
        return self.source.block_rows

    def lineage(self, shard: int, row: int) -> str:
        return f"the Hugging Face dataset (row {row})" if shard == 0 else "a row made by a batched map"

    def describe(self) -> dict[str, Any]:
        return self.source.describe()

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        return HFNode(self.source, ctx.world, ctx.epoch)


@dataclass(frozen=True)
class MixStage(Stage):
    """The root of a mixture: named child pipelines interleaved by weight (see :func:`mix`)."""

    names: tuple[str, ...]
    children: tuple[Dataset, ...]
    weights: tuple[float, ...]
    seed: int
    stop: str
    budgets: tuple[int | None, ...]
    block_rows: int

    @property
    def shard_count(self) -> int:
        return sum(child.shard_count for child in self.children)

    def offsets(self) -> list[int]:
        out, at = [], 0
        for child in self.children:
            out.append(at)
            at += child.shard_count
        return out

    def lineage(self, shard: int, row: int) -> str:
        for name, child, offset in zip(self.names, self.children, self.offsets(), strict=True):
            if offset <= shard < offset + child.shard_count:
                return f"{name}: {child.lineage(shard - offset, row)}"
        return "a row made by a batched map"

    def describe(self) -> dict[str, Any]:
        return {"stage": "mix", "names": list(self.names), "weights": list(self.weights), "seed": self.seed,
                "stop": self.stop, "budgets": list(self.budgets),
                "children": [child.describe() for child in self.children]}  # fmt: skip

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        from headrace.stages.mix import MixNode

        def builder(child: Dataset) -> Callable[[int], Node[Any]]:
            return lambda epoch: child.build(replace(ctx, epoch=epoch))

        return MixNode([builder(c) for c in self.children], names=self.names, weights=self.weights, seed=self.seed,
                       epoch=ctx.epoch, stage=depth, stop=self.stop, shard_offsets=self.offsets(),
                       budgets=self.budgets, block_rows=self.block_rows)  # fmt: skip


@dataclass(frozen=True)
class ShardStage(Stage):
    num_shards: int
    index: int

    def describe(self) -> dict[str, Any]:
        return {"stage": "shard", "num_shards": self.num_shards, "index": self.index}

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        w = ctx.world
        world = World(rank=w.consumer * self.num_shards + self.index, world_size=w.consumers * self.num_shards)
        return parent.build(replace(ctx, world=world))


@dataclass(frozen=True)
class ShuffleStage(Stage):
    seed: int
    buffer_size: int
    block_rows: int

    def describe(self) -> dict[str, Any]:
        return {"stage": "shuffle", "seed": self.seed, "buffer_size": self.buffer_size}

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        return ShuffleNode(parent.build(ctx), seed=self.seed, epoch=ctx.epoch, stage=depth,
                           buffer_size=self.buffer_size, block_rows=self.block_rows)  # fmt: skip


@dataclass(frozen=True)
class MapStage(Stage):
    fn: Callable[[Any], Any]
    kind: str  # "map" | "filter"
    batched: bool
    batch_format: BatchFormat
    remove_columns: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"stage": self.kind, "fn": describe_fn(self.fn), "batched": self.batched,
                "remove_columns": list(self.remove_columns)}  # fmt: skip

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        lineage = parent.lineage
        if self.kind == "map":
            fn = map_fn(self.fn, batched=self.batched, batch_format=self.batch_format,
                        remove_columns=self.remove_columns, lineage=lineage)  # fmt: skip
        else:
            fn = filter_fn(self.fn, batched=self.batched, batch_format=self.batch_format, lineage=lineage)
        return TransformNode(parent.build(ctx), fn, ctx.pool, ctx.depth)


@dataclass(frozen=True)
class LimitStage(Stage):
    skip: int
    take: int
    block_rows: int

    def describe(self) -> dict[str, Any]:
        return {"stage": "limit", "skip": self.skip, "take": self.take}

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        return LimitNode(parent.build(ctx), skip=self.skip, take=self.take, block_rows=self.block_rows)


@dataclass(frozen=True)
class RepeatStage(Stage):
    times: int | None

    def describe(self) -> dict[str, Any]:
        return {"stage": "repeat", "times": self.times}

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        return RepeatNode(lambda rep: parent.build(replace(ctx, epoch=ctx.epoch + rep)), times=self.times)


@dataclass(frozen=True)
class TokenizeStage(Stage):
    tokenizer: Tokenizer
    column: str
    output: str
    bos: int | None
    eos: int | None
    remove_column: bool

    def describe(self) -> dict[str, Any]:
        return {"stage": "tokenize", "tokenizer": self.tokenizer.describe(), "column": self.column,
                "output": self.output, "bos": self.bos, "eos": self.eos}  # fmt: skip

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        fn = tokenize_fn(self.tokenizer, column=self.column, output=self.output, bos=self.bos, eos=self.eos,
                         remove_column=self.remove_column, lineage=parent.lineage)  # fmt: skip
        return TransformNode(parent.build(ctx), fn, ctx.pool, ctx.depth)


@dataclass(frozen=True)
class WindowStage(Stage):
    kind: str  # "pack" | "window"
    seq_len: int
    stride: int
    shift: int | None
    documents: bool
    remainder: str
    pad_id: int
    batch_size: int
    seed: int
    column: str

    def describe(self) -> dict[str, Any]:
        return {"stage": self.kind, "seq_len": self.seq_len, "stride": self.stride, "shift": self.shift,
                "documents": self.documents, "remainder": self.remainder, "pad_id": self.pad_id,
                "batch_size": self.batch_size, "seed": self.seed, "column": self.column}  # fmt: skip

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        return WindowNode(parent.build(ctx), column=self.column, seq_len=self.seq_len, stride=self.stride,
                          shift=self.shift, documents=self.documents, remainder=self.remainder, pad_id=self.pad_id,
                          batch_size=self.batch_size, seed=self.seed, epoch=ctx.epoch, stage=depth)  # fmt: skip


@dataclass(frozen=True)
class BestFitStage(Stage):
    seq_len: int
    pad_id: int
    buffer: int
    column: str

    def describe(self) -> dict[str, Any]:
        return {"stage": "pack", "mode": "bestfit", "seq_len": self.seq_len, "pad_id": self.pad_id,
                "buffer": self.buffer, "column": self.column}  # fmt: skip

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        return BestFitNode(parent.build(ctx), column=self.column, seq_len=self.seq_len, pad_id=self.pad_id,
                           buffer=self.buffer)  # fmt: skip


@dataclass(frozen=True)
class ChatStage(Stage):
    tokenizer: Tokenizer
    template: str | None
    column: str

    def describe(self) -> dict[str, Any]:
        return {"stage": "chat", "tokenizer": self.tokenizer.describe(), "column": self.column,
                "template": fingerprint(self.template or self.tokenizer.chat_template)}  # fmt: skip

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        from headrace.stages.chat import chat_fn

        fn = chat_fn(self.tokenizer, template=self.template, column=self.column, lineage=parent.lineage)
        return TransformNode(parent.build(ctx), fn, ctx.pool, ctx.depth)


@dataclass(frozen=True)
class MaskStage(Stage):
    tokenizer: Tokenizer
    probability: float
    seed: int
    column: str

    def describe(self) -> dict[str, Any]:
        return {"stage": "mask", "tokenizer": self.tokenizer.describe(), "probability": self.probability,
                "seed": self.seed, "column": self.column}  # fmt: skip

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        from headrace.stages.mlm import MaskNode

        return MaskNode(parent.build(ctx), tokenizer=self.tokenizer, probability=self.probability, seed=self.seed,
                        epoch=ctx.epoch, stage=depth, column=self.column)  # fmt: skip


@dataclass(frozen=True)
class BatchStage(Stage):
    size: int
    drop_last: bool
    pad: Pad
    pad_value: Any

    def describe(self) -> dict[str, Any]:
        return {"stage": "batch", "size": self.size, "drop_last": self.drop_last, "pad": self.pad,
                "pad_value": self.pad_value}  # fmt: skip

    def build(self, parent: Dataset, ctx: Context, depth: int) -> Node[Any]:
        return BatchNode(parent.build(ctx), size=self.size, drop_last=self.drop_last, pad=self.pad,
                         pad_value=self.pad_value, lineage=parent.lineage)  # fmt: skip


@dataclass(frozen=True, eq=False)
class Dataset:
    """A lazy pipeline description. Every method returns a new ``Dataset``; nothing is read until iterated.

    >>> import headrace as hr, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = path.write_text("".join(f'{{"id": {i}}}\\n' for i in range(6)))
    >>> path = str(path)
    >>> ds = hr.open(path).map(lambda r: {"id2": r["id"] * 2}).filter(lambda r: r["id"] % 2 == 0)
    >>> [row["id2"] for row in ds]
    [0, 4, 8]
    >>> [b["id"].tolist() for b in hr.open(path).batch(4)]
    [[0, 1, 2, 3], [4, 5]]
    """

    stage: Stage
    parent: Dataset | None = None

    # -- description -------------------------------------------------------------------------------
    @property
    def stages(self) -> list[Stage]:
        chain: list[Stage] = []
        node: Dataset | None = self
        while node is not None:
            chain.append(node.stage)
            node = node.parent
        return chain[::-1]

    @property
    def root(self) -> SourceStage | MixStage | TokenWindowStage | HFStage:
        stage = self.stages[0]
        assert isinstance(stage, SourceStage | MixStage | TokenWindowStage | HFStage)
        return stage

    @property
    def source(self) -> Source:
        """The file source at the root (a mixture has none: see ``root``)."""
        root = self.root
        if not isinstance(root, SourceStage):
            raise ValueError("this dataset is a mixture of several sources; see Dataset.root.children")
        return root.source

    @property
    def block_rows(self) -> int:
        root = self.root
        return root.source.block_rows if isinstance(root, SourceStage) else root.block_rows

    @property
    def shard_count(self) -> int:
        """How many shard ids the rows' lineage can name (all files of all mixed sources)."""
        return self.root.shard_count

    @property
    def schema(self) -> pa.Schema:
        """The columns as read from the source (before any map)."""
        return self.source.schema

    def describe(self) -> list[dict[str, Any]]:
        """The JSON description used for the state fingerprint (no data, no credentials)."""
        return [s.describe() for s in self.stages]

    def elastic(self) -> str | None:
        """None if a checkpoint of this pipeline can resume on another world; else the reason why not."""
        root = self.root
        if isinstance(root, TokenWindowStage):
            pass
        elif not isinstance(root, SourceStage) or root.source.ordering != "global":
            return "its source is not in global order (use shuffle(buffer_size=None) on an indexed source)"
        for stage in self.stages[1:]:
            if isinstance(stage, MapStage) and stage.kind == "map" and not stage.batched:
                continue
            if isinstance(stage, TokenizeStage | BatchStage):
                continue
            return f"its {stage.describe()['stage']} stage can change how many rows each rank consumes"
        if not self.batched:
            return "it has no batch() stage"
        return None

    @property
    def batch_size(self) -> int:
        stage = self.stages[-1]
        return stage.size if isinstance(stage, BatchStage) else 1

    @property
    def batched(self) -> bool:
        return any(isinstance(s, BatchStage) for s in self.stages)

    def lineage(self, shard: int, row: int) -> str:
        """``"file (record r)"`` for a row's lineage (``"name: file (record r)"`` in a mixture)."""
        return self.root.lineage(shard, row)

    def _then(self, stage: Stage) -> Dataset:
        if self.batched and not isinstance(stage, RepeatStage):
            raise ValueError(f"{stage.describe()['stage']}() after batch(): batch() must be the last stage")
        return Dataset(stage, self)

    # -- stages ------------------------------------------------------------------------------------
    def shuffle(
        self,
        seed: int = DEFAULT_SEED,
        buffer_size: int | None = 10_000,
        *,
        window: int = 16,
        chunk_rows: int | None = None,
    ) -> Dataset:
        """Shuffle rows: a window shuffle of ``buffer_size`` rows, or with ``buffer_size=None`` the global order.

        With a buffer, the shard order is permuted per epoch and rows are shuffled within windows of
        ``buffer_size`` rows (any source). ``buffer_size=None`` (indexed sources: Parquet, Arrow, token
        shards; right after ``open``) gives a quasi-global shuffle with bounded memory — chunks (the
        files' row groups, or ``chunk_rows`` rows) permuted over the whole epoch, rows mixed within
        ``window`` chunks — whose
        sample ``i`` is computed without reading the others, and whose checkpoints resume on another
        number of ranks (elastic).
        """
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if buffer_size is None:
            root = self.root
            if len(self.stages) != 1 or not isinstance(root, SourceStage):
                raise ValueError("shuffle(buffer_size=None) orders the source itself: call it right after open()")
            rows = None if chunk_rows is None else _positive(chunk_rows, "chunk_rows")
            src = replace(root.source, ordering="global", shuffle_seed=seed, window=_positive(window, "window"),
                          chunk_rows=rows)  # fmt: skip
            return Dataset(SourceStage(src))
        if buffer_size < 1:
            raise ValueError(f"shuffle(buffer_size=...) must be a positive number of rows or None, got {buffer_size}")
        root = self.root
        if isinstance(root, SourceStage) and root.source.shuffle_seed is None:  # also permute the shard order
            rebuilt = Dataset(SourceStage(replace(root.source, shuffle_seed=seed)))
            for st in self.stages[1:]:
                rebuilt = Dataset(st, rebuilt)
            return rebuilt._then(ShuffleStage(seed, buffer_size, self.block_rows))
        return self._then(ShuffleStage(seed, buffer_size, self.block_rows))

    def map(
        self,
        fn: Callable[[Any], Any],
        *,
        batched: bool = False,
        batch_format: BatchFormat = "numpy",
        remove_columns: Sequence[str] = (),
    ) -> Dataset:
        """Apply ``fn`` to each row (a dict), or with ``batched=True`` to each block (a dict of columns).

        The returned dict updates the row's columns, as in HF ``datasets``; ``remove_columns`` drops
        inputs. A batched function may change the number of rows (its output then stands alone).
        ``batch_format``: ``"numpy"`` arrays, ``"python"`` lists or ``"arrow"`` arrays.
        """
        return self._then(MapStage(fn, "map", batched, _format(batch_format), tuple(remove_columns)))

    def filter(
        self, fn: Callable[[Any], Any], *, batched: bool = False, batch_format: BatchFormat = "numpy"
    ) -> Dataset:
        """Keep the rows for which ``fn(row)`` is true (``batched=True``: ``fn`` returns a boolean mask)."""
        return self._then(MapStage(fn, "filter", batched, _format(batch_format)))

    def take(self, n: int) -> Dataset:
        """The first ``n`` rows of the stream each consumer (rank) sees."""
        return self._then(LimitStage(0, _count(n, "take"), self.block_rows))

    def skip(self, n: int) -> Dataset:
        """All but the first ``n`` rows of the stream each consumer (rank) sees."""
        return self._then(LimitStage(_count(n, "skip"), -1, self.block_rows))

    def repeat(self, times: int | None = None) -> Dataset:
        """Run the pipeline again for the following epochs (``None``: forever)."""
        if times is not None and times < 1:
            raise ValueError(f"repeat(times) needs times >= 1 or None, got {times}")
        return Dataset(RepeatStage(times), self)

    def tokenize(
        self,
        tokenizer: Any,
        *,
        column: str = "text",
        output: str = "input_ids",
        add_bos: bool = False,
        add_eos: bool = True,
        bos_id: int | None = None,
        eos_id: int | None = None,
        remove_column: bool = True,
    ) -> Dataset:
        """Tokenize ``column`` into ``output`` (a list of ids per row), in the tokenizer's native batch encoder.

        ``tokenizer``: a ``tokenizers.Tokenizer``, a ``transformers`` fast tokenizer, a ``tiktoken``
        encoding, a path to a ``tokenizer.json`` (or its folder), or ``"tiktoken:NAME"``. ``add_eos``
        appends the end-of-text id (``eos_id`` overrides the tokenizer's), ``add_bos`` prepends BOS.
        """
        tok = load_tokenizer(tokenizer)
        bos = (bos_id if bos_id is not None else tok.bos_id) if add_bos else None
        eos = (eos_id if eos_id is not None else tok.eos_id) if add_eos else None
        if add_bos and bos is None:
            raise TokenizerError(f"{tok.name}: no BOS token known; pass bos_id= or add_bos=False")
        if add_eos and eos is None:
            raise TokenizerError(f"{tok.name}: no EOS token known; pass eos_id= or add_eos=False")
        return self._then(TokenizeStage(tok, column, output, bos, eos, remove_column))

    def pack(
        self,
        seq_len: int,
        *,
        mode: str = "concat",
        remainder: str = "drop",
        pad_id: int = 0,
        buffer: int = 1000,
        column: str = "input_ids",
    ) -> Dataset:
        """Fixed-length sequences from tokenized documents.

        ``mode="concat"``: documents end to end, cut every ``seq_len`` tokens (HF ``group_texts``);
        ``"document"``: the same plus ``position_ids`` reset per document, ``segment_ids`` and
        ``cu_seqlens`` for document-masked attention; ``"bestfit"``: whole documents packed best-fit
        into padded rows (fine-tuning), from windows of ``buffer`` documents. ``remainder``: the final
        partial sequence is dropped or padded with ``pad_id`` (``attention_mask`` marks real tokens).
        """
        _positive(seq_len, "seq_len")
        if mode == "bestfit":
            return self._then(BestFitStage(seq_len, pad_id, _positive(buffer, "buffer"), column))
        if mode not in ("concat", "document"):
            raise ValueError(f"pack(mode=...) must be 'concat', 'document' or 'bestfit', got {mode!r}")
        if remainder not in ("drop", "pad"):
            raise ValueError(f"pack(remainder=...) must be 'drop' or 'pad', got {remainder!r}")
        return self._then(WindowStage("pack", seq_len, seq_len, 0, mode == "document", remainder, pad_id, 0, 0, column))

    def window(
        self,
        seq_len: int,
        stride: int | None = None,
        shift: int | None = 1,
        *,
        batch_size: int | None = None,
        seed: int = DEFAULT_SEED,
        documents: bool = False,
        column: str = "input_ids",
    ) -> Dataset:
        """Sliding windows over the token stream: ``input_ids = t[s:s+seq_len]``, ``labels = t[s+shift:...]``.

        The next window starts ``stride`` tokens later (default ``seq_len``: no overlap). ``shift=None``
        draws one shift per batch from the proper divisors of ``seq_len`` (reported in a ``shift``
        column); it needs ``batch_size`` and a following ``batch(batch_size)``.
        """
        _positive(seq_len, "seq_len")
        stride = _positive(stride if stride is not None else seq_len, "stride")
        indexed = self._token_windows(seq_len, stride, shift, documents)
        if indexed is not None:
            return indexed
        if shift is None and batch_size is None:
            raise ValueError("window(shift=None) draws one shift per batch: pass batch_size= (and batch(batch_size))")
        if shift is not None and shift < 0:
            raise ValueError(f"window(shift=...) must be >= 0 or None, got {shift}")
        if shift is None and seq_len < 2:
            raise ValueError("window(shift=None) needs seq_len >= 2 (a proper divisor to draw)")
        return self._then(WindowStage("window", seq_len, stride, shift, documents, "drop", 0, batch_size or 0, seed,
                                      column))  # fmt: skip

    def _token_windows(self, seq_len: int, stride: int, shift: int | None, documents: bool) -> Dataset | None:
        """Indexed windows when ``self`` is token shards in global order (``shuffle(buffer_size=None)``)."""
        root = self.root
        if len(self.stages) != 1 or not isinstance(root, SourceStage) or root.source.ordering != "global":
            return None
        src = root.source
        if not all(s.format in ("megatron", "nanogpt", "npy") for s in src.shards):
            return None
        if shift is None or documents:
            raise ValueError("windows over token shards in global order take a fixed shift and no documents=")
        from headrace.formats.tokens import TokenShards

        extra = dict(src.opts.extra)
        shards = TokenShards([s.url for s in src.shards], tokens_per_row=int(extra.get("tokens_per_row", 2048)))
        spec = TokenWindows(shards, seq_len, stride, shift, src.shuffle_seed or 0, src.chunk_rows or 64, src.window,
                            max(1, src.block_rows // 8))  # fmt: skip
        return Dataset(TokenWindowStage(spec))

    def chat(self, tokenizer: Any, *, template: str | None = None, column: str = "messages") -> Dataset:
        """Render message lists with a Jinja chat template, tokenize, and label only assistant turns.

        Emits ``input_ids`` and ``labels`` (-100 outside assistant turns). ``template`` defaults to the
        tokenizer's own chat template (``tokenizer_config.json``).
        """
        from headrace.stages.chat import compile_template

        tok = load_tokenizer(tokenizer)
        source = template or tok.chat_template
        if source is None:
            raise TokenizerError(f"{tok.name}: no chat template; pass chat(template=...) with a Jinja chat template")
        compile_template(source)  # a broken template fails here, not at the first batch
        return self._then(ChatStage(tok, template, column))

    def mask(
        self, tokenizer: Any, *, probability: float = 0.15, seed: int = DEFAULT_SEED, column: str = "input_ids"
    ) -> Dataset:
        """BERT masked-LM: ``probability`` of non-special tokens chosen, 80% ``[MASK]``, 10% random, 10% kept.

        ``labels`` hold the original ids at chosen positions and -100 elsewhere; deterministic from
        ``rng(seed, epoch, stage, index)``.
        """
        if not 0.0 < probability < 1.0:
            raise ValueError(f"mask(probability=...) must be in (0, 1), got {probability}")
        tok = load_tokenizer(tokenizer)
        if tok.mask_id is None:
            raise TokenizerError(f"{tok.name}: no mask token ([MASK] or <mask>) known; use a masked-LM tokenizer")
        return self._then(MaskStage(tok, probability, seed, column))

    def batch(self, size: int, *, drop_last: bool = False, pad: Pad = None, pad_value: Any = 0) -> Dataset:
        """Collate ``size`` rows into a dict of numpy arrays; must be the last stage (but ``repeat``).

        Ragged list columns are padded with ``pad_value`` to the longest row (``pad="longest"``) or to a
        fixed length (``pad=n``); without ``pad`` a ragged column is an error.
        """
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        if pad is not None and pad != "longest" and not (isinstance(pad, int) and pad > 0):
            raise ValueError(f"pad must be None, 'longest' or a positive length, got {pad!r}")
        return self._then(BatchStage(size, drop_last, pad, pad_value))

    def shard(self, num_shards: int, index: int) -> Dataset:
        """Keep part ``index`` of ``num_shards`` equal parts (on top of the rank split); right after open()."""
        if len(self.stages) != 1:
            raise ValueError("shard() must come right after open(): it splits what the source reads")
        if not 0 <= index < num_shards:
            raise ValueError(f"need 0 <= index < num_shards, got index={index} num_shards={num_shards}")
        return Dataset(ShardStage(num_shards, index), self)

    # -- execution ---------------------------------------------------------------------------------
    def build(self, ctx: Context | None = None) -> Node[Any]:
        """A fresh iterator tree for one epoch, rank and worker."""
        ctx = ctx or Context()
        depth = len(self.stages) - 1
        return self.stage.build(self.parent if self.parent is not None else self, ctx, depth)

    def __iter__(self) -> Iterator[Any]:
        """Rows as dicts (or batches, after ``batch``), single process, epoch 0."""
        node = self.build()
        try:
            for item in node:
                if isinstance(item, Block):
                    yield from item.to_pylist()
                else:
                    yield item
        finally:
            node.close()


def _format(batch_format: str) -> BatchFormat:
    if batch_format not in ("numpy", "python", "arrow"):
        raise ValueError(f"batch_format must be 'numpy', 'python' or 'arrow', got {batch_format!r}")
    return batch_format  # type: ignore[return-value]


def from_hf(dataset: Any, *, block_rows: int = 1024) -> Dataset:
    """A ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``) as a headrace :class:`Dataset`.

    Add headrace stages, mixing and the :class:`Loader` on top; checkpoints carry HF's own position
    (``IterableDataset.state_dict``). Shuffle with headrace: HF does not restore its shuffle buffer.
    """
    if not hasattr(dataset, "state_dict") or not hasattr(dataset, "iter"):
        raise TypeError(f"from_hf() takes a datasets.IterableDataset, got {type(dataset).__name__} "
                        "(load_dataset(..., streaming=True), or Dataset.to_iterable_dataset())")  # fmt: skip
    return Dataset(HFStage(HFSource(dataset, _positive(block_rows, "block_rows"))))


STOPS = ("first_exhausted", "all_exhausted", "never")


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
    w = dict.fromkeys(names, 1.0) if weights is None else dict(weights)
    unknown = sorted(set(w) - set(names))
    if unknown:
        raise ValueError(f"mix(): weights name unknown source(s) {unknown}; the sources are {list(names)}")
    values = [float(w.get(n, 0.0)) for n in names]
    if any(not v >= 0 for v in values) or sum(values) <= 0:
        given = dict(zip(names, values, strict=True))
        raise ValueError(f"mix(): weights must be >= 0 and sum to a positive number, got {given}")
    if stop not in STOPS:
        raise ValueError(f"mix(stop=...) must be one of {STOPS}, got {stop!r}")
    if seed < 0:
        raise ValueError(f"mix(seed=...) must be >= 0, got {seed}")
    caps = dict(budgets or {})
    bad = {k: v for k, v in caps.items() if not isinstance(v, int) or v < 0}
    if bad:
        raise ValueError(f"mix(budgets=...) must be whole numbers of rows >= 0, got {bad}")
    unknown = sorted(set(caps) - set(names))
    if unknown:
        raise ValueError(f"mix(): budgets name unknown source(s) {unknown}; the sources are {list(names)}")
    total = sum(values)
    stage = MixStage(names, tuple(datasets[n] for n in names), tuple(v / total for v in values), seed, stop,
                     tuple(caps.get(n) for n in names), _positive(block_rows, "block_rows"))  # fmt: skip
    return Dataset(stage)


def _positive(n: int, what: str) -> int:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")
    return n


def _count(n: int, what: str) -> int:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"{what}(n) needs an integer n >= 0, got {n!r}")
    return n


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
    format_options: Mapping[str, Any] | None = None,
) -> Dataset:
    """Open files, globs, directories or a list of them as a :class:`Dataset`.

    The format comes from each file's suffix (compression suffixes ``.gz``, ``.zst``, ``.bz2``,
    ``.xz`` looked through) or from ``format=``: ``parquet``, ``jsonl``/``json``, ``csv``, ``tsv``,
    ``text``, ``arrow``. ``columns`` projects (Parquet, Arrow and CSV read only those columns).
    ``errors`` is the policy for malformed records: ``raise``, ``skip`` or ``warn``. Token shards:
    ``megatron`` (``x.bin`` with ``x.idx``), ``nanogpt`` (a ``.bin`` alone), ``npy``;
    ``format_options={"tokens_per_row": 2048}`` sets the row length of a raw token stream.

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
    try:
        fmt = format_named(format) if format is not None else None
    except SourceError as e:
        named = urls if isinstance(urls, str) else ", ".join(map(str, urls))
        raise SourceError(f"{named}: {e}") from None
    first_fs: list[Any] = []

    def fs_of(url: str) -> tuple[Any, str]:
        fs, path = fs_for(url, storage_options)
        if not first_fs:
            first_fs.append(fs)
        return fs, path

    found = resolve(urls, fs_of, lambda p: fmt is not None or format_of(p) is not None)
    shards = []
    for url, size in found:
        f = fmt or format_of(url)
        if f is None:
            raise SourceError(f"{url}: unknown format from the file name; pass format= (one of parquet, jsonl, "
                              "csv, tsv, text, arrow)")  # fmt: skip
        if size == 0:
            raise SourceError(f"{url}: the file is empty (0 bytes); remove it or narrow the glob")
        shards.append(Shard(url, size, f.name, split_suffix(url)[1]))
    fs = first_fs[0]
    opts = ReadOptions(
        columns=tuple(columns) if columns is not None else None, chunk_bytes=chunk_bytes, text_mode=text_mode,
        text_column=text_column, delimiter=delimiter, schema=schema,
        extra=tuple(sorted((format_options or {}).items())),
    )  # fmt: skip
    if schema is not None:
        full = schema
    else:
        first = shards[0]
        full = format_named(first.format).schema(fs, first, replace(opts, columns=None), ErrorLog("skip"))
    try:
        projected = project(full, opts.columns, shards[0].url)
    except SchemaError:
        raise
    source = Source(tuple(shards), opts, projected, policy, block_rows, None, fs)
    return Dataset(SourceStage(source))


__all__ = ["REMAINDERS", "STOPS", "Context", "Dataset", "from_hf", "mix", "open"]
