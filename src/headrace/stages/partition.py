"""How the global order is split between consumers (ranks x partitioning workers): pure functions.

Each consumer gets one contiguous range of the global order, all ranges the same length, so every
rank yields the same number of rows by construction. ``remainder="drop"`` leaves out the last
``total % consumers`` rows of the order; ``"pad"`` lengthens the ranges and fills the overhang by
repeating the order from its start.

>>> consumer_range(10, consumer=2, consumers=3, remainder="drop")
(6, 9)
>>> consumer_range(10, consumer=2, consumers=3, remainder="pad")
(8, 12)
"""

from __future__ import annotations

from typing import Literal

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
