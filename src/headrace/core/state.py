"""Checkpoint state: versioned plain JSON with a fingerprint of the pipeline and the world, and a digest.

A state from another pipeline, another world or another format version is refused with an error
that says what differs, never silently applied. The ``digest`` (a checksum of everything else in the
state) refuses a state edited or truncated after :meth:`Loader.state_dict` wrote it; states written
before the digest existed (they have none) are still read. Then, whatever the digest says, every
node checks the type and range of each field it reads (:func:`field`), and a bad one is a
:class:`StateError` naming its dotted place (``node.cursor.upstream.byte``): the digest guards against
accidents, the checks against a state whose digest was recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from headrace.core.errors import StateError

STATE_FORMAT = "headrace.state"
STATE_VERSION = 1
DIGEST = "digest"  # the key of the checksum; absent from states written before it existed
T = TypeVar("T")
MAX_COUNT = 1 << 48  # no count, index or position in a state is larger (rows, windows, blocks, epochs, bytes)


def fingerprint(description: Any) -> str:
    """A short stable hash of a JSON-able description."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def wrap(
    node_state: Mapping[str, Any], *, pipeline: Sequence[Any], world: Mapping[str, Any], **extra: Any
) -> dict[str, Any]:
    """The full checkpoint document around a node state, with the digest of all of it."""
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "fingerprint": fingerprint([pipeline, world]),
        "pipeline": list(pipeline),
        "world": dict(world),
        **extra,
        "node": dict(node_state),
    }
    return {DIGEST: digest(state), **state}  # first: a state cut short keeps it, and is refused by it


def digest(state: Mapping[str, Any]) -> str:
    """The checksum of a state: a hash of the canonical JSON of everything but the digest itself."""
    body = {k: v for k, v in state.items() if k != DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_plain, allow_nan=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _plain(value: Any) -> Any:
    """numpy scalars as the Python numbers they hold (what a JSON round trip of the state gives)."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def check(state: Mapping[str, Any], *, pipeline: Sequence[Any], world: Mapping[str, Any] | None) -> None:
    """Refuse ``state`` unless it was taken from the same pipeline description and world (``None``: any world)."""
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise StateError(
            "this is not a headrace loader state (missing 'format': 'headrace.state'); "
            "pass the dict returned by Loader.state_dict()"
        )
    if state.get("version") != STATE_VERSION:
        raise StateError(
            f"state format version {state.get('version')} is not supported by this headrace "
            f"(it reads version {STATE_VERSION}); resume with the headrace version that wrote it"
        )
    check_digest(state)
    for key, kind in (("pipeline", list), ("world", Mapping)):
        if key in state and not isinstance(state[key], kind):
            raise FieldError(key, f"must be {'a list' if kind is list else 'an object'}, got {_kind(state[key])}")
    if world is not None and state.get("fingerprint") == fingerprint([list(pipeline), dict(world)]):
        return
    diffs = _diff(list(state.get("pipeline", [])), list(pipeline), "pipeline")
    if world is not None:
        diffs += _diff(dict(state.get("world", {})), dict(world), "world")
    elif not diffs:
        return
    detail = "; ".join(diffs[:8]) or "fingerprints differ"
    raise StateError(
        f"state was saved from a different pipeline or world: {detail}. "
        "Resume with the same pipeline, seed and world, or start the run afresh"
    )


def check_digest(state: Mapping[str, Any]) -> None:
    """Refuse a state whose digest does not match its contents (a state without one is from before digests)."""
    try:
        computed = digest(state)
    except (TypeError, ValueError) as e:  # keys that are not strings, values JSON cannot hold
        raise StateError(f"this is not a loader state as Loader.state_dict() writes it: {e}") from None
    if DIGEST in state and state[DIGEST] != computed:
        raise StateError(
            "the state's checksum does not match: it was edited or truncated after Loader.state_dict() wrote it. "
            "Pass the state exactly as saved (a checkpoint written in full), or start the run afresh"
        )


def differences(saved: Any, current: Any, path: str) -> list[str]:
    """``"path.key: saved X, now Y"`` for every leaf that differs between two JSON values."""
    return _diff(saved, current, path)


def _diff(saved: Any, current: Any, path: str) -> list[str]:
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            if key not in saved:
                out.append(f"{path}.{key} is new (now {current[key]!r})")
            elif key not in current:
                out.append(f"{path}.{key} was {saved[key]!r} and is gone")
            else:
                out += _diff(saved[key], current[key], f"{path}.{key}")
        return out
    if isinstance(saved, list) and isinstance(current, list):
        if len(saved) != len(current):
            return [f"{path} had {len(saved)} stages/items, now {len(current)}"]
        return [d for i, (a, b) in enumerate(zip(saved, current, strict=True)) for d in _diff(a, b, f"{path}[{i}]")]
    return [] if saved == current else [f"{path}: saved {saved!r}, now {current!r}"]


def shape(state: Any) -> Any:
    """The key structure and value kinds of a state, for checking that it never changes shape."""
    if isinstance(state, Mapping):
        return {k: shape(v) for k, v in sorted(state.items())}
    if isinstance(state, list):
        return ["list"]
    if isinstance(state, bool):
        return "bool"
    if isinstance(state, int | float):
        return "number"
    return type(state).__name__


# -- checking the fields of a state as it is loaded -------------------------------------------------
_PATH: ContextVar[tuple[str, ...]] = ContextVar("headrace_state_path", default=())


class FieldError(StateError):
    """A field of a state that is missing, of the wrong type or out of range; ``path`` is its dotted place."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(
            f"state field {path}: {problem}. The state was edited, damaged or saved from other data; "
            "pass the state Loader.state_dict() returned, unedited, or start the run afresh"
        )


@contextmanager
def within(key: str) -> Iterator[None]:
    """Load a nested state (a child node's, under ``key``): errors inside name ``parent.key.field``."""
    token = _PATH.set((*_PATH.get(), key))
    try:
        yield
    finally:
        _PATH.reset(token)


def here(key: str | None = None) -> str:
    """The dotted place of ``key`` in the state being loaded (of the nested state itself without one)."""
    parts = _PATH.get()
    return ".".join((*parts, key) if key is not None else parts) or "(the state)"


def refuse(key: str | None, problem: str) -> FieldError:
    """The error for field ``key`` of the state being loaded (raise it)."""
    return FieldError(here(key), problem)


def shown(value: Any) -> str:
    """A value as an error shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def mapping(state: Any, key: str | None = None) -> Mapping[str, Any]:
    """``state`` itself, which must be a JSON object (``key``: where it is, for the error)."""
    if not isinstance(state, Mapping):
        raise refuse(key, f"must be an object (a JSON dict), got {_kind(state)} {shown(state)}")
    return state


def field(
    state: Any, key: str, kind: type = int, *, lo: int | float | None = 0, hi: int | float | None = MAX_COUNT
) -> Any:
    """Field ``key`` of a node's ``state``, checked: present, of ``kind`` and (numbers) within ``[lo, hi]``.

    ``kind`` is ``int`` (never a bool), ``float`` (an int or a finite float), ``bool``, ``str``, ``list``
    or ``dict``. A wrong field raises :class:`FieldError` naming its dotted place.

    >>> field({"offset": 3}, "offset")
    3
    >>> try:
    ...     field({"offset": -100}, "offset")
    ... except FieldError as e:
    ...     print(e.path, "|", e.problem)
    offset | must be an int >= 0, got int -100
    """
    value = mapping(state).get(key, _MISSING)
    if value is _MISSING:
        raise refuse(key, f"is missing (the fields are {sorted(map(str, mapping(state)))})")
    if kind is int or kind is float:
        ok = isinstance(value, int) if kind is int else isinstance(value, int | float) and math.isfinite(value)
        ok = ok and not isinstance(value, bool)
        if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
            name = "an int" if kind is int else "a number"
            if hi is not None and hi != MAX_COUNT:
                span = f" in [{lo}, {hi}]" if lo is not None else f" <= {hi}"
            else:
                span = f" >= {lo}" if lo is not None else ""
                span += " (below 2**48)" if ok and hi is not None and value > hi else ""
            raise refuse(key, f"must be {name}{span}, got {_kind(value)} {shown(value)}")
        return value
    names = {bool: "true or false", str: "a string", list: "a list", dict: "an object (a JSON dict)"}
    want: Any = Mapping if kind is dict else kind
    if not isinstance(value, want):
        raise refuse(key, f"must be {names.get(kind, kind.__name__)}, got {_kind(value)} {shown(value)}")
    return value


_MISSING = object()


def load_child(reset: Callable[[dict[str, Any]], T], state: Any, key: str) -> T:
    """``reset(state[key])`` for a nested node state: checked to be an object, its errors placed under ``key``."""
    sub = field(state, key, dict)
    with within(key):
        return reset(dict(sub))
