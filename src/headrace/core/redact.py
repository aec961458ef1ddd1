"""Credentials out of every message: URL passwords, signed-URL query tokens, and storage_options secrets.

:func:`redact` replaces, in any text, the password of ``scheme://user:password@host``, the values of
query parameters that carry signatures or tokens (S3 presigned URLs, Azure SAS, ``?token=``), and every
secret value of ``storage_options`` seen by :func:`register` (keys, secrets, tokens, connection strings).
headrace's errors (:class:`~headrace.core.errors.HeadraceError`), logs, reprs, states and
``headrace inspect`` pass their text through it.

>>> from headrace.core.redact import redact, register
>>> register({"key": "AKIAEXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG"})
>>> redact("s3://b/x.parquet: denied for wJalrXUtnFEMI/K7MDENG")
's3://b/x.parquet: denied for ***'
>>> redact("https://u:hunter2@h/x?sig=abc&sp=r")
'https://u:***@h/x?sig=***&sp=r'
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

MASK = "***"
SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "key", "sas", "signature", "auth",
                "connection_string", "private")  # fmt: skip
MIN_SECRET = 6  # shorter values would mask ordinary words
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]*):([^/@\s]+)@")
_QUERY = re.compile(
    r"([?&](?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|token|access_token|api_key|apikey|key|code|password|secret)=)[^&\s'\"#]+",
    re.IGNORECASE,
)
_secrets: set[str] = set()
_lock = threading.Lock()


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

    walk(options, False)
    with _lock:
        _secrets.update(found)


def redact(text: str) -> str:
    """``text`` without credentials (see the module docstring)."""
    if not text:
        return text
    text = _USERINFO.sub(rf"\1:{MASK}@", text)
    text = _QUERY.sub(rf"\1{MASK}", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
