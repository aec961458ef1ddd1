"""Exceptions raised by headrace. Every message names the file/URL and position and says what to do.

Messages are passed through :func:`~headrace.core.redact.redact`: no credential reaches an error.
"""

from __future__ import annotations

from typing import Any

from headrace.core.redact import redact


class HeadraceError(Exception):
    """Base class of every error headrace raises on purpose."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class SourceError(HeadraceError):
    """A path, glob, file or format that cannot be opened as a dataset."""


def empty_file(url: str, skipping: bool = False) -> SourceError:
    """The error of a shard that is a file of 0 bytes: raised, or (``skipping``) quarantined and counted."""
    hint = "" if skipping else ", or open with errors='skip' to leave it out"
    return SourceError(f"{url}: the file is empty (0 bytes); remove it or narrow the glob{hint}")


class SchemaError(HeadraceError):
    """Columns or types that do not match what the pipeline expects."""


class RecordError(HeadraceError):
    """A malformed record, with the file and line/row it came from."""


class StateError(HeadraceError):
    """A checkpoint state that does not belong to this pipeline, world or version."""


class WorkerError(HeadraceError):
    """A loader worker that failed outside the user function's own errors: a worker process that died (a
    segfault, ``os._exit``, the out-of-memory killer) or an exception that could not cross back from it."""


class LoaderTimeout(HeadraceError, TimeoutError):
    """No batch arrived within ``Loader(timeout=...)`` seconds; the message names the stage and the block."""
