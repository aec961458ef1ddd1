"""The error policy for malformed records and unreadable shards: ``raise`` (default), ``skip`` or ``warn``.

``skip`` and ``warn`` drop the bad record, count it, and remember where it was; ``warn`` also emits a
``warnings.warn`` naming the file and line. A shard that cannot be read at all (corrupt, gone, forbidden,
or a network failure that outlasted the retries) is quarantined: the rest of it is skipped, counted as
one, and the source's state lists it, so a resume skips it too. Counts are kept per node and summed by
the loader.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

from headrace.core.errors import HeadraceError
from headrace.core.redact import redact

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

    def record(self, error: HeadraceError, quarantine: bool = False) -> None:
        """Raise ``error`` under ``raise``; otherwise count it (and warn under ``warn``). ``quarantine``: the
        error is a whole shard's, whose remaining records are skipped (counted as one)."""
        if self.policy == "raise":
            raise error
        self.skipped += 1
        if len(self.where) < MAX_REMEMBERED:
            self.where.append(redact(f"quarantined shard: {error}" if quarantine else str(error)))
        if self.policy == "warn":
            warnings.warn(redact(f"skipped: {error}"), SkippedRecordWarning, stacklevel=3)
