"""The fluent ``Dataset``: an immutable, lazy, picklable description of a pipeline.

Each ``Dataset`` is a parent plus one stage; iterating (or a :class:`~headrace.Loader`) builds a fresh
tree of nodes for one epoch, rank and worker. The stages themselves are described in
:mod:`headrace.plan`; the datasets a pipeline starts from are made in :mod:`headrace.sources`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from headrace.checks import batch_options, check_format, count, positive, size_pair
from headrace.core.block import Block
from headrace.core.node import Node
from headrace.core.policy import check_policy
from headrace.core.redact import redact
from headrace.core.rng import DEFAULT_SEED
from headrace.plan import (
    AugmentStage,
    BatchStage,
    BestFitStage,
    ChatStage,
    Context,
    DecodeImagesStage,
    HFStage,
    LimitStage,
    MapStage,
    MaskStage,
    MixStage,
    RepeatStage,
    ShardStage,
    ShuffleStage,
    SourceStage,
    Stage,
    TokenizeStage,
    TokenWindowStage,
    WindowStage,
)
from headrace.stages.batch import BatchOutput, Pad
from headrace.stages.images import MODES, PADDING_MODES
from headrace.stages.partition import REMAINDERS
from headrace.stages.source import Source
from headrace.stages.token_windows import indexed_windows
from headrace.stages.transform import BatchFormat
from headrace.tokenizer import TokenizerError, load_tokenizer


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
        """``"file (record r)"`` for a row's lineage (``"name: file (record r)"`` in a mixture), redacted."""
        return redact(self.root.lineage(shard, row))

    def __repr__(self) -> str:
        return redact(f"Dataset(stage={self.stage!r}, parent={self.parent!r})")

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
            rows = None if chunk_rows is None else positive(chunk_rows, "chunk_rows")
            src = replace(root.source, ordering="global", shuffle_seed=seed, window=positive(window, "window"),
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
        return self._then(MapStage(fn, "map", batched, check_format(batch_format), tuple(remove_columns)))

    def filter(
        self, fn: Callable[[Any], Any], *, batched: bool = False, batch_format: BatchFormat = "numpy"
    ) -> Dataset:
        """Keep the rows for which ``fn(row)`` is true (``batched=True``: ``fn`` returns a boolean mask)."""
        return self._then(MapStage(fn, "filter", batched, check_format(batch_format)))

    def take(self, n: int) -> Dataset:
        """The first ``n`` rows of the stream each consumer (rank) sees."""
        return self._then(LimitStage(0, count(n, "take"), self.block_rows))

    def skip(self, n: int) -> Dataset:
        """All but the first ``n`` rows of the stream each consumer (rank) sees."""
        return self._then(LimitStage(count(n, "skip"), -1, self.block_rows))

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
        positive(seq_len, "seq_len")
        if mode == "bestfit":
            return self._then(BestFitStage(seq_len, pad_id, positive(buffer, "buffer"), column))
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
        positive(seq_len, "seq_len")
        stride = positive(stride if stride is not None else seq_len, "stride")
        root = self.root
        if len(self.stages) == 1 and isinstance(root, SourceStage):
            spec = indexed_windows(root.source, seq_len, stride, shift, documents)
            if spec is not None:
                return Dataset(TokenWindowStage(spec))
        if shift is None and batch_size is None:
            raise ValueError("window(shift=None) draws one shift per batch: pass batch_size= (and batch(batch_size))")
        if shift is not None and shift < 0:
            raise ValueError(f"window(shift=...) must be >= 0 or None, got {shift}")
        if shift is None and seq_len < 2:
            raise ValueError("window(shift=None) needs seq_len >= 2 (a proper divisor to draw)")
        return self._then(WindowStage("window", seq_len, stride, shift, documents, "drop", 0, batch_size or 0, seed,
                                      column))  # fmt: skip

    def chat(
        self, tokenizer: Any, *, template: str | None = None, column: str = "messages", max_rendered_chars: int = 0
    ) -> Dataset:
        """Render message lists with a Jinja chat template, tokenize, and label only assistant turns.

        Emits ``input_ids`` and ``labels`` (-100 outside assistant turns). ``template`` defaults to the
        tokenizer's own chat template (``tokenizer_config.json``). The template is untrusted and runs in a
        bounded sandbox: a rendering over ``max_rendered_chars`` characters (0: 16 Mi) is a ``RecordError``.
        """
        from headrace.stages.chat import compile_template

        if not isinstance(max_rendered_chars, int) or max_rendered_chars < 0:
            raise ValueError(f"chat(max_rendered_chars=...) must be a positive int (0: the default), got "
                             f"{max_rendered_chars!r}")  # fmt: skip
        tok = load_tokenizer(tokenizer)
        source = template or tok.chat_template
        if source is None:
            raise TokenizerError(f"{tok.name}: no chat template; pass chat(template=...) with a Jinja chat template")
        compile_template(source)  # a broken template fails here, not at the first batch
        return self._then(ChatStage(tok, template, column, max_rendered_chars))

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

    def decode_images(
        self,
        column: str = "jpg",
        *,
        output: str = "image",
        mode: str = "RGB",
        size: int | tuple[int, int] | None = None,
        remove_column: bool = True,
        errors: str | None = None,
    ) -> Dataset:
        """Decode the encoded images of ``column`` (JPEG, PNG, WebP, ...: Pillow) into ``uint8`` arrays ``[H, W, C]``.

        ``mode``: ``"RGB"`` (C=3), ``"RGBA"`` (C=4) or ``"L"`` (grey, C=1). ``size=(h, w)`` (or ``n``
        for square) resizes every image (bilinear), and ``output`` is then one ``[rows, h, w, C]``
        array; without it, an array per row. A sample that does not decode is a
        :class:`~headrace.RecordError` naming the shard, record and key, or with ``errors="skip"`` or
        ``"warn"`` (default: the policy given to ``open``) skipped and counted in ``loader.skipped``.
        Needs Pillow (``pip install "headrace[images]"``).
        """
        try:
            import PIL  # noqa: F401 - checked here, so a missing Pillow fails now, not in a worker
        except ImportError:
            raise ImportError('decode_images() needs Pillow: pip install "headrace[images]"') from None
        if mode not in MODES:
            raise ValueError(f"decode_images(mode=...) must be one of {sorted(MODES)}, got {mode!r}")
        root = self.root
        policy = check_policy(errors) if errors is not None else (
            root.source.errors if isinstance(root, SourceStage) else "raise")  # fmt: skip
        return self._then(DecodeImagesStage(column, output, mode, size_pair(size, "size"), remove_column, policy))

    def augment(
        self,
        column: str = "image",
        *,
        random_crop: int | tuple[int, int] | None = None,
        padding: int = 0,
        padding_mode: str = "constant",
        flip: bool = False,
        seed: int = DEFAULT_SEED,
    ) -> Dataset:
        """Random crops and flips of the images of ``column`` (after :meth:`decode_images`).

        Each image is padded by ``padding`` pixels on every side (``padding_mode``: ``"constant"``
        zeros, ``"edge"`` or ``"reflect"``), cropped to ``random_crop=(h, w)`` at a random place, and with
        ``flip=True`` mirrored left-right with probability 1/2. The draws come from ``uniforms(seed,
        epoch, stage, the row's lineage)``: the same in any run, worker count or resume, new each epoch.
        """
        if seed < 0:
            raise ValueError(f"augment(seed=...) must be >= 0, got {seed}")
        crop = size_pair(random_crop, "random_crop")
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"augment(padding=...) must be an integer >= 0, got {padding!r}")
        if padding and crop is None:
            raise ValueError("augment(padding=...) pads before a random crop: pass random_crop= too")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"augment(padding_mode=...) must be one of {PADDING_MODES}, got {padding_mode!r}")
        if crop is None and not flip:
            raise ValueError("augment() with neither random_crop= nor flip=True does nothing")
        return self._then(AugmentStage(column, crop, padding, padding_mode, flip, seed))

    def batch(
        self,
        size: int,
        *,
        drop_last: bool = False,
        pad: Pad = None,
        pad_value: Any = 0,
        batch_format: BatchOutput = "numpy",
    ) -> Dataset:
        """Collate ``size`` rows into a dict of numpy arrays; must be the last stage (but ``repeat``).

        Ragged list columns are padded with ``pad_value`` to the longest row (``pad="longest"``) or to a
        fixed length (``pad=n``); without ``pad`` a ragged column is an error. ``batch_format="arrow"`` gives
        ``pyarrow.RecordBatch``es instead, the rows' Arrow columns without a conversion (ragged lists stay
        lists; no ``pad``): for consumers that compute with Arrow.
        """
        return self._then(BatchStage(size, drop_last, pad, pad_value, batch_options(size, pad, batch_format)))

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


__all__ = ["REMAINDERS", "Context", "Dataset"]
