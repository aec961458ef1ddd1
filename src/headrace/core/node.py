"""The one iterator protocol every stage implements: ``next``, ``state_dict``, ``load_state_dict``, ``close``.

A node is built fresh per epoch, rank and worker from an immutable description. ``reset(state)`` is
the only way a node gets positioned: ``load_state_dict(s)`` calls ``reset(s)``, and a node nobody
positioned calls ``reset(None)`` itself on its first ``next()`` or ``state_dict()`` — so a fresh start
and a restore are the same code path, and building a pipeline positions nothing. A node resets its
inputs in its own ``reset``, so each node of a pipeline is positioned once, however deep it sits
(as torchdata's ``BaseNode`` starts lazily).

The invariant every node keeps: after ``load_state_dict(s)``, ``next()`` returns exactly the
elements — with the same block boundaries — that followed when ``s`` was taken.

>>> from headrace.stages.limit import LimitNode
>>> from headrace.testing import ListNode
>>> node = LimitNode(ListNode([[1, 2], [3]]), skip=0, take=2, block_rows=8)
>>> node.positioned
False
>>> node.state_dict()
{'cursor': {'upstream': {'index': 0}, 'offset': 0}, 'count': 0}
>>> node.positioned
True
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

from headrace.core.policy import ErrorLog

T = TypeVar("T")
State = dict[str, Any]

# State keys shared by nodes (their strings are the saved format: never change them).
UPSTREAM = "upstream"  # a node with one input: that input's state
CURSOR = "cursor"  # a node reading through a Cursor: the cursor's state


def _positions(reset: Callable[[Any, State | None], None]) -> Callable[[Any, State | None], None]:
    """``reset`` that first marks the node positioned (a ``next()`` inside it must not start it again)."""

    @functools.wraps(reset)
    def positioned(self: Node[Any], state: State | None) -> None:
        self.positioned = True
        reset(self, state)

    positioned._lazy = True  # type: ignore[attr-defined]
    return positioned


def _starts(method: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``next`` or ``state_dict`` that positions the node at the start first if nothing positioned it."""

    @functools.wraps(method)
    def started(self: Node[Any]) -> Any:
        if not self.positioned:
            self.reset(None)
        return method(self)

    started._lazy = True  # type: ignore[attr-defined]
    return started


class Node(ABC, Generic[T]):
    """Base of every iterator node. Subclasses implement ``reset``, ``next`` and ``state_dict``.

    A subclass's constructor only stores what it is given; its ``reset``, ``next`` and ``state_dict`` are
    wrapped so that the node positions itself at the start (``reset(None)``) the first time it is read,
    unless ``reset``/``load_state_dict`` positioned it before. A node with one input keeps it in
    ``upstream``; one with several (a mixture) overrides :meth:`children` and sets ``merges``.
    """

    upstream: Node[Any] | None = None
    positioned: bool = False  # set by reset(); read by next() and state_dict() to start lazily
    merges: ClassVar[bool] = False  # several inputs joined into one stream: one stage, its inputs inside it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, wrap in (("reset", _positions), ("next", _starts), ("state_dict", _starts)):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__isabstractmethod__", False) \
                    and not getattr(method, "_lazy", False):  # fmt: skip
                setattr(cls, name, wrap(method))

    @abstractmethod
    def reset(self, state: State | None) -> None:
        """Position the node at the start (``None``) or at ``state``, resetting its inputs likewise."""

    @abstractmethod
    def next(self) -> T:
        """The next element; raises ``StopIteration`` at the end of the stream."""

    @abstractmethod
    def state_dict(self) -> State:
        """Plain-JSON position after the last element returned by ``next``."""

    def load_state_dict(self, state: State) -> None:
        self.reset(state)

    def ensure_positioned(self) -> None:
        """Position the node at the start now if nothing positioned it yet (what ``next()`` does first)."""
        if not self.positioned:
            self.reset(None)

    def children(self) -> list[Node[Any]]:
        """The nodes this one reads from: ``[upstream]``, none for a source, several for a mixture."""
        return [self.upstream] if self.upstream is not None else []

    def close(self) -> None:
        for child in self.children():
            child.close()

    def busy(self) -> str | None:
        """The user function's call this node, or one upstream of it, is waiting for right now (``None``: none);
        what a loader timeout names. Only the thread driving the node calls ``next``: at most one call waits."""
        return next((found for child in self.children() if (found := child.busy()) is not None), None)

    def error_logs(self) -> list[ErrorLog]:
        """Error logs of this node and everything upstream of it."""
        own = getattr(self, "errors", None)
        logs = [own] if isinstance(own, ErrorLog) else []
        return logs + [log for child in self.children() for log in child.error_logs()]

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                yield self.next()
            except StopIteration:
                return


def line(node: Node[Any]) -> Iterator[Node[Any]]:
    """``node`` and the nodes upstream of it, output first, down to a source or to a node that ``merges``
    several inputs (yielded; its inputs are its own, not walked).

    >>> from headrace.stages.limit import LimitNode
    >>> from headrace.testing import ListNode
    >>> [type(n).__name__ for n in line(LimitNode(ListNode([[1]]), skip=0, take=1, block_rows=4))]
    ['LimitNode', 'ListNode']
    """
    seen: set[int] = set()
    current: Node[Any] | None = node
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        inputs = [] if current.merges else current.children()
        current = inputs[0] if len(inputs) == 1 else None


def walk(node: Node[Any]) -> Iterator[Node[Any]]:
    """Every node under ``node``, itself included, the inputs of mixtures too (each once).

    >>> from headrace.stages.limit import LimitNode
    >>> from headrace.testing import ListNode
    >>> len(list(walk(LimitNode(ListNode([[1]]), skip=0, take=1, block_rows=4))))
    2
    """
    seen: set[int] = set()
    todo: list[Node[Any]] = [node]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += current.children()
