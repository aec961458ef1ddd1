"""The pipeline plan: one frozen description class per stage, and how each builds its node.

A :class:`~headrace.pipeline.Dataset` is a chain of these stages; ``Stage.build`` turns one into an
iterator node over its parent's (see :mod:`headrace.core.node`). Root stages (files, token windows,
an HF dataset, a mixture) also say how many shards their rows' lineage can name and how to print it.
This module and :mod:`headrace.pipeline` are the only ones that know every stage. A stage sees its
parent only as an :class:`Upstream` (what it builds over, how its rows' lineage reads), so this
module never imports the pipeline, which imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeAlias

from headrace.core.node import Node
from headrace.core.policy import Policy
from headrace.core.state import fingerprint
from headrace.core.world import World
from headrace.stages.batch import BatchNode, BatchOutput, Pad, RebatchNode
from headrace.stages.bestfit import BestFitNode
from headrace.stages.global_source import GlobalSourceNode
from headrace.stages.hf import HFNode, HFSource
from headrace.stages.image_files import ImageFiles
from headrace.stages.images import RejectNode, augment_fn, decode_fn
from headrace.stages.limit import LimitNode
from headrace.stages.pack import WindowNode
from headrace.stages.partition import Remainder
from headrace.stages.repeat import RepeatNode
from headrace.stages.shuffle import ShuffleNode
from headrace.stages.source import Source, SourceNode
from headrace.stages.token_windows import TokenWindowNode, TokenWindows
from headrace.stages.tokenize import WHOLE, Lengths, tokenize_fn
from headrace.stages.transform import BatchFormat, TransformNode, columns_fn, describe_fn, filter_fn, map_fn
from headrace.tokenizer import Tokenizer


@dataclass(frozen=True, kw_only=True)
class Context:
    """What a build needs beyond the description: the world, the epoch, and the execution resources."""

    world: World = field(default_factory=World)
    epoch: int = 0
    remainder: Remainder = "drop"
    pool: Executor | None = None
    depth: int = 1
    start: int = 0  # where a global-order source starts this epoch (an elastic resume)


class Upstream(Protocol):
    """What a stage knows of the pipeline it follows (a :class:`~headrace.pipeline.Dataset` in practice).

    ``build`` makes its node tree, ``lineage`` names a row by its ``(shard, row)`` place, ``shard_count``
    says how many shards that place can name, ``root`` is its first stage (where the rows' files are) and
    ``describe`` is its description (part of a mixture's).

    >>> import headrace as hr, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp(), "rows.jsonl")
    >>> _ = path.write_text('{"id": 0}\\n{"id": 1}\\n')
    >>> upstream: Upstream = hr.open(str(path)).take(1)
    >>> upstream.shard_count, upstream.lineage(0, 1).endswith("rows.jsonl (record 1)"), upstream.describe()[1]
    (1, True, {'stage': 'limit', 'skip': 0, 'take': 1})
    """

    @property
    def root(self) -> Root: ...

    @property
    def shard_count(self) -> int: ...

    def lineage(self, shard: int, row: int) -> str: ...

    def describe(self) -> list[dict[str, Any]]: ...

    def build(self, ctx: Context | None = None) -> Node[Any]: ...


class Stage:
    """One step of a pipeline description; ``build`` makes its node over the parent's."""

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
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

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
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

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
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

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        return HFNode(self.source, ctx.world, ctx.epoch)


@dataclass(frozen=True, kw_only=True)
class MixStage(Stage):
    """The root of a mixture: named child pipelines interleaved by weight (see :func:`mix`)."""

    names: tuple[str, ...]
    children: tuple[Upstream, ...]
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

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        from headrace.stages.mix import MixNode

        def builder(child: Upstream) -> Callable[[int], Node[Any]]:
            return lambda epoch: child.build(replace(ctx, epoch=epoch))

        return MixNode([builder(c) for c in self.children], names=self.names, weights=self.weights, seed=self.seed,
                       epoch=ctx.epoch, stage=depth, stop=self.stop, shard_offsets=self.offsets(),
                       budgets=self.budgets, block_rows=self.block_rows)  # fmt: skip


# the stages a pipeline can start with (each says how many shards its rows' lineage can name)
Root: TypeAlias = SourceStage | TokenWindowStage | HFStage | MixStage


@dataclass(frozen=True, kw_only=True)
class ShardStage(Stage):
    num_shards: int
    index: int

    def describe(self) -> dict[str, Any]:
        return {"stage": "shard", "num_shards": self.num_shards, "index": self.index}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        w = ctx.world
        world = World(rank=w.consumer * self.num_shards + self.index, world_size=w.consumers * self.num_shards)
        return parent.build(replace(ctx, world=world))


@dataclass(frozen=True, kw_only=True)
class ShuffleStage(Stage):
    seed: int
    buffer_size: int
    block_rows: int

    def describe(self) -> dict[str, Any]:
        return {"stage": "shuffle", "seed": self.seed, "buffer_size": self.buffer_size}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        return ShuffleNode(parent.build(ctx), seed=self.seed, epoch=ctx.epoch, stage=depth,
                           buffer_size=self.buffer_size, block_rows=self.block_rows)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class MapStage(Stage):
    fn: Callable[[Any], Any]
    kind: str  # "map" | "filter"
    batched: bool
    batch_format: BatchFormat
    remove_columns: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"stage": self.kind, "fn": describe_fn(self.fn), "batched": self.batched,
                "remove_columns": list(self.remove_columns)}  # fmt: skip

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        lineage = parent.lineage
        if self.kind == "map":
            fn = map_fn(self.fn, batched=self.batched, batch_format=self.batch_format,
                        remove_columns=self.remove_columns, lineage=lineage)  # fmt: skip
        else:
            fn = filter_fn(self.fn, batched=self.batched, batch_format=self.batch_format, lineage=lineage)
        return TransformNode(parent.build(ctx), fn, ctx.pool, ctx.depth)


@dataclass(frozen=True, kw_only=True)
class LimitStage(Stage):
    skip: int
    take: int
    block_rows: int

    def describe(self) -> dict[str, Any]:
        return {"stage": "limit", "skip": self.skip, "take": self.take}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        return LimitNode(parent.build(ctx), skip=self.skip, take=self.take, block_rows=self.block_rows)


@dataclass(frozen=True)
class RepeatStage(Stage):
    times: int | None

    def describe(self) -> dict[str, Any]:
        return {"stage": "repeat", "times": self.times}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        return RepeatNode(lambda rep: parent.build(replace(ctx, epoch=ctx.epoch + rep)), times=self.times)


@dataclass(frozen=True, kw_only=True)
class TokenizeStage(Stage):
    tokenizer: Tokenizer
    column: str
    output: str
    bos: int | None
    eos: int | None
    remove_column: bool
    fit: Lengths = WHOLE  # truncation, padding, attention mask

    def describe(self) -> dict[str, Any]:
        out = {"stage": "tokenize", "tokenizer": self.tokenizer.describe(), "column": self.column,
               "output": self.output, "bos": self.bos, "eos": self.eos}  # fmt: skip
        # whole documents keep the fingerprint they had before there was a choice (saved states stay valid)
        return out if self.fit == WHOLE else {**out, "lengths": self.fit.describe()}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        fn = tokenize_fn(self.tokenizer, column=self.column, output=self.output, bos=self.bos, eos=self.eos,
                         remove_column=self.remove_column, lineage=parent.lineage, fit=self.fit)  # fmt: skip
        return TransformNode(parent.build(ctx), fn, ctx.pool, ctx.depth)


@dataclass(frozen=True, kw_only=True)
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

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        return WindowNode(parent.build(ctx), column=self.column, seq_len=self.seq_len, stride=self.stride,
                          shift=self.shift, documents=self.documents, remainder=self.remainder, pad_id=self.pad_id,
                          batch_size=self.batch_size, seed=self.seed, epoch=ctx.epoch, stage=depth,
                          labels=self.kind == "window")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class BestFitStage(Stage):
    seq_len: int
    pad_id: int
    buffer: int
    column: str

    def describe(self) -> dict[str, Any]:
        return {"stage": "pack", "mode": "bestfit", "seq_len": self.seq_len, "pad_id": self.pad_id,
                "buffer": self.buffer, "column": self.column}  # fmt: skip

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        return BestFitNode(parent.build(ctx), column=self.column, seq_len=self.seq_len, pad_id=self.pad_id,
                           buffer=self.buffer)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ChatStage(Stage):
    tokenizer: Tokenizer
    template: str | None
    column: str
    max_rendered_chars: int = 0  # 0: the default; not in describe(): a limit, not what the stage emits
    tokenize: bool = True  # False: the rendered text only
    text_column: str | None = None  # where the rendered text goes (None: not kept)

    def describe(self) -> dict[str, Any]:
        out = {"stage": "chat", "tokenizer": self.tokenizer.describe(), "column": self.column,
               "template": fingerprint(self.template or self.tokenizer.chat_template)}  # fmt: skip
        # ids and labels alone keep the fingerprint they had before there was a choice (saved states stay valid)
        if self.tokenize and self.text_column is None:
            return out
        return {**out, "tokenize": self.tokenize, "text_column": self.text_column}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        from headrace.stages.chat import chat_fn

        fn = chat_fn(self.tokenizer, template=self.template, column=self.column, lineage=parent.lineage,
                     max_rendered_chars=self.max_rendered_chars or None, tokenize=self.tokenize,
                     text_column=self.text_column)  # fmt: skip
        return TransformNode(parent.build(ctx), fn, ctx.pool, ctx.depth)


@dataclass(frozen=True, kw_only=True)
class MaskStage(Stage):
    tokenizer: Tokenizer
    probability: float
    seed: int
    column: str
    shares: tuple[float, float] = (0.8, 0.1)  # mask_replace_prob, random_replace_prob (BERT's 80/10/10)

    def describe(self) -> dict[str, Any]:
        out = {"stage": "mask", "tokenizer": self.tokenizer.describe(), "probability": self.probability,
               "seed": self.seed, "column": self.column}  # fmt: skip
        # BERT's shares keep the fingerprint they had before there was a choice (saved states stay valid)
        return out if self.shares == (0.8, 0.1) else {**out, "shares": list(self.shares)}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        from headrace.stages.mlm import MaskNode

        return MaskNode(parent.build(ctx), tokenizer=self.tokenizer, probability=self.probability, seed=self.seed,
                        epoch=ctx.epoch, stage=depth, column=self.column, mask_replace_prob=self.shares[0],
                        random_replace_prob=self.shares[1])  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class DecodeImagesStage(Stage):
    column: str
    output: str
    mode: str
    size: tuple[int, int] | None
    remove_column: bool
    errors: Policy
    image_root: str | None = None  # where HF Image structs' paths are read (None: the dataset's folder)

    def describe(self) -> dict[str, Any]:
        out = {"stage": "decode_images", "column": self.column, "output": self.output, "mode": self.mode,
               "size": list(self.size) if self.size else None, "remove_column": self.remove_column,
               "errors": self.errors}  # fmt: skip
        return out if self.image_root is None else {**out, "image_root": self.image_root}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        files = ImageFiles(shard_files(parent), self.image_root)
        fn = decode_fn(column=self.column, output=self.output, mode=self.mode, size=self.size,
                       remove_column=self.remove_column, lineage=parent.lineage, files=files)  # fmt: skip
        return RejectNode(TransformNode(parent.build(ctx), fn, ctx.pool, ctx.depth), self.errors)


def shard_files(dataset: Upstream) -> tuple[tuple[str, Any] | None, ...]:
    """For each shard id of ``dataset``'s rows: the file's URL and filesystem (None: rows from no file)."""
    root = dataset.root
    if isinstance(root, SourceStage):
        return tuple((shard.url, root.source.fs) for shard in root.source.shards)
    if isinstance(root, MixStage):
        return tuple(place for child in root.children for place in shard_files(child))
    return (None,) * root.shard_count


@dataclass(frozen=True, kw_only=True)
class AugmentStage(Stage):
    column: str
    crop: tuple[int, int] | None
    padding: int
    padding_mode: str
    flip: bool
    seed: int

    def describe(self) -> dict[str, Any]:
        return {"stage": "augment", "column": self.column, "random_crop": list(self.crop) if self.crop else None,
                "padding": self.padding, "padding_mode": self.padding_mode, "flip": self.flip,
                "seed": self.seed}  # fmt: skip

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        fn = augment_fn(column=self.column, crop=self.crop, padding=self.padding, padding_mode=self.padding_mode,
                        flip=self.flip, seed=self.seed, epoch=ctx.epoch, stage=depth,
                        lineage=parent.lineage)  # fmt: skip
        return TransformNode(parent.build(ctx), fn, ctx.pool, ctx.depth)


@dataclass(frozen=True, kw_only=True)
class BatchStage(Stage):
    size: int
    drop_last: bool
    pad: Pad
    pad_value: Any
    batch_format: BatchOutput = "numpy"

    def describe(self) -> dict[str, Any]:
        out = {"stage": "batch", "size": self.size, "drop_last": self.drop_last, "pad": self.pad,
               "pad_value": self.pad_value}  # fmt: skip
        # numpy batches keep the fingerprint they had before there was a choice (saved states stay valid)
        return out if self.batch_format == "numpy" else {**out, "batch_format": self.batch_format}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        return BatchNode(parent.build(ctx), size=self.size, drop_last=self.drop_last, pad=self.pad,
                         pad_value=self.pad_value, lineage=parent.lineage, batch_format=self.batch_format)  # fmt: skip


@dataclass(frozen=True)
class RebatchStage(Stage):
    """``map``/``filter``'s ``batch_size``: blocks of exactly ``size`` rows for the function that follows."""

    size: int

    def describe(self) -> dict[str, Any]:
        return {"stage": "rebatch", "size": self.size}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        return RebatchNode(parent.build(ctx), self.size)


@dataclass(frozen=True, kw_only=True)
class ColumnsStage(Stage):
    """``remove_columns``/``select_columns`` (pairs ``(name, name)``) or ``rename_columns`` (``(old, new)``)."""

    kind: str
    pairs: tuple[tuple[str, str], ...]

    def describe(self) -> dict[str, Any]:
        return {"stage": self.kind, "columns": [list(p) for p in self.pairs]}

    def build(self, parent: Upstream, ctx: Context, depth: int) -> Node[Any]:
        return TransformNode(parent.build(ctx), columns_fn(self.kind, self.pairs, parent.lineage), None, 1)

    def apply(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        """What the stage makes of known columns (name -> type)."""
        names = [a for a, _ in self.pairs]
        missing = [n for n in names if n not in columns]
        if missing:
            raise ValueError(f"{self.kind}(): no column(s) {missing}; the columns are {list(columns)}")
        if self.kind == "remove_columns":
            return {k: v for k, v in columns.items() if k not in names}
        if self.kind == "select_columns":
            return {k: columns[k] for k in names}
        new = dict(self.pairs)
        return {new.get(k, k): v for k, v in columns.items()}
