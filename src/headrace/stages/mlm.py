"""``mask``: BERT masked-LM inputs and labels, as ``transformers``' ``DataCollatorForLanguageModeling``.

Each token that is not special (the tokenizer's ``special_ids``, its pad id, or a position an
``attention_mask`` column marks as padding) is chosen with probability ``probability``, one
Bernoulli draw per token. Of the chosen tokens 80% become the mask id, 10% a token drawn uniformly
from ``[0, vocab_size)`` and 10% stay as they were (``mask_replace_prob`` and ``random_replace_prob``,
as ``DataCollatorForLanguageModeling`` names them, change these shares: both are fractions of the
chosen tokens, the rest is kept). ``labels`` hold the original id at chosen positions and -100
elsewhere (an existing ``labels`` column is replaced).

The draws of the k-th block this node emits come from ``rng(seed, epoch, stage, k)``: blocks are
deterministic given the upstream position, so the masks are the same for any number of loader
workers and after any resume; the state is the upstream state and ``k``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from headrace.core import state as states
from headrace.core.block import Block, Column, arrow_numbers
from headrace.core.errors import SchemaError
from headrace.core.node import UPSTREAM, Node, State
from headrace.core.rng import rng
from headrace.tokenizer import Tokenizer, TokenizerError

# State keys (their strings are the saved format: never change them).
BLOCKS = "blocks"

IGNORE = -100
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen tokens; the rest keep their id


def check_shares(mask_replace_prob: float, random_replace_prob: float) -> tuple[float, float]:
    """The two shares, checked: each in ``[0, 1]`` and together at most 1 (the rest of the chosen tokens is kept).

    >>> check_shares(1.0, 0.0)
    (1.0, 0.0)
    """
    for name, value in (("mask_replace_prob", mask_replace_prob), ("random_replace_prob", random_replace_prob)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"mask({name}=...) must be a fraction of the chosen tokens in [0, 1], got {value!r}")
    if mask_replace_prob + random_replace_prob > 1.0:
        raise ValueError(f"mask(mask_replace_prob={mask_replace_prob}, random_replace_prob={random_replace_prob}): "
                         "the two shares of the chosen tokens add up to more than 1; the rest (1 - both) is kept "
                         "as it was")  # fmt: skip
    return float(mask_replace_prob), float(random_replace_prob)


def mask_tokens(
    ids: np.ndarray,
    eligible: np.ndarray,
    *,
    probability: float,
    mask_id: int,
    vocab_size: int,
    gen: np.random.Generator,
    mask_replace_prob: float = MASK_SHARE,
    random_replace_prob: float = RANDOM_SHARE,
) -> tuple[np.ndarray, np.ndarray]:
    """``(masked ids, labels)`` for flat ``ids``: BERT's 80/10/10 rule over the ``eligible`` positions.

    Of the chosen positions, a share ``mask_replace_prob`` becomes ``mask_id``, a share
    ``random_replace_prob`` a random id, and the rest keeps its id. One uniform draw per chosen
    position decides (below ``mask_replace_prob``: mask; below both shares together: random), so the
    default shares give the draws they always gave.

    >>> ids = np.arange(10, 20)
    >>> masked, labels = mask_tokens(ids, ids != 10, probability=0.5, mask_id=1, vocab_size=30,
    ...                              gen=np.random.default_rng(0))
    >>> bool(((labels == -100) | (labels == ids)).all()), int(labels[0])
    (True, -100)
    """
    chosen = (gen.random(len(ids)) < probability) & eligible
    where = np.flatnonzero(chosen)
    split = gen.random(len(where))
    masked = ids.copy()
    masked[where[split < mask_replace_prob]] = mask_id
    randomized = where[(split >= mask_replace_prob) & (split < mask_replace_prob + random_replace_prob)]
    masked[randomized] = gen.integers(0, vocab_size, size=len(randomized))
    labels = np.full(len(ids), IGNORE, dtype=np.result_type(ids.dtype, np.int8))
    labels[where] = ids[where]
    return masked, labels


class MaskNode(Node[Block]):
    """Masks ``column`` (a list column of ids per row, or a 2-D array after ``pack``) and adds ``labels``.

    >>> import headrace as hr, json, tempfile, pathlib
    >>> from tokenizers import Tokenizer as HF, models
    >>> vocab = {"[PAD]": 0, "[MASK]": 1, **{f"w{i}": i for i in range(2, 50)}}
    >>> path = pathlib.Path(tempfile.mkdtemp(), "ids.jsonl")
    >>> _ = path.write_text("".join(json.dumps({"input_ids": list(range(2, 50))}) + "\\n" for _ in range(40)))
    >>> rows = list(hr.open(str(path)).mask(HF(models.WordLevel(vocab, unk_token="[PAD]")), seed=1))
    >>> chosen = [i for r in rows for i, l in zip(r["input_ids"], r["labels"]) if l != -100]
    >>> 0.1 < len(chosen) / (40 * 48) < 0.2, chosen.count(1) > 0.7 * len(chosen)
    (True, True)
    """

    upstream: Node[Block]

    def __init__(
        self,
        upstream: Node[Block],
        *,
        tokenizer: Tokenizer,
        probability: float,
        seed: int,
        epoch: int,
        stage: int,
        column: str = "input_ids",
        mask_replace_prob: float = MASK_SHARE,
        random_replace_prob: float = RANDOM_SHARE,
    ) -> None:
        if tokenizer.mask_id is None:
            raise TokenizerError(f"{tokenizer.name}: no mask token ([MASK] or <mask>); mask() needs a tokenizer "
                                 "made for masked-LM, such as BERT's or RoBERTa's")  # fmt: skip
        if not 0.0 < probability < 1.0:
            raise ValueError(f"mask(probability=...) must be in (0, 1), got {probability}")
        self.upstream = upstream
        self.mask_id, self.vocab_size = int(tokenizer.mask_id), int(tokenizer.vocab_size)
        special = set(tokenizer.special_ids) | ({tokenizer.pad_id} if tokenizer.pad_id is not None else set())
        self.special = np.array(sorted(special), dtype=np.int64)
        self.probability, self.seed, self.epoch, self.stage = probability, seed, epoch, stage
        self.column = column
        self.shares = check_shares(mask_replace_prob, random_replace_prob)

    def reset(self, state: State | None) -> None:
        if state is None:
            self.upstream.reset(None)
            self._blocks = 0
        else:
            self._blocks = states.field(state, BLOCKS)
            states.load_child(self.upstream.reset, state, UPSTREAM)

    def state_dict(self) -> State:
        return {UPSTREAM: self.upstream.state_dict(), BLOCKS: self._blocks}

    def next(self) -> Block:
        block = self.upstream.next()
        gen = rng(self.seed, self.epoch, self.stage, self._blocks)
        self._blocks += 1
        col = block.columns.get(self.column)
        if col is None:
            raise SchemaError(f"mask(column={self.column!r}): no such column; tokenize() first "
                              f"(the columns are {list(block.columns)})")  # fmt: skip
        ids = _flat(col, self.column)
        eligible = ~np.isin(ids, self.special)
        padding = block.columns.get("attention_mask")
        if padding is not None:
            pad = _flat(padding, "attention_mask")
            if len(pad) == len(ids):
                eligible &= pad != 0
        masked, labels = mask_tokens(ids, eligible, probability=self.probability, mask_id=self.mask_id,
                                     vocab_size=self.vocab_size, gen=gen, mask_replace_prob=self.shares[0],
                                     random_replace_prob=self.shares[1])  # fmt: skip
        out_type = ids.dtype if np.iinfo(ids.dtype).max >= self.vocab_size - 1 else np.dtype(np.int64)
        columns = dict(block.columns)
        columns[self.column] = _like(col, masked.astype(out_type))
        columns["labels"] = _like(col, labels)
        return Block(columns=columns, shard=block.shard, row=block.row)


def _flat(col: Column, name: str) -> np.ndarray:
    """The ids of a token column back to back (a view where possible)."""
    if isinstance(col, np.ndarray) and col.ndim == 2 and col.dtype.kind in "iu":
        return col.reshape(-1)
    if isinstance(col, pa.Array) and (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        if col.null_count or not pa.types.is_integer(col.type.value_type):
            raise SchemaError(f"mask(column={name!r}): the column holds {col.type} with nulls or non-integers")
        offsets = col.offsets.to_numpy()
        return col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(zero_copy_only=False)
    what = getattr(col, "type", None) or f"a {getattr(col, 'ndim', '?')}-D array of {getattr(col, 'dtype', '?')}"
    raise SchemaError(f"mask(column={name!r}): the column holds {what}, not token ids (a list column or a 2-D array)")


def _like(col: Column, flat: np.ndarray) -> Any:
    """``flat`` shaped as ``col``: a 2-D array, or a list column with ``col``'s row lengths."""
    if isinstance(col, np.ndarray):
        return flat.reshape(col.shape)
    offsets = col.offsets.to_numpy()  # type: ignore[union-attr]
    offsets = offsets - offsets[0]
    list_type = pa.LargeListArray if pa.types.is_large_list(col.type) else pa.ListArray  # type: ignore[union-attr]
    return list_type.from_arrays(arrow_numbers(offsets), arrow_numbers(flat))
