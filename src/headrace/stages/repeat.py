"""``repeat(times)``: run the upstream again for the next epoch when it ends (``times=None``: forever)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headrace.core import state as states
from headrace.core.node import UPSTREAM, Node, State

# State keys (their strings are the saved format: never change them).
REPETITION = "repetition"


class RepeatNode(Node[Any]):
    """Each repetition is a fresh upstream built for epoch ``base + repetition``."""

    upstream: Node[Any]

    def __init__(self, build: Callable[[int], Node[Any]], *, times: int | None) -> None:
        self.build = build
        self.times = times
        self._rep = 0
        self.upstream = build(0)  # built, not positioned: the first reset keeps it
        self._closed = False

    def reset(self, state: State | None) -> None:
        last = states.MAX_COUNT if self.times is None else max(0, self.times - 1)
        rep = 0 if state is None else states.field(state, REPETITION, hi=last)
        if self._rep != rep or self.upstream.positioned or self._closed:  # not as built for ``rep``: a new one
            self.upstream.close()
            self.upstream = self.build(rep)
        self._rep, self._closed = rep, False
        if state is not None:
            states.load_child(self.upstream.reset, state, UPSTREAM)

    def state_dict(self) -> State:
        return {REPETITION: self._rep, UPSTREAM: self.upstream.state_dict()}

    def close(self) -> None:
        self._closed = True
        super().close()

    def next(self) -> Any:
        empty_runs = 0  # a repetition that yields nothing means the data is empty: stop, never spin
        while True:
            try:
                return self.upstream.next()
            except StopIteration:
                empty_runs += 1
                if (self.times is not None and self._rep + 1 >= self.times) or empty_runs > 1:
                    raise  # the state stays that of the last repetition, at its end
                self.upstream.close()
                self._rep += 1
                self.upstream = self.build(self._rep)
