"""Credentials out of every message: URL passwords, signed-URL query tokens, and storage_options secrets.

:func:`redact` replaces, in any text, the password of ``scheme://user:password@host``, the values of
query parameters that carry signatures or tokens (S3 presigned URLs, Azure SAS, ``?token=``), and every
secret value of ``storage_options`` seen by :func:`register` (keys, secrets, tokens, connection strings).
headrace's errors (:class:`~headrace.core.errors.HeadraceError`) and the notes it adds to other
exceptions (:func:`redact_notes`), its log records (the ``headrace`` loggers carry a :class:`LogFilter`),
warnings, lineage, reprs, states, benchmark reports and ``headrace inspect`` pass their text through it.

The registered secrets live in this process; forked workers inherit them, and a pipeline unpickled in a
spawned process registers its filesystems' ``storage_options`` again (``RemoteFS.__setstate__``).

>>> from headrace.core.redact import redact, register
>>> register({"key": "AKIAEXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG"})
>>> redact("s3://b/x.parquet: denied for wJalrXUtnFEMI/K7MDENG")
's3://b/x.parquet: denied for ***'
>>> redact("https://u:hunter2@h/x?sig=abc&sp=r")
'https://u:***@h/x?sig=***&sp=r'
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
SECRET_WORDS = ("secret", "password", "passwd", "passphrase", "token", "credential", "key", "sas", "signature",
                "auth", "connection_string", "private", "cookie")  # fmt: skip
MIN_SECRET = 6  # shorter values would mask ordinary words
# The loggers whose records are redacted: headrace's, and those of the filesystems it reads through,
# which log URLs at DEBUG. (A logger's filter does not apply to its children's records: each is named.)
LOGGERS = ("headrace", "headrace.io", "fsspec", "fsspec.http", "fsspec.asyn", "fsspec.caching", "fsspec.cached",
           "s3fs", "gcsfs", "gcsfs.credentials", "adlfs.spec", "huggingface_hub")  # fmt: skip
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]*):([^/@\s]+)@")
_HTTP_USER = re.compile(r"(\bhttps?://)([^/@\s:]+)@", re.IGNORECASE)  # a user alone is often a token (GitHub)
_QUERY = re.compile(
    r"([?&](?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|token|access_token|refresh_token|id_token|session_token|private_token|api_key|apikey|key|"
    r"code|password|secret|client_secret|auth|authorization|jwt)=)[^&\s'\"#]+",
    re.IGNORECASE,
)
_secrets: set[str] = set()
_by_length: tuple[str, ...] = ()  # _secrets, longest first (replaced whole: readers take no lock)
_lock = threading.Lock()


def _fresh_lock() -> None:
    """In a forked child: a new lock (the parent's may have been held by another thread at the fork)."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock)


def _secret_name(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in SECRET_WORDS) and lower not in ("anon", "requester_pays")


def register(options: Mapping[str, Any] | None) -> None:
    """Remember the secret values in ``options`` (nested dicts too), so that :func:`redact` masks them."""
    if not options:
        return
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, secret or _secret_name(str(k)))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, secret)
        elif secret and isinstance(value, str) and len(value) >= MIN_SECRET:
            found.append(value)
            for part in value.split(";"):  # connection strings: AccountKey=...;SharedAccessSignature=...
                name, sep, inner = part.partition("=")
                if sep and _secret_name(name) and len(inner) >= MIN_SECRET:
                    found.append(inner)
            scheme, sep, credentials = value.partition(" ")  # "Bearer <token>", "Basic <base64>"
            if sep and scheme.isalpha() and len(credentials) >= MIN_SECRET:
                found.append(credentials)

    walk(options, False)
    found += [q for v in found for q in (quote(v, safe=""), quote(v), quote_plus(v)) if q != v]  # as in URLs
    global _by_length
    with _lock:
        _secrets.update(found)
        _by_length = tuple(sorted(_secrets, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` without credentials (see the module docstring)."""
    if not text:
        return text
    if "@" in text:  # the regular expressions only where they can match: lineage is built per row in places
        text = _USERINFO.sub(rf"\1:{MASK}@", text)
        text = _HTTP_USER.sub(rf"\1{MASK}@", text)
    if "=" in text:
        text = _QUERY.sub(rf"\1{MASK}", text)
    for secret in _by_length:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redacted(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, tuples, strings, numbers) with every string redacted.

    >>> redacted({"path": "http://u:pw@h/x", "rows": [1, "s3://b/y?token=abc"]})
    {'path': 'http://u:***@h/x', 'rows': [1, 's3://b/y?token=***']}
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redacted(k): redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redacted(v) for v in value)
    return value


def redact_notes(error: BaseException) -> BaseException:
    """Redact, in place, the notes of ``error`` and of the exceptions it was raised from, and the text of a
    worker process's traceback (``concurrent.futures``' ``_RemoteTraceback``) among them; returns ``error``.

    For exceptions that cross from a worker: the notes were written there, and a secret registered here
    after the worker started is masked here.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [redact(n) if isinstance(n, str) else n for n in notes]
        tb = getattr(current, "tb", None)
        if type(current).__name__ == "_RemoteTraceback" and isinstance(tb, str):
            current.tb = redact(tb)  # type: ignore[attr-defined]
            current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        current = current.__cause__ or current.__context__
    return error


class LogFilter(logging.Filter):
    """Redacts a record's message, its exception's traceback and its stack (set on the :data:`LOGGERS`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a library's own bad format arguments: its handler reports them, as without us
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:  # what formatters print, formatted once here
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = LogFilter()
for _name in LOGGERS:
    logging.getLogger(_name).addFilter(_FILTER)
