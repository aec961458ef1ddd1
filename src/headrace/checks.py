"""Argument checks the fluent API shares: each returns the value, or raises a ValueError naming the argument.

>>> positive(3, "batch size"), size_pair(32, "random_crop"), count(0, "take")
(3, (32, 32), 0)
"""

from __future__ import annotations

from typing import Any

from headrace.stages.batch import BatchOutput, Pad
from headrace.stages.transform import BatchFormat


def check_format(batch_format: str) -> BatchFormat:
    if batch_format not in ("numpy", "python", "arrow"):
        raise ValueError(f"batch_format must be 'numpy', 'python' or 'arrow', got {batch_format!r}")
    return batch_format  # type: ignore[return-value]


def positive(n: int, what: str) -> int:
    """``n`` if it is a positive integer, else a ValueError naming ``what``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")
    return n


def size_pair(size: int | tuple[int, int] | None, what: str) -> tuple[int, int] | None:
    """``(h, w)`` from ``n`` or ``(h, w)``, each a positive integer; None stays None."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(n, int) and n > 0 for n in pair):
        raise ValueError(f"{what} must be a positive integer or (height, width), got {size!r}")
    return (int(pair[0]), int(pair[1]))


def count(n: int, what: str) -> int:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"{what}(n) needs an integer n >= 0, got {n!r}")
    return n


def batch_options(size: int, pad: Pad, batch_format: Any) -> BatchOutput:
    """``batch()``'s arguments checked together; returns the batch format."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    if pad is not None and pad != "longest" and not (isinstance(pad, int) and pad > 0):
        raise ValueError(f"pad must be None, 'longest' or a positive length, got {pad!r}")
    if batch_format not in ("numpy", "arrow"):
        raise ValueError(f"batch_format must be 'numpy' or 'arrow', got {batch_format!r}")
    if batch_format == "arrow" and pad is not None:
        raise ValueError("pad applies to numpy batches: Arrow batches keep ragged columns as lists")
    return batch_format  # type: ignore[no-any-return]
