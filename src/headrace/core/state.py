"""Checkpoint state: versioned plain JSON with a fingerprint of the pipeline and the world.

A state from another pipeline, another world or another format version is refused with an error
that says what differs, never silently applied.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from headrace.core.errors import StateError

STATE_FORMAT = "headrace.state"
STATE_VERSION = 1


def fingerprint(description: Any) -> str:
    """A short stable hash of a JSON-able description."""
    text = json.dumps(description, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def wrap(
    node_state: Mapping[str, Any], *, pipeline: Sequence[Any], world: Mapping[str, Any], **extra: Any
) -> dict[str, Any]:
    """The full checkpoint document around a node state."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "fingerprint": fingerprint([pipeline, world]),
        "pipeline": list(pipeline),
        "world": dict(world),
        **extra,
        "node": dict(node_state),
    }


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
