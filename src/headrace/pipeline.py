"""The fluent ``Dataset``: an immutable, lazy, picklable description of a pipeline.

Each ``Dataset`` is a parent plus one stage; iterating (or a :class:`~headrace.Loader`) builds a fresh
tree of nodes for one epoch, rank and worker. The stages themselves are described in
:mod:`headrace.plan`; the datasets a pipeline starts from are made in :mod:`headrace.sources`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, overload

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
    ColumnsStage,
    Context,
    DecodeImagesStage,
    HFStage,
    LimitStage,
    MapStage,
    MaskStage,
    MixStage,
    RebatchStage,
    RepeatStage,
    Root,
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
from headrace.stages.split import SliceStage, SplitStage, check_parts, parse_slice, place_keys, slice_source
from headrace.stages.token_windows import indexed_windows
from headrace.stages.transform import BatchFormat
from headrace.tokenizer import TokenizerError, load_tokenizer

# stages that pass their input's columns through (whatever they do to the rows), for column_names/features
COLUMN_KEEPING = (ShuffleStage, LimitStage, RepeatStage, ShardStage, SplitStage, SliceStage, RebatchStage)
# stages after which every consumer still has as many items as every other (see Dataset.equal_counts)
COUNT_KEEPING = (ShuffleStage, BatchStage, TokenizeStage, LimitStage, ShardStage, RepeatStage, MaskStage,
                 AugmentStage, ColumnsStage, RebatchStage)  # fmt: skip
SPLITS = (SplitStage, SliceStage)


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
    def root(self) -> Root:
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

    @property
    def features(self) -> dict[str, Any] | None:
        """The columns and their types where the description knows them (HF's ``features``); ``None`` after a map.

        A dict of column name to ``pyarrow.DataType`` (from a Hugging Face dataset: its own feature
        types). Stages whose output is only known by running them (``map``, ``tokenize``, ``pack``, ...)
        make it ``None``, as ``map`` does in HF's streaming datasets.

        >>> import headrace as hr, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp(), "rows.jsonl")
        >>> _ = path.write_text('{"id": 1, "text": "a"}\\n')
        >>> ds = hr.open(str(path))
        >>> ds.features, ds.column_names
        ({'id': DataType(int64), 'text': DataType(string)}, ['id', 'text'])
        >>> ds.rename_column("text", "body").column_names, ds.map(lambda r: r).column_names is None
        (['id', 'body'], True)
        """
        stages = self.stages
        root = stages[0]
        known: dict[str, Any]
        if isinstance(root, SourceStage):
            known = {f.name: f.type for f in root.source.schema}
        elif isinstance(root, HFStage):
            hf = getattr(root.source.dataset, "features", None)
            if hf is None:
                return None
            known = dict(hf)
        elif isinstance(root, MixStage):
            kids = [child.features for child in _mixed(root)]
            first = kids[0]
            if first is None or any(k is None or list(k.items()) != list(first.items()) for k in kids):
                return None
            known = dict(first)
        else:
            return None
        for stage in stages[1:]:
            if isinstance(stage, ColumnsStage):
                known = stage.apply(known)
            elif not isinstance(stage, COLUMN_KEEPING) and not (isinstance(stage, MapStage) and stage.kind == "filter"):
                return None
        return known

    @property
    def column_names(self) -> list[str] | None:
        """The column names where the description knows them (HF's ``column_names``); ``None`` after a map."""
        features = self.features
        return None if features is None else list(features)

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
            if isinstance(stage, TokenizeStage | BatchStage | ColumnsStage):
                continue
            return f"its {stage.describe()['stage']} stage can change how many rows each rank consumes"
        if not self.batched:
            return "it has no batch() stage"
        return None

    @property
    def equal_counts(self) -> bool:
        """Whether every consumer yields the same number of items without agreeing (:mod:`headrace.agree`): the
        source splits into equal ranges and raises on bad records, and each stage keeps the row count (or
        batches it). Otherwise the ranks' :class:`~headrace.Loader` agree before each batch.

        >>> import headrace as hr, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp(), "rows.jsonl")
        >>> _ = path.write_text('{"id": 1}\\n')
        >>> hr.open(str(path)).shuffle(seed=1).map(lambda r: r).batch(2).equal_counts
        True
        >>> hr.open(str(path)).filter(lambda r: True).batch(2).equal_counts
        False
        """
        for stage in self.stages:
            if isinstance(stage, SourceStage):
                equal = stage.source.errors == "raise"
            elif isinstance(stage, MapStage):
                equal = stage.kind == "map" and not stage.batched
            elif isinstance(stage, DecodeImagesStage):
                equal = stage.errors == "raise"
            else:
                equal = isinstance(stage, COUNT_KEEPING)
            if not equal:
                return False
        return True

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

    def _at_source(self) -> bool:
        """Whether only splits (filters by the rows' place, which commute with reading order) follow the root."""
        return all(isinstance(stage, SPLITS) for stage in self.stages[1:])

    def _place_keys(self) -> tuple[str, ...]:
        """Each lineage shard's place key (a path relative to the files' common folder), for :meth:`split`."""
        for stage in self.stages[1:]:
            if isinstance(stage, SliceStage):  # the slice kept some of the files: their keys in the whole dataset
                return stage.keys
        root = self.root
        if isinstance(root, SourceStage):
            return place_keys([s.url for s in root.source.shards])
        if isinstance(root, TokenWindowStage):
            return place_keys(root.spec.shards.urls)
        if isinstance(root, MixStage):
            return tuple(f"{name}:{key}" for name, child in zip(root.names, _mixed(root), strict=True)
                         for key in child._place_keys())  # fmt: skip
        raise ValueError(
            "split(): the rows of a Hugging Face dataset have no place that is the same on every rank "
            "(each rank reads its own part); split by an id column instead: split(..., by='id')"
        )

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
            if not self._at_source() or not isinstance(root, SourceStage):
                raise ValueError("shuffle(buffer_size=None) orders the source itself: call it right after open() "
                                 "(or after split())")  # fmt: skip
            rows = None if chunk_rows is None else positive(chunk_rows, "chunk_rows")
            src = replace(root.source, ordering="global", shuffle_seed=seed, window=positive(window, "window"),
                          chunk_rows=rows)  # fmt: skip
            ordered = Dataset(SourceStage(src))
            for split in self.stages[1:]:  # a split keeps rows by their place: it commutes with the order
                ordered = Dataset(split, ordered)
            return ordered
        if buffer_size < 1:
            raise ValueError(f"shuffle(buffer_size=...) must be a positive number of rows or None, got {buffer_size}")
        root = self.root
        if isinstance(root, SourceStage) and root.source.shuffle_seed is None:  # also permute the shard order
            rebuilt = Dataset(SourceStage(replace(root.source, shuffle_seed=seed)))
            for st in self.stages[1:]:
                rebuilt = Dataset(st, rebuilt)
            return rebuilt._then(ShuffleStage(seed=seed, buffer_size=buffer_size, block_rows=self.block_rows))
        return self._then(ShuffleStage(seed=seed, buffer_size=buffer_size, block_rows=self.block_rows))

    def map(
        self,
        fn: Callable[[Any], Any],
        *,
        batched: bool = False,
        batch_size: int | None = None,
        batch_format: BatchFormat = "numpy",
        remove_columns: str | Sequence[str] | None = None,
    ) -> Dataset:
        """Apply ``fn`` to each row (a dict), or with ``batched=True`` to each block (a dict of columns).

        The returned dict updates the row's columns, as in HF ``datasets``; ``remove_columns`` drops
        inputs (a name or a list; ``None`` too, so that HF's ``remove_columns=ds.column_names`` reads as
        there). A batched function may change the number of rows (its output then stands alone).
        ``batch_size=n`` calls it on exactly ``n`` rows at a time (the last call may have fewer), as HF
        does; without it, on the blocks as read (up to ``block_rows``). ``batch_format``: ``"numpy"``
        arrays (the default), ``"python"`` lists — what Hugging Face tokenizers take — or ``"arrow"`` arrays.

        >>> import headrace as hr, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp(), "rows.jsonl")
        >>> _ = path.write_text("".join(f'{{"id": {i}}}\\n' for i in range(5)))
        >>> sizes = hr.open(str(path)).map(lambda b: {"n": [len(b["id"])] * len(b["id"])}, batched=True, batch_size=2)
        >>> [r["n"] for r in sizes]
        [2, 2, 2, 2, 1]
        """
        parent = self._sized("map", batched, batch_size)
        removed = tuple(_names(remove_columns, "map(remove_columns=...)")) if remove_columns else ()
        return parent._then(MapStage(fn=fn, kind="map", batched=batched, batch_format=check_format(batch_format),
                                     remove_columns=removed))  # fmt: skip

    def filter(
        self,
        fn: Callable[[Any], Any],
        *,
        batched: bool = False,
        batch_size: int | None = None,
        batch_format: BatchFormat = "numpy",
    ) -> Dataset:
        """Keep the rows for which ``fn(row)`` is true (``batched=True``: ``fn`` returns a boolean mask;
        ``batch_size=n``: of exactly ``n`` rows, as in :meth:`map`)."""
        parent = self._sized("filter", batched, batch_size)
        return parent._then(MapStage(fn=fn, kind="filter", batched=batched, batch_format=check_format(batch_format)))

    def _sized(self, what: str, batched: bool, batch_size: int | None) -> Dataset:
        if batch_size is None:
            return self
        if not batched:
            raise ValueError(f"{what}(batch_size=...) sizes the batches of a batched function: pass batched=True too")
        return self._then(RebatchStage(positive(batch_size, f"{what}(batch_size=...)")))

    def remove_columns(self, column_names: str | Sequence[str]) -> Dataset:
        """Drop columns (HF's ``remove_columns``)."""
        return self._columns("remove_columns", [(n, n) for n in _names(column_names, "remove_columns()")])

    def select_columns(self, column_names: str | Sequence[str]) -> Dataset:
        """Keep only these columns, in this order (HF's ``select_columns``)."""
        return self._columns("select_columns", [(n, n) for n in _names(column_names, "select_columns()")])

    def rename_column(self, original_column_name: str, new_column_name: str) -> Dataset:
        """Rename one column (HF's ``rename_column``); it keeps its place among the columns."""
        return self.rename_columns({original_column_name: new_column_name})

    def rename_columns(self, column_mapping: Mapping[str, str]) -> Dataset:
        """Rename columns, ``{old: new}`` (HF's ``rename_columns``)."""
        pairs = list(dict(column_mapping).items())
        for old, new in pairs:
            if not isinstance(old, str) or not isinstance(new, str) or not new:
                raise ValueError(f"rename_columns(): names must be non-empty strings, got {old!r} -> {new!r}")
        news = [new for _, new in pairs]
        if len(set(news)) != len(news):
            raise ValueError(f"rename_columns(): two columns would be named alike: {dict(pairs)}")
        known = self.column_names
        if known is not None:
            clash = sorted(set(news) & (set(known) - {old for old, _ in pairs}))
            if clash:
                raise ValueError(f"rename_columns(): a column is already named {clash}; the columns are {known}")
        return self._columns("rename_columns", pairs)

    def _columns(self, kind: str, pairs: list[tuple[str, str]]) -> Dataset:
        stage = ColumnsStage(kind=kind, pairs=tuple(pairs))
        known = self.features
        if known is not None:
            stage.apply(known)  # an unknown column fails here, not at the first batch
        return self._then(stage)

    @overload
    def split(self, parts: Mapping[str, float], *, seed: int = ..., by: str | None = ...) -> dict[str, Dataset]: ...

    @overload
    def split(
        self, parts: str, *, seed: int = ..., by: str | None = ..., split_rate: float | None = ...
    ) -> Dataset: ...

    def split(
        self,
        parts: Mapping[str, float] | str,
        *,
        seed: int = DEFAULT_SEED,
        by: str | None = None,
        split_rate: float | None = None,
    ) -> dict[str, Dataset] | Dataset:
        """Named parts, each an ordinary pipeline: by proportions (hashing each record), or an HF slice.

        ``split({"train": 0.98, "validation": 0.02}, seed=0)`` gives a dict of datasets: each record goes to
        one part by a hash of ``seed`` and its place — its file's path relative to the dataset's common
        folder and its record number — or of its ``by`` column (an id). The same record always goes to the
        same part, on any number of ranks or workers, and adding files beside the others leaves the
        existing records where they were; files added in another folder, which moves the folder all files
        share, reassign them (key by an id column, ``by=``, where the data grows that way). Proportions hold
        within sampling noise (about ``sqrt(p(1-p)/rows)``); proportions summing below 1 leave the rest out.

        ``split("train[:10%]")``, ``"train[1000:2000]"``, ``"train[:10%]+train[-80%:]"``: HF's slice syntax,
        rows by their position in the files' order (right after :func:`open`; files outside the slice are
        not read). The name is only a label, as the dataset is already one split: ``split("train")`` is all of
        it, and a bare other name (``"validation"``) is refused without ``split_rate``.

        ``split("train", split_rate=0.9)`` (Streaming-Dataloader's ``split``/``split_rate``): the hash split
        ``{"train": 0.9, "validation": 0.1}``, its ``"train"`` part (``"validation"`` for the rest).

        >>> import headrace as hr, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp(), "rows.jsonl")
        >>> _ = path.write_text("".join(f'{{"id": {i}}}\\n' for i in range(1000)))
        >>> parts = hr.open(str(path)).split({"train": 0.9, "validation": 0.1}, seed=1)
        >>> train, val = ([r["id"] for r in parts[k]] for k in ("train", "validation"))
        >>> len(train) + len(val), sorted(train + val) == list(range(1000)), 60 < len(val) < 140
        (1000, True, True)
        >>> [r["id"] for r in hr.open(str(path)).split("train[:1%]")]
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"split(seed=...) must be an integer >= 0, got {seed!r}")
        if by is not None and (not isinstance(by, str) or not by):
            raise ValueError(f"split(by=...) names the id column, got {by!r}")
        if isinstance(parts, str):
            return self._split_named(parts, seed, by, split_rate)
        if split_rate is not None:
            raise ValueError("split(split_rate=...) goes with a part name, as in split('train', split_rate=0.9)")
        names, shares = check_parts(parts)
        known = self.column_names
        if by is not None and known is not None and by not in known:
            raise ValueError(f"split(by={by!r}): no such column; the columns are {known}")
        keys = () if by is not None else self._place_keys()
        return {name: self._then(SplitStage(names=names, shares=shares, part=i, seed=seed, by=by, keys=keys))
                for i, name in enumerate(names)}  # fmt: skip

    def _split_named(self, spec: str, seed: int, by: str | None, split_rate: float | None) -> Dataset:
        if split_rate is not None:
            if isinstance(split_rate, bool) or not isinstance(split_rate, int | float) or not 0 < split_rate < 1:
                raise ValueError(f"split(split_rate=...) is the share of 'train', in (0, 1), got {split_rate!r}")
            if spec not in ("train", "validation", "val", "test"):
                raise ValueError(f"split({spec!r}, split_rate=...): the part is 'train' or 'validation' (the rest)")
            parts = self.split({"train": split_rate, "validation": 1 - split_rate}, seed=seed, by=by)
            return parts["train" if spec == "train" else "validation"]
        name, slices = parse_slice(spec)
        if slices == [(None, None, "abs")]:
            if name != "train":  # a Streaming-Dataloader habit without its split_rate: not the training rows again
                raise ValueError(f"split({spec!r}): the files you opened are one split, all of it 'train'; for a "
                                 f"{name!r} part pass split_rate= (split({name!r}, split_rate=0.9) is the rest after "
                                 "90% for 'train'), split by proportions, or open the files of that split")  # fmt: skip
            return self  # "train": the whole split, as in HF
        root = self.root
        if len(self.stages) != 1 or not isinstance(root, SourceStage):
            raise ValueError(f"split({spec!r}) slices the files' rows by position: call it right after open()")
        if by is not None:
            raise ValueError(f"split({spec!r}, by=...): by= goes with a split by proportions")
        source, stage = slice_source(root.source, spec)
        return Dataset(stage, Dataset(SourceStage(source)))

    def train_test_split(
        self,
        test_size: float | None = None,
        train_size: float | None = None,
        *,
        seed: int = DEFAULT_SEED,
        by: str | None = None,
    ) -> dict[str, Dataset]:
        """``{"train": ..., "test": ...}`` as HF's ``train_test_split``, by :meth:`split` (hashed records).

        Proportions only (``test_size=0.1``; default 0.25, or the rest of ``train_size``): a stream's row
        count is not known ahead, so the parts hold their shares within sampling noise, not exact counts.
        For an exact number of rows, slice: ``split("train[:1000]")``.
        """
        for name, value in (("test_size", test_size), ("train_size", train_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, float) or not 0 < value < 1):
                raise ValueError(f"train_test_split({name}={value!r}): give a proportion in (0, 1), e.g. 0.1; for "
                                 "an exact number of rows, slice: split('train[:1000]')")  # fmt: skip
        if test_size is None:
            test_size = 0.25 if train_size is None else 1.0 - train_size
        if train_size is None:
            train_size = 1.0 - test_size
        parts = self.split({"train": train_size, "test": test_size}, seed=seed, by=by)
        return {"train": parts["train"], "test": parts["test"]}

    def take(self, n: int) -> Dataset:
        """The first ``n`` rows of the stream each consumer (rank) sees."""
        return self._then(LimitStage(skip=0, take=count(n, "take"), block_rows=self.block_rows))

    def skip(self, n: int) -> Dataset:
        """All but the first ``n`` rows of the stream each consumer (rank) sees."""
        return self._then(LimitStage(skip=count(n, "skip"), take=-1, block_rows=self.block_rows))

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
        truncation: bool = False,
        max_length: int | None = None,
        padding: bool | str = False,
        pad_id: int | None = None,
        return_attention_mask: bool | None = None,
    ) -> Dataset:
        """Tokenize ``column`` into ``output`` (a list of ids per row), in the tokenizer's native batch encoder.

        ``tokenizer``: a ``tokenizers.Tokenizer``, a ``transformers`` fast tokenizer, a ``tiktoken``
        encoding, a path to a ``tokenizer.json`` (or its folder), or ``"tiktoken:NAME"``. ``add_eos``
        appends the end-of-text id (``eos_id`` overrides the tokenizer's), ``add_bos`` prepends BOS.

        For per-document models (not packed), as ``transformers`` does: ``truncation=True`` cuts each
        text so that it fits ``max_length`` ids with BOS/EOS (kept) counted in; ``padding="max_length"``
        pads every row on the right to ``max_length`` with ``pad_id`` (default: the tokenizer's pad
        token), making ``output`` a ``[rows, max_length]`` array, and adds ``attention_mask`` (1 on real
        tokens). ``return_attention_mask=True`` adds it without padding too (for
        ``batch(n, pad="longest", pad_value={"input_ids": pad_id})``: padding per batch).
        """
        from headrace.stages.tokenize import token_lengths

        tok = load_tokenizer(tokenizer)
        bos = (bos_id if bos_id is not None else tok.bos_id) if add_bos else None
        eos = (eos_id if eos_id is not None else tok.eos_id) if add_eos else None
        if add_bos and bos is None:
            raise TokenizerError(f"{tok.name}: no BOS token known; pass bos_id= or add_bos=False")
        if add_eos and eos is None:
            raise TokenizerError(f"{tok.name}: no EOS token known; pass eos_id= or add_eos=False")
        fit = token_lengths(tok, int(bos is not None) + int(eos is not None), truncation=truncation,
                            max_length=max_length, padding=padding, pad_id=pad_id,
                            attention_mask=return_attention_mask)  # fmt: skip
        return self._then(TokenizeStage(tokenizer=tok, column=column, output=output, bos=bos, eos=eos,
                                        remove_column=remove_column, fit=fit))  # fmt: skip

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
            return self._then(BestFitStage(seq_len=seq_len, pad_id=pad_id, buffer=positive(buffer, "buffer"),
                                           column=column))  # fmt: skip
        if mode not in ("concat", "document"):
            raise ValueError(f"pack(mode=...) must be 'concat', 'document' or 'bestfit', got {mode!r}")
        if remainder not in ("drop", "pad"):
            raise ValueError(f"pack(remainder=...) must be 'drop' or 'pad', got {remainder!r}")
        return self._then(WindowStage(kind="pack", seq_len=seq_len, stride=seq_len, shift=0,
                                      documents=mode == "document", remainder=remainder, pad_id=pad_id,
                                      batch_size=0, seed=0, column=column))  # fmt: skip

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

        Which shift for which model: the default ``shift=1`` gives labels already shifted, for a loss
        computed as ``F.cross_entropy(model(input_ids), labels)`` (nanoGPT). Hugging Face causal-LM
        models (``model(input_ids=..., labels=...)``) shift the labels themselves: give them
        ``window(seq_len, shift=0)``, whose ``labels`` equal ``input_ids``; with ``shift=1`` they would
        learn to predict the token two places ahead.
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
        return self._then(WindowStage(kind="window", seq_len=seq_len, stride=stride, shift=shift, documents=documents,
                                      remainder="drop", pad_id=0, batch_size=batch_size or 0, seed=seed,
                                      column=column))  # fmt: skip

    def chat(
        self,
        tokenizer: Any,
        *,
        template: str | None = None,
        column: str = "messages",
        max_rendered_chars: int = 0,
        tokenize: bool = True,
        text_column: str | None = None,
    ) -> Dataset:
        """Render message lists with a Jinja chat template, tokenize, and label only assistant turns.

        Emits ``input_ids`` and ``labels`` (-100 outside assistant turns). ``template`` defaults to the
        tokenizer's own chat template (``tokenizer_config.json``). The template is untrusted and runs in a
        bounded sandbox: a rendering over ``max_rendered_chars`` characters (0: 16 Mi) is a ``RecordError``.
        ``text_column="text"`` also keeps the rendered conversation, as ``apply_chat_template(messages,
        tokenize=False)`` gives it; ``tokenize=False`` renders only (into ``text_column``, default ``"text"``).
        """
        from headrace.stages.chat import compile_template

        if not isinstance(max_rendered_chars, int) or max_rendered_chars < 0:
            raise ValueError(f"chat(max_rendered_chars=...) must be a positive int (0: the default), got "
                             f"{max_rendered_chars!r}")  # fmt: skip
        if not isinstance(tokenize, bool):
            raise ValueError(f"chat(tokenize=...) must be True or False, got {tokenize!r}")
        if text_column is not None and (not isinstance(text_column, str) or not text_column):
            raise ValueError(f"chat(text_column=...) must name a column, got {text_column!r}")
        if text_column in ("input_ids", "labels") and tokenize:
            raise ValueError(f"chat(text_column={text_column!r}) would overwrite the token ids; name another column")
        tok = load_tokenizer(tokenizer)
        source = template or tok.chat_template
        if source is None:
            raise TokenizerError(f"{tok.name}: no chat template; pass chat(template=...) with a Jinja chat template")
        compile_template(source)  # a broken template fails here, not at the first batch
        text = text_column if text_column is not None or tokenize else "text"
        return self._then(ChatStage(tokenizer=tok, template=template, column=column,
                                    max_rendered_chars=max_rendered_chars, tokenize=tokenize,
                                    text_column=text))  # fmt: skip

    def mask(
        self,
        tokenizer: Any,
        *,
        probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int = DEFAULT_SEED,
        column: str = "input_ids",
    ) -> Dataset:
        """BERT masked-LM: ``probability`` of non-special tokens chosen, 80% ``[MASK]``, 10% random, 10% kept.

        ``mask_replace_prob`` and ``random_replace_prob`` (``DataCollatorForLanguageModeling``'s names)
        are the shares of the chosen tokens that become ``[MASK]`` and a random id; the rest is kept.
        ``labels`` hold the original ids at chosen positions and -100 elsewhere; deterministic from
        ``rng(seed, epoch, stage, index)``.
        """
        from headrace.stages.mlm import check_shares

        if not 0.0 < probability < 1.0:
            raise ValueError(f"mask(probability=...) must be in (0, 1), got {probability}")
        shares = check_shares(mask_replace_prob, random_replace_prob)
        tok = load_tokenizer(tokenizer)
        if tok.mask_id is None:
            raise TokenizerError(f"{tok.name}: no mask token ([MASK] or <mask>) known; use a masked-LM tokenizer")
        return self._then(MaskStage(tokenizer=tok, probability=probability, seed=seed, column=column, shares=shares))

    def decode_images(
        self,
        column: str = "jpg",
        *,
        output: str = "image",
        mode: str = "RGB",
        size: int | tuple[int, int] | None = None,
        remove_column: bool = True,
        errors: str | None = None,
        image_root: str | None = None,
    ) -> Dataset:
        """Decode the encoded images of ``column`` (JPEG, PNG, WebP, ...: Pillow) into ``uint8`` arrays ``[H, W, C]``.

        ``mode``: ``"RGB"`` (C=3), ``"RGBA"`` (C=4) or ``"L"`` (grey, C=1). ``size=(h, w)`` (or ``n``
        for square) resizes every image (bilinear), and ``output`` is then one ``[rows, h, w, C]``
        array; without it, an array per row. A sample that does not decode is a
        :class:`~headrace.RecordError` naming the shard, record and key, or with ``errors="skip"`` or
        ``"warn"`` (default: the policy given to ``open``) skipped and counted in ``loader.skipped``.
        Needs Pillow (``pip install "headrace[images]"``).

        ``column`` may also hold Hugging Face ``Image`` structs (``{"bytes", "path"}``, as ``datasets``
        writes them to Parquet): their bytes are decoded, or where those are null the file at ``path``,
        relative to the shard's folder (or to ``image_root``). Files are read only inside the dataset's
        folder (or ``image_root``): a path leading elsewhere is refused as a bad sample.
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
        if image_root is not None and (not isinstance(image_root, str) or not image_root):
            raise ValueError(f"decode_images(image_root=...) must be a folder (a path or URL), got {image_root!r}")
        return self._then(DecodeImagesStage(column=column, output=output, mode=mode, size=size_pair(size, "size"),
                                            remove_column=remove_column, errors=policy,
                                            image_root=image_root))  # fmt: skip

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
        return self._then(AugmentStage(column=column, crop=crop, padding=padding, padding_mode=padding_mode,
                                       flip=flip, seed=seed))  # fmt: skip

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
        return self._then(BatchStage(size=size, drop_last=drop_last, pad=pad, pad_value=pad_value,
                                     batch_format=batch_options(size, pad, batch_format)))  # fmt: skip

    def shard(self, num_shards: int, index: int) -> Dataset:
        """Keep part ``index`` of ``num_shards`` equal parts (on top of the rank split); right after open()."""
        if not self._at_source():
            raise ValueError("shard() must come right after open() (or split()): it splits what the source reads")
        if not 0 <= index < num_shards:
            raise ValueError(f"need 0 <= index < num_shards, got index={index} num_shards={num_shards}")
        return Dataset(ShardStage(num_shards=num_shards, index=index), self)

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


def _mixed(root: MixStage) -> list[Dataset]:
    """A mixture's children as the pipelines :func:`~headrace.sources.mix` made them (plan.py sees Upstreams)."""
    kids = [child for child in root.children if isinstance(child, Dataset)]
    assert len(kids) == len(root.children), "a mixture's children are Datasets"
    return kids


def _names(column_names: str | Sequence[str], what: str) -> list[str]:
    names = [column_names] if isinstance(column_names, str) else list(column_names)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{what}: give column names (each once), got {column_names!r}")
    return names


__all__ = ["REMAINDERS", "Context", "Dataset"]
