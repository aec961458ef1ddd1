"""``decode_images`` and ``augment``: image bytes to uint8 arrays (Pillow), then random crops and flips.

Decoding runs as a block function on the loader's workers (Pillow releases the GIL while it
decodes); a sample that does not decode is marked in the block, and :class:`RejectNode` applies the
error policy to it in the loader's order: ``raise`` a :class:`RecordError` naming the shard, the
record and the key, or ``skip``/``warn`` (counted in ``loader.skipped``).

``augment`` draws each image's crop and flip from ``rng(seed, epoch, stage, lineage)``, the lineage
being the row's ``(shard, record)``: the same image gets the same augmentation in an epoch whatever
the shuffle, the block boundaries, the number of workers or a resume, and another one the next
epoch. Nothing random is kept in the state.

Pillow is imported when the first image is decoded: core headrace does not need it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from headrace.core.block import Block, Column, to_pylist
from headrace.core.errors import RecordError, SchemaError
from headrace.core.node import Node, State
from headrace.core.policy import ErrorLog, Policy
from headrace.core.rng import rng

MODES = {"RGB": 3, "RGBA": 4, "L": 1}
PADDING_MODES = ("constant", "edge", "reflect")
PROBLEMS = "__headrace_image_problem__"  # the column in which decoding marks the rows that failed
BlockFn = Callable[[Block], Block]


def decode_image(data: bytes, mode: str = "RGB", size: tuple[int, int] | None = None) -> np.ndarray:
    """An encoded image (JPEG, PNG, WebP, ... anything Pillow reads) as a ``uint8`` array ``[H, W, C]``.

    ``mode`` is ``"RGB"`` (C=3), ``"RGBA"`` (C=4) or ``"L"`` (grey, C=1); ``size=(h, w)`` resizes
    (bilinear, aspect ratio not kept).

    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (4, 2), (255, 0, 0)).save(buf, format="PNG")
    >>> decode_image(buf.getvalue()).shape, decode_image(buf.getvalue(), "L", size=(3, 5)).shape
    ((2, 4, 3), (3, 5, 1))
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        converted = image if image.mode == mode else image.convert(mode)
        if size is not None and (converted.height, converted.width) != size:
            converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(converted, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _decode_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # broken files raise OSError (UnidentifiedImageError, truncated data), ValueError, or in some
    # plugins SyntaxError and EOFError; oversized ones DecompressionBombError
    return OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError


def decode_fn(
    *,
    column: str,
    output: str,
    mode: str,
    size: tuple[int, int] | None,
    remove_column: bool,
    lineage: Callable[[int, int], str],
) -> BlockFn:
    """A block function decoding ``column`` into ``output``; rows that fail are marked, see :class:`RejectNode`.

    ``output`` is a ``uint8`` array ``[rows, h, w, C]`` with ``size``, else an object array of
    ``[H, W, C]`` arrays (images may differ in size).
    """

    def per_block(block: Block) -> Block:
        col = block.columns.get(column)
        if col is None:
            raise SchemaError(f"decode_images(column={column!r}): no such column; the columns are "
                              f"{list(block.columns)}")  # fmt: skip
        caught = _decode_errors()
        keys = to_pylist(block.columns["__key__"]) if "__key__" in block.columns else None
        images: list[np.ndarray | None] = []
        problems: list[str | None] = []
        for i, data in enumerate(to_pylist(col)):
            try:
                if data is None:
                    raise ValueError("the sample has no such member")
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise ValueError(f"a {type(data).__name__}, not encoded image bytes")
                images.append(decode_image(bytes(data), mode, size))
                problems.append(None)
            except caught as e:
                where = lineage(int(block.shard[i]), int(block.row[i]))
                key = f" (key {keys[i]!r})" if keys is not None else ""
                images.append(None)
                problems.append(f"{where}{key}: column {column!r} is not an image Pillow can decode "
                                f"({type(e).__name__}: {e}); remove the sample or open with errors='skip'")  # fmt: skip
        columns = {k: c for k, c in block.columns.items() if not (remove_column and k == column)}
        columns[output] = _images_column(images, size, MODES[mode])
        columns[PROBLEMS] = _objects(problems)
        return Block(columns=columns, shard=block.shard, row=block.row)

    return per_block


def _images_column(images: Sequence[np.ndarray | None], size: tuple[int, int] | None, channels: int) -> Column:
    if size is None:
        return _objects(images)
    out = np.zeros((len(images), size[0], size[1], channels), dtype=np.uint8)
    for i, image in enumerate(images):
        if image is not None:
            out[i] = image
    return out


def _objects(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


class RejectNode(Node[Block]):
    """Drops the rows that :func:`decode_fn` marked, after the error policy: ``raise``, or count and skip.

    The state is the upstream's and the count skipped here; errors are recorded in the order the rows
    are delivered, so each is counted exactly once across a checkpoint and resume.
    """

    upstream: Node[Block]

    def __init__(self, upstream: Node[Block], policy: Policy) -> None:
        self.upstream = upstream
        self.errors = ErrorLog(policy)
        self.reset(None)

    def reset(self, state: State | None) -> None:
        self.upstream.reset(None if state is None else state["upstream"])
        self.errors.skipped = 0 if state is None else int(state["skipped"])

    def state_dict(self) -> State:
        return {"upstream": self.upstream.state_dict(), "skipped": self.errors.skipped}

    def next(self) -> Block:
        while True:
            block = self.upstream.next()
            problems = block.columns[PROBLEMS]
            bad = np.array([p is not None for p in to_pylist(problems)], dtype=bool)
            for i in np.flatnonzero(bad):
                self.errors.record(RecordError(str(problems[i])))
            columns = {k: c for k, c in block.columns.items() if k != PROBLEMS}
            clean = Block(columns=columns, shard=block.shard, row=block.row)
            if bad.any():
                clean = clean.filter(~bad)
            if clean.num_rows:
                return clean


def crop_and_flip(
    image: np.ndarray,
    gen: np.random.Generator,
    *,
    crop: tuple[int, int] | None,
    padding: int = 0,
    padding_mode: str = "constant",
    flip: bool = False,
) -> np.ndarray:
    """``image`` ``[H, W, C]`` padded by ``padding`` on each side, cropped at random to ``crop=(h, w)``, and
    flipped left-right with probability 1/2 — the draws, in that order, from ``gen``.

    >>> image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    >>> out = crop_and_flip(image, np.random.default_rng(0), crop=(4, 4), padding=1, flip=True)
    >>> out.shape, out.dtype
    ((4, 4, 1), dtype('uint8'))
    """
    if crop is not None:
        if padding:
            pad = ((padding, padding), (padding, padding), (0, 0))
            image = np.pad(image, pad, mode=padding_mode)  # type: ignore[call-overload]
        h, w = crop
        top = int(gen.integers(0, image.shape[0] - h + 1))
        left = int(gen.integers(0, image.shape[1] - w + 1))
        image = image[top : top + h, left : left + w]
    if flip and gen.random() < 0.5:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)


def lineage_index(shard: int, row: int) -> int:
    """One ``rng`` index per row lineage ``(shard, record)``, distinct for distinct lineages.

    >>> lineage_index(0, 5), lineage_index(1, 0)
    (5, 281474976710656)
    """
    return (shard << 48) + row


def augment_fn(
    *,
    column: str,
    crop: tuple[int, int] | None,
    padding: int,
    padding_mode: str,
    flip: bool,
    seed: int,
    epoch: int,
    stage: int,
    lineage: Callable[[int, int], str],
) -> BlockFn:
    """A block function augmenting the images of ``column``, each from ``rng(seed, epoch, stage, its lineage)``."""

    def per_block(block: Block) -> Block:
        images = _images(block, column)
        out = []
        for i, image in enumerate(images):
            shard, row = int(block.shard[i]), int(block.row[i])
            if shard < 0 or row < 0:
                raise ValueError(
                    "augment() draws each image's randomness from its lineage (shard, record), and these rows "
                    "have none (a batched map changed the row count): augment before such a map"
                )
            if crop is not None and (image.shape[0] + 2 * padding < crop[0] or image.shape[1] + 2 * padding < crop[1]):
                raise ValueError(
                    f"{lineage(shard, row)}: augment(random_crop={crop}) on an image of {image.shape[0]}x"
                    f"{image.shape[1]} with padding={padding}; crop at most the padded size, or decode_images(size=...)"
                )
            gen = rng(seed, epoch, stage, lineage_index(shard, row))
            out.append(crop_and_flip(image, gen, crop=crop, padding=padding, padding_mode=padding_mode, flip=flip))
        col = block.columns[column]
        if crop is not None or (isinstance(col, np.ndarray) and col.ndim == 4):
            stacked: Column = np.stack(out) if out else np.zeros((0, 0, 0, 0), dtype=np.uint8)
        else:
            stacked = _objects(out)
        return Block(columns={**block.columns, column: stacked}, shard=block.shard, row=block.row)

    return per_block


def _images(block: Block, column: str) -> Sequence[np.ndarray]:
    col = block.columns.get(column)
    if col is None:
        raise SchemaError(f"augment(column={column!r}): no such column; decode_images() first "
                          f"(the columns are {list(block.columns)})")  # fmt: skip
    if isinstance(col, np.ndarray) and col.ndim == 4:
        return list(col)
    if (
        isinstance(col, np.ndarray)
        and col.dtype == object
        and all(isinstance(v, np.ndarray) and v.ndim == 3 for v in col)
    ):
        return list(col)
    what = getattr(col, "type", None) or f"a {col.ndim}-D array of {col.dtype}"
    raise SchemaError(f"augment(column={column!r}): the column holds {what}, not images [H, W, C]; "
                      "decode_images() first")  # fmt: skip
