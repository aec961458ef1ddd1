"""The error policy for malformed records: ``raise`` (default), ``skip`` or ``warn``.

``skip`` and ``warn`` drop the bad record, count it, and remember where it was; ``warn`` also emits a
``warnings.warn`` naming the file and line. Counts are kept per node and summed by the loader.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

from headrace.core.errors import RecordError

Policy = Literal["raise", "skip", "warn"]
POLICIES: tuple[str, ...] = ("raise", "skip", "warn")
MAX_REMEMBERED = 20


def check_policy(errors: str) -> Policy:
    if errors not in POLICIES:
        raise ValueError(f"errors= must be one of {', '.join(POLICIES)}; got {errors!r}")
    return errors  # type: ignore[return-value]


class SkippedRecordWarning(UserWarning):
    """Emitted once per skipped record under ``errors="warn"``."""


@dataclass
class ErrorLog:
    """What a node skipped: a count and the first few places, each ``"file:line: reason"``."""

    policy: Policy = "raise"
    skipped: int = 0
    where: list[str] = field(default_factory=list)

    def record(self, error: RecordError) -> None:
        """Raise ``error`` under ``raise``; otherwise count it (and warn under ``warn``)."""
        if self.policy == "raise":
            raise error
        self.skipped += 1
        if len(self.where) < MAX_REMEMBERED:
            self.where.append(str(error))
        if self.policy == "warn":
            warnings.warn(f"skipped: {error}", SkippedRecordWarning, stacklevel=3)
