"""``tokenize``: a text column into token ids, as an Arrow list column built from flat arrays.

The tokenizer's native batch encoder does the work (and releases the GIL, so the loader's worker
threads tokenize blocks in parallel); the ids of a block come back as one flat array plus one
length per document, and become a ``list<int32>`` column without a Python list per row.

For per-document models (a BERT classifier) :class:`Lengths` cuts and pads as ``transformers``
does with ``truncation=True, max_length=n, padding="max_length"``: the special tokens count within
``max_length`` (the text is cut, then BOS/EOS are added, so EOS is kept), rows are padded on the
right with the pad id into a ``[rows, max_length]`` array, and ``attention_mask`` is 1 on real tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core.block import Block, Column, arrow_numbers
from headrace.core.errors import RecordError, SchemaError
from headrace.tokenizer import Tokenizer, TokenizerError


@dataclass(frozen=True)
class Lengths:
    """How ``tokenize`` cuts and pads each document; the default leaves documents whole and unpadded.

    ``max_length``: the most ids per row, special tokens included. ``truncation``: cut longer texts
    (else a longer row is an error when padding). ``pad_id``: pad every row to ``max_length`` with it
    (None: no padding). ``attention_mask``: add that column (1 on real tokens, 0 on padding).

    >>> Lengths(max_length=8, truncation=True, pad_id=0, attention_mask=True).describe()
    {'max_length': 8, 'truncation': True, 'pad_id': 0, 'attention_mask': True}
    """

    max_length: int | None = None
    truncation: bool = False
    pad_id: int | None = None
    attention_mask: bool = False

    def describe(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "truncation": self.truncation, "pad_id": self.pad_id,
                "attention_mask": self.attention_mask}  # fmt: skip


WHOLE = Lengths()
PER_BATCH = 'batch(n, pad="longest", pad_value={"input_ids": pad_id})'


def token_lengths(
    tokenizer: Tokenizer,
    specials: int,
    *,
    truncation: bool,
    max_length: int | None,
    padding: bool | str,
    pad_id: int | None,
    attention_mask: bool | None,
) -> Lengths:
    """``tokenize()``'s ``truncation``, ``max_length``, ``padding``, ``pad_id`` and ``return_attention_mask``
    checked (``specials``: how many BOS/EOS ids each row gets) and made a :class:`Lengths`.

    >>> from tokenizers import Tokenizer as HF, models
    >>> from headrace.tokenizer import load_tokenizer
    >>> tok = load_tokenizer(HF(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]")))
    >>> token_lengths(tok, 1, truncation=True, max_length=4, padding="max_length", pad_id=None, attention_mask=None)
    Lengths(max_length=4, truncation=True, pad_id=0, attention_mask=True)
    """
    if not isinstance(truncation, bool):
        raise ValueError(f"tokenize(truncation=...) must be True or False (the end is cut), got {truncation!r}")
    if padding is True or padding == "longest":
        raise ValueError(f"tokenize(padding={padding!r}): padding to the longest row of each batch is batch()'s "
                         f"work: tokenize(..., return_attention_mask=True).{PER_BATCH}; or pad every row "
                         "here with padding='max_length'")  # fmt: skip
    if padding not in (False, None, "do_not_pad", "max_length"):
        raise ValueError(f"tokenize(padding=...) must be False or 'max_length', got {padding!r}")
    pad = padding == "max_length"
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < max(specials, 1)):  # fmt: skip
        raise ValueError(f"tokenize(max_length=...) must be an int of at least {max(specials, 1)} (the BOS/EOS ids "
                         f"count within it), got {max_length!r}")  # fmt: skip
    if (truncation or pad) and max_length is None:
        what = "truncation=True" if truncation else "padding='max_length'"
        raise ValueError(f"tokenize({what}) needs max_length= (headrace does not read the model's "
                         "model_max_length)")  # fmt: skip
    if max_length is not None and not (truncation or pad):
        raise ValueError(f"tokenize(max_length={max_length}) does nothing alone: add truncation=True to cut "
                         "longer texts and/or padding='max_length' to pad shorter ones")  # fmt: skip
    if pad_id is not None and not pad:
        raise ValueError(f"tokenize(pad_id={pad_id}) pads with padding='max_length' only; for padding per batch "
                         f"pass it to {PER_BATCH}")  # fmt: skip
    if pad:
        pad_id = pad_id if pad_id is not None else tokenizer.pad_id
        if pad_id is None:
            raise TokenizerError(f"{tokenizer.name}: no pad token known ([PAD], <pad> or <|pad|>, or transformers' "
                                 "pad_token_id); pass tokenize(..., pad_id=)")  # fmt: skip
    mask = pad if attention_mask is None else bool(attention_mask)
    return Lengths(max_length=max_length, truncation=truncation, pad_id=pad_id, attention_mask=mask)


def truncated(flat: np.ndarray, lengths: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` ids of each document of ``(flat, lengths)``.

    >>> ids, n = truncated(np.array([1, 2, 3, 4, 5, 6]), np.array([4, 0, 2]), 3)
    >>> ids.tolist(), n.tolist()
    ([1, 2, 3, 5, 6], [3, 0, 2])
    """
    if not len(lengths) or int(lengths.max()) <= limit:
        return flat, lengths
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = (np.arange(len(flat)) - starts) < limit
    return flat[keep], np.minimum(lengths, limit)


def padded(flat: np.ndarray, lengths: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, attention_mask)``: ``[rows, width]`` arrays, each row's ids then ``pad_id`` (mask 1 then 0).

    >>> ids, mask = padded(np.array([7, 8, 9]), np.array([2, 1]), 3, 0)
    >>> ids.tolist(), mask.tolist()
    ([[7, 8, 0], [9, 0, 0]], [[1, 1, 0], [1, 0, 0]])
    """
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(lengths), width), pad_id, dtype=flat.dtype)
    ids[mask] = flat  # row-major order: each row's ids in order, rows one after another
    return ids, mask.astype(np.int8)


def tokenize_fn(
    tokenizer: Tokenizer,
    *,
    column: str,
    output: str,
    bos: int | None,
    eos: int | None,
    remove_column: bool,
    lineage: Callable[[int, int], str],
    fit: Lengths = WHOLE,
) -> Callable[[Block], Block]:
    """A block function: ``output`` = ids of ``column`` with ``bos``/``eos`` around each document.

    ``fit`` cuts, pads and masks as :class:`Lengths` says: padded, ``output`` and ``attention_mask``
    are ``[rows, max_length]`` arrays; else list columns.
    """
    dtype = np.int32 if tokenizer.vocab_size < 2**31 else np.int64
    arrow_type = pa.int32() if dtype == np.int32 else pa.int64()
    extra = int(bos is not None) + int(eos is not None)

    def per_block(block: Block) -> Block:
        col = block.columns.get(column)
        if col is None:
            raise SchemaError(f"tokenize(column={column!r}): no such column; the columns are {list(block.columns)}")
        texts = col.to_pylist() if isinstance(col, pa.Array) else list(col)
        if isinstance(col, pa.Array) and not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            where = lineage(int(block.shard[0]), int(block.row[0])) if block.num_rows else "?"
            raise SchemaError(f"tokenize(column={column!r}): the column holds {col.type}, not text (at {where}); "
                              "choose a text column or convert it with map()")  # fmt: skip
        if any(t is None for t in texts):
            i = next(i for i, t in enumerate(texts) if t is None)
            raise SchemaError(f"tokenize: {lineage(int(block.shard[i]), int(block.row[i]))} has no text (null) "
                              f"in column {column!r}; filter such rows out first")  # fmt: skip
        flat, lengths = tokenizer.encode_batch(texts)
        flat = flat.astype(dtype, copy=False)
        if fit.truncation and fit.max_length is not None:
            flat, lengths = truncated(flat, lengths, fit.max_length - extra)
        if extra:
            lengths = lengths + extra
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            out = np.empty(int(lengths.sum()), dtype=dtype)
            body = np.ones(len(out), dtype=bool)
            if bos is not None:
                out[starts] = bos
                body[starts] = False
            if eos is not None:
                out[starts + lengths - 1] = eos
                body[starts + lengths - 1] = False
            out[body] = flat
            flat = out
        columns = {k: v for k, v in block.columns.items() if not (remove_column and k == column) and k != output}
        if fit.pad_id is not None and fit.max_length is not None:
            if len(lengths) and int(lengths.max()) > fit.max_length:
                i = int(np.argmax(lengths > fit.max_length))
                raise RecordError(f"tokenize: {lineage(int(block.shard[i]), int(block.row[i]))} has {int(lengths[i])} "
                                  f"tokens, more than max_length={fit.max_length}; pass truncation=True to cut "
                                  "it, or raise max_length")  # fmt: skip
            ids, mask = padded(flat, lengths, fit.max_length, fit.pad_id)
            columns[output] = ids
            if fit.attention_mask:
                columns["attention_mask"] = mask
            return Block(columns=columns, shard=block.shard, row=block.row)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if len(flat) < 2**31 else np.int64)
        columns[output] = _lists(offsets, flat, arrow_type)
        if fit.attention_mask:
            columns["attention_mask"] = _lists(offsets, np.ones(len(flat), dtype=np.int8), pa.int8())
        return Block(columns=columns, shard=block.shard, row=block.row)

    return per_block


def _lists(offsets: np.ndarray, flat: np.ndarray, arrow_type: pa.DataType) -> Column:
    return pa.ListArray.from_arrays(arrow_numbers(offsets), arrow_numbers(flat, arrow_type))
