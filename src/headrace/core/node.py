"""The one iterator protocol every stage implements: ``next``, ``state_dict``, ``load_state_dict``, ``close``.

A node is built fresh per epoch, rank and worker from an immutable description. ``reset(state)`` is
the only way a node gets positioned: construction calls ``reset(None)``, ``load_state_dict(s)`` calls
``reset(s)``, so a fresh start and a restore are the same code path.

The invariant every node keeps: after ``load_state_dict(s)``, ``next()`` returns exactly the
elements — with the same block boundaries — that followed when ``s`` was taken.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from headrace.core.policy import ErrorLog

T = TypeVar("T")
State = dict[str, Any]


class Node(ABC, Generic[T]):
    """Base of every iterator node. Subclasses implement ``reset``, ``next`` and ``state_dict``."""

    upstream: Node[Any] | None = None

    @abstractmethod
    def reset(self, state: State | None) -> None:
        """Position the node at the start (``None``) or at ``state``."""

    @abstractmethod
    def next(self) -> T:
        """The next element; raises ``StopIteration`` at the end of the stream."""

    @abstractmethod
    def state_dict(self) -> State:
        """Plain-JSON position after the last element returned by ``next``."""

    def load_state_dict(self, state: State) -> None:
        self.reset(state)

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()

    def busy(self) -> str | None:
        """The user function's call this node, or one upstream of it, is waiting for right now (``None``: none);
        what a loader timeout names. Only the thread driving the node calls ``next``: at most one call waits.
        A node with several inputs (a mixture) overrides it to ask each of them."""
        return self.upstream.busy() if self.upstream is not None else None

    def error_logs(self) -> list[ErrorLog]:
        """Error logs of this node and everything upstream of it."""
        own = getattr(self, "errors", None)
        logs = [own] if isinstance(own, ErrorLog) else []
        return logs + (self.upstream.error_logs() if self.upstream is not None else [])

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                yield self.next()
            except StopIteration:
                return
