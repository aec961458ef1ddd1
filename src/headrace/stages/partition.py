"""How the global order is split between consumers (ranks x partitioning workers): pure functions.

Each rank gets one contiguous range of the global order, all ranges the same length, so every rank
yields the same number of rows by construction; its workers split that range between them.
``remainder="drop"`` leaves out the last ``total % ranks`` rows of the order; ``"pad"`` lengthens the
ranges and fills the overhang by repeating the order from its start.

>>> consumer_range(10, consumer=2, consumers=3, remainder="drop")
(6, 9)
>>> consumer_range(10, consumer=2, consumers=3, remainder="pad")
(8, 12)
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from headrace.core import state as states
from headrace.core.world import World

Remainder = Literal["drop", "pad"]
REMAINDERS = ("drop", "pad")


def consumer_range(total: int, consumer: int, consumers: int, remainder: Remainder) -> tuple[int, int]:
    """``[start, stop)`` positions of the global order for ``consumer``; positions ``>= total`` wrap."""
    if not 0 <= consumer < consumers:
        raise ValueError(f"consumer {consumer} out of range for {consumers} consumers")
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
    if total == 0:
        return 0, 0
    per = total // consumers if remainder == "drop" else -(-total // consumers)
    return consumer * per, (consumer + 1) * per


def world_range(total: int, world: World, remainder: Remainder) -> tuple[int, int]:
    """``[start, stop)`` of the global order for one consumer of ``world``: the ranks get equal ranges
    (:func:`consumer_range`), and the workers of a rank split its range with no row left out, their lengths
    differing by one at most (what must be equal is each rank's count, their sum).

    >>> world_range(10, World(rank=0, world_size=1, worker=1, num_workers=3), "drop")
    (3, 6)
    >>> [world_range(11, World(rank=1, world_size=2, worker=w, num_workers=2), "drop") for w in (0, 1)]
    [(5, 7), (7, 10)]
    """
    lo, hi = consumer_range(total, world.rank, world.world_size, remainder)
    n, workers = hi - lo, world.num_workers
    return lo + n * world.worker // workers, lo + n * (world.worker + 1) // workers


def elastic_start(start: int, batches: int, start_batches: int, batch_size: int, consumers: int) -> int:
    """Where the global order continues when a state saved on one world resumes on another (elastic resume).

    The saving run began reading the order at position ``start`` after ``start_batches`` batches of the
    epoch, then each of its ``consumers`` (ranks x workers) delivered ``batches - start_batches`` batches
    of ``batch_size`` rows: all of them were consumed, so the new world starts right after them. The
    arguments are those of the *saving* world; the new world's batch size and consumer count do not enter.

    A run of 2 consumers, batch 4, saves after 3 batches; 3 consumers resume it at position 24 and save
    after 2 more batches of 4; 1 consumer resumes that at 48:

    >>> elastic_start(0, batches=3, start_batches=0, batch_size=4, consumers=2)
    24
    >>> elastic_start(24, batches=5, start_batches=3, batch_size=4, consumers=3)
    48
    """
    if start < 0 or not 0 <= start_batches <= batches:
        raise ValueError(f"elastic_start needs start >= 0 and 0 <= start_batches <= batches, got start={start}, "
                         f"start_batches={start_batches}, batches={batches}")  # fmt: skip
    if batch_size < 1 or consumers < 1:
        raise ValueError(f"elastic_start needs batch_size >= 1 and consumers >= 1, got {batch_size} and {consumers}")
    return start + (batches - start_batches) * batch_size * consumers


def strided_length(total: int, start: int, consumers: int, remainder: Remainder) -> int:
    """How many samples each consumer takes from positions ``start..total`` dealt out in turn (equal for all)."""
    left = max(total - start, 0)
    return left // consumers if remainder == "drop" else -(-left // consumers)


def strided_positions(start: int, consumer: int, consumers: int, first: int, n: int, total: int) -> np.ndarray:
    """Global positions of a consumer's samples ``first..first+n``: ``start + consumer + k*consumers``.

    Positions past the end (``remainder="pad"``) wrap to the start of the order.
    """
    k = np.arange(first, first + n, dtype=np.int64)
    return (start + consumer + k * consumers) % max(total, 1)


def strided_state(state: dict[str, Any], start: int, consumers: int, length: int) -> int:
    """The position in a strided state ``{"start", "stride", "pos"}``, checked against this world's reading."""
    saved = (states.field(state, "start"), states.field(state, "stride", lo=1))
    if saved != (start, consumers):
        raise states.refuse("start", f"the state reads the global order from {saved[0]} in steps of {saved[1]}, "
                            f"this world from {start} in steps of {consumers}")  # fmt: skip
    return int(states.field(state, "pos", hi=length))
