"""``decode_images`` and ``augment``: image bytes to uint8 arrays (Pillow), then random crops and flips.

Decoding runs as a block function on the loader's workers (Pillow releases the GIL while it
decodes); a sample that does not decode is marked in the block, and :class:`RejectNode` applies the
error policy to it in the loader's order: ``raise`` a :class:`RecordError` naming the shard, the
record and the key, or ``skip``/``warn`` (counted in ``loader.skipped``).

``augment`` draws each image's crop and flip from ``uniforms(seed, epoch, stage, lineage)`` (a
counter-based hash, the whole block at once), the lineage being the row's ``(shard, record)``: the
same image gets the same augmentation in an epoch whatever the shuffle, the block boundaries, the
number of workers or a resume, and another one the next epoch. Nothing random is kept in the state.

Pillow is imported when the first image is decoded: core headrace does not need it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from headrace.core import state as states
from headrace.core.block import Block, Column, to_pylist
from headrace.core.errors import RecordError, SchemaError
from headrace.core.node import UPSTREAM, Node, State
from headrace.core.policy import ErrorLog, Policy
from headrace.core.rng import uniforms
from headrace.stages.image_files import ImageFiles

# State keys (their strings are the saved format: never change them).
SKIPPED = "skipped"

MODES = {"RGB": 3, "RGBA": 4, "L": 1}
PADDING_MODES = ("constant", "edge", "reflect")
PROBLEMS = "__headrace_image_problem__"  # the column in which decoding marks the rows that failed
BlockFn = Callable[[Block], Block]
DRAWS = 3  # per image, from uniforms(): the crop's top, its left, the flip
Placed = tuple[list[int], list[int], list[bool]]  # where each image's window is: tops, lefts, mirrored


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
    files: ImageFiles | None = None,
) -> BlockFn:
    """A block function decoding ``column`` into ``output``; rows that fail are marked, see :class:`RejectNode`.

    ``output`` is a ``uint8`` array ``[rows, h, w, C]`` with ``size``, else an object array of
    ``[H, W, C]`` arrays (images may differ in size). ``column`` holds encoded bytes, or Hugging Face
    ``Image`` structs ``{"bytes", "path"}``: their bytes, or where those are null the file ``files``
    reads (see :mod:`headrace.stages.image_files`).
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
            image, problem = None, None
            try:
                image = decode_image(_encoded(data, int(block.shard[i]), files), mode, size)
            except _Unreadable as e:
                problem = f"{e}; remove the sample or open with errors='skip'"
            except caught as e:
                problem = (f"column {column!r} is not an image Pillow can decode ({type(e).__name__}: {e}); remove "
                           "the sample or open with errors='skip'")  # fmt: skip
            if problem is not None:
                where = lineage(int(block.shard[i]), int(block.row[i]))
                key = f" (key {keys[i]!r})" if keys is not None else ""
                problem = f"{where}{key}: {problem}"
            images.append(image)
            problems.append(problem)
        columns = {k: c for k, c in block.columns.items() if not (remove_column and k == column)}
        columns[output] = _images_column(images, size, MODES[mode])
        columns[PROBLEMS] = _objects(problems)
        return Block(columns=columns, shard=block.shard, row=block.row)

    return per_block


class _Unreadable(ValueError):
    """An image struct whose file is not there to read, or may not be read (outside the dataset's folder)."""


def _encoded(data: Any, shard: int, files: ImageFiles | None) -> bytes:
    """The encoded image of one cell: bytes, or an HF ``Image`` struct's bytes or file."""
    if isinstance(data, dict) and "bytes" in data:
        if data["bytes"] is not None:
            data = data["bytes"]
        elif not isinstance(data.get("path"), str):
            raise ValueError("an image struct with neither bytes nor a path")
        elif files is None:
            raise _Unreadable(f"the image has no bytes, only the path {data['path']!r}, and this pipeline has no "
                              "files to read it from")  # fmt: skip
        else:
            try:
                return files.read(shard, data["path"])
            except OSError as e:
                raise _Unreadable(f"the image has no bytes and its file cannot be read ({type(e).__name__}: "
                                  f"{e})") from None  # fmt: skip
            except ValueError as e:
                raise _Unreadable(str(e)) from None
    if data is None:
        raise ValueError("the sample has no such member")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"a {type(data).__name__}, not encoded image bytes")
    return bytes(data)


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

    def reset(self, state: State | None) -> None:
        if state is None:
            self.upstream.reset(None)
            self.errors.skipped = 0
        else:
            self.errors.skipped = states.field(state, SKIPPED)
            states.load_child(self.upstream.reset, state, UPSTREAM)

    def state_dict(self) -> State:
        return {UPSTREAM: self.upstream.state_dict(), SKIPPED: self.errors.skipped}

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
    draws: Sequence[float] | np.ndarray,
    *,
    crop: tuple[int, int] | None,
    padding: int = 0,
    padding_mode: str = "constant",
    flip: bool = False,
) -> np.ndarray:
    """``image`` ``[H, W, C]`` padded by ``padding`` on each side, cropped to ``crop=(h, w)`` and flipped
    left-right as ``draws`` say: three numbers in [0, 1) (a row of :func:`~headrace.core.rng.uniforms`), the
    crop's top and left as fractions of the room the padded image leaves, and a flip when the third is
    below 1/2 (so with probability 1/2 for uniform draws).

    >>> image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    >>> crop_and_flip(image, [0.0, 0.99, 0.25], crop=(3, 3), padding=1, flip=True)[..., 0].tolist()
    [[0, 0, 0], [0, 3, 2], [0, 7, 6]]
    """
    if crop is not None and padding:
        image = _padded(image, padding, padding_mode)
    u = np.asarray(draws, dtype=np.float64).reshape(1, DRAWS)
    (top,), (left,), (mirrored,) = placements(u, np.array([image.shape[:2]]), crop, flip)
    return np.ascontiguousarray(_window(image, top, left, mirrored, crop))


def placements(draws: np.ndarray, sizes: np.ndarray, crop: tuple[int, int] | None, flip: bool) -> Placed:
    """Each image's crop top and left and whether it is mirrored, from its ``draws[i]`` (three in [0, 1))
    and its (padded) size ``sizes[i] = (H, W)``; all at once for a block.

    >>> placements(np.array([[0.5, 0.0, 0.7], [0.99, 0.5, 0.1]]), np.array([[6, 6], [6, 8]]), (4, 4), True)
    ([1, 2], [0, 2], [False, True])
    """
    n = len(draws)
    if crop is None:
        tops, lefts = [0] * n, [0] * n
    else:
        room = sizes - np.asarray(crop) + 1  # the possible offsets of the crop, down and across
        offsets = np.minimum((draws[:, :2] * room).astype(np.int64), room - 1)  # rounding cannot reach room
        tops, lefts = offsets[:, 0].tolist(), offsets[:, 1].tolist()
    mirrored = (draws[:, 2] < 0.5).tolist() if flip else [False] * n
    return tops, lefts, mirrored


def _window(image: np.ndarray, top: int, left: int, mirrored: bool, crop: tuple[int, int] | None) -> np.ndarray:
    """The view of ``image`` that the crop at ``(top, left)`` and the flip give (not a copy)."""
    if crop is not None:
        image = image[top : top + crop[0], left : left + crop[1]]
    return image[:, ::-1] if mirrored else image


def lineage_index(shard: int, row: int) -> int:
    """One randomness index per row lineage ``(shard, record)``, distinct for distinct lineages.

    >>> lineage_index(0, 5), lineage_index(1, 0)
    (5, 281474976710656)
    """
    return (shard << 48) + row


def _lineage_indices(block: Block) -> np.ndarray:
    """:func:`lineage_index` of every row of ``block``, as ``uint64``."""
    if len(block.shard) and (int(block.shard.min()) < 0 or int(block.row.min()) < 0):
        raise ValueError(
            "augment() draws each image's randomness from its lineage (shard, record), and these rows "
            "have none (a batched map changed the row count): augment before such a map"
        )
    return (block.shard.astype(np.uint64) << np.uint64(48)) + block.row.astype(np.uint64)


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
    """A block function augmenting the images of ``column``: one ``uniforms(seed, epoch, stage, lineages)`` call
    draws the whole block's crops and flips, each row's from its own lineage."""

    def per_block(block: Block) -> Block:
        images = _images(block, column)
        indices = _lineage_indices(block)
        if not len(images):
            alike = crop is not None or isinstance(images, np.ndarray)  # as the non-empty blocks are
            empty = np.zeros((0, 0, 0, 0), dtype=np.uint8) if alike else _objects([])
            return Block(columns={**block.columns, column: empty}, shard=block.shard, row=block.row)
        sizes = _sizes(images)
        pad = 0 if crop is None else padding  # padding only makes room for the crop
        if crop is not None:
            _check_fits(block, sizes, crop, padding, lineage)
        placed = placements(uniforms(seed, epoch, stage, indices, DRAWS), sizes + 2 * pad, crop, flip)
        if isinstance(images, np.ndarray):
            out = _augment_array(images, placed, crop, pad, padding_mode)
        else:
            out = _augment_list(images, placed, crop, pad, padding_mode)
        return Block(columns={**block.columns, column: out}, shard=block.shard, row=block.row)

    return per_block


def _sizes(images: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """``[rows, 2]``: the height and width of each image."""
    if isinstance(images, np.ndarray):
        return np.tile(images.shape[1:3], (len(images), 1))
    return np.array([image.shape[:2] for image in images])


def _augment_array(
    images: np.ndarray, placed: Placed, crop: tuple[int, int] | None, padding: int, padding_mode: str
) -> np.ndarray:
    """The windows of one ``[rows, H, W, C]`` array (padded in one call), as one array.

    The copies move whole pixels, the channels of one seen as a single opaque item: a mirrored window
    then copies about twice as fast as channel by channel.
    """
    if padding:
        images = _padded(images, padding, padding_mode)
    pixels = images
    if images.strides[-1] == images.itemsize and images.shape[-1] and not images.dtype.hasobject:
        pixels = images.view(np.dtype((np.void, images.shape[-1] * images.itemsize)))  # [rows, H, W, 1]
    h, w = crop if crop is not None else pixels.shape[1:3]
    out = np.empty((len(pixels), h, w, pixels.shape[-1]), dtype=pixels.dtype)
    for i, (top, left, mirrored) in enumerate(zip(*placed, strict=True)):
        out[i] = _window(pixels[i], top, left, mirrored, crop)
    return out.view(images.dtype)  # [rows, h, w, C] again


def _augment_list(
    images: list[np.ndarray], placed: Placed, crop: tuple[int, int] | None, padding: int, padding_mode: str
) -> Column:
    """The windows of images of different sizes: one array when cropped (to one size), else an object array."""
    if padding:
        images = [_padded(image, padding, padding_mode) for image in images]
    windows = [_window(image, *where, crop) for image, where in zip(images, zip(*placed, strict=True), strict=True)]
    if crop is not None:
        return np.stack(windows)
    return _objects([np.ascontiguousarray(window) for window in windows])


def _check_fits(
    block: Block, sizes: np.ndarray, crop: tuple[int, int], padding: int, lineage: Callable[[int, int], str]
) -> None:
    """ValueError naming the first image that the crop does not fit in, padded."""
    small = np.flatnonzero((sizes + 2 * padding < np.asarray(crop)).any(axis=1))
    if len(small):
        i = int(small[0])
        h, w = sizes[i].tolist()
        raise ValueError(
            f"{lineage(int(block.shard[i]), int(block.row[i]))}: augment(random_crop={crop}) on an image of {h}x{w} "
            f"with padding={padding}; crop at most the padded size, or decode_images(size=...)"
        )


def _padded(images: np.ndarray, padding: int, mode: str) -> np.ndarray:
    """An image ``[H, W, C]``, or images ``[rows, H, W, C]``, padded by ``padding`` on each side."""
    pad = [(0, 0)] * (images.ndim - 3) + [(padding, padding), (padding, padding), (0, 0)]
    return np.pad(images, pad, mode=mode)  # type: ignore[call-overload]


def _images(block: Block, column: str) -> np.ndarray | list[np.ndarray]:
    """The images of ``column``: its ``[rows, H, W, C]`` array, or the ``[H, W, C]`` arrays of an object column."""
    col = block.columns.get(column)
    if col is None:
        raise SchemaError(f"augment(column={column!r}): no such column; decode_images() first "
                          f"(the columns are {list(block.columns)})")  # fmt: skip
    if isinstance(col, np.ndarray) and col.ndim == 4:
        return col
    if (
        isinstance(col, np.ndarray)
        and col.dtype == object
        and all(isinstance(v, np.ndarray) and v.ndim == 3 for v in col)
    ):
        return list(col)
    what = getattr(col, "type", None) or f"a {col.ndim}-D array of {col.dtype}"
    raise SchemaError(f"augment(column={column!r}): the column holds {what}, not images [H, W, C]; "
                      "decode_images() first")  # fmt: skip
