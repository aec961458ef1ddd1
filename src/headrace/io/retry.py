"""Retries for remote reads: which errors are worth another try, and how long to wait between tries.

A network fails in passing — a connection reset, a timeout, a body cut short, a 5xx, a 429/503 asking
to slow down — or for good: a 404, a 403, bad data. :func:`transient` tells them apart by looking
through the exception and its causes (fsspec's backends wrap the HTTP library's errors) for an HTTP
status or a connection error. :class:`Retry` is the policy: attempts, exponential backoff with full
jitter, a deadline per read, and ``Retry-After`` honoured up to ``max_wait``.

>>> from headrace.io.retry import Retry, transient
>>> transient(ConnectionResetError()), transient(FileNotFoundError("x"))
(True, False)
>>> Retry(attempts=3, backoff=0.5, seed=0).ceiling(1)
1.0
"""

from __future__ import annotations

import errno
import http.client
import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from headrace.core.errors import SourceError
from headrace.core.redact import redact

log = logging.getLogger("headrace.io")
T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
TRANSIENT_ERRNO = frozenset({
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETRESET, errno.EAGAIN,
})  # fmt: skip
# Connection-level errors of the HTTP stacks under fsspec (aiohttp, botocore, azure-core, urllib3,
# requests), matched by class name anywhere in the exception's MRO so none of them must be importable.
TRANSIENT_NAMES = frozenset({
    "ClientPayloadError", "ServerDisconnectedError", "ClientConnectionError", "ClientOSError",
    "ServerTimeoutError", "ClientConnectorError", "ConnectionTimeoutError", "SocketTimeoutError",
    "ServiceRequestError", "ServiceResponseError", "IncompleteReadError", "ReadTimeoutError",
    "ConnectTimeoutError", "EndpointConnectionError", "ConnectionClosedError", "ResponseStreamingError",
    "ProtocolError", "ChunkedEncodingError", "FSTimeoutError", "TransportError",
})  # fmt: skip
PERMANENT_NAMES = frozenset({
    "OfflineModeIsEnabled", "NoCredentialsError", "ClientAuthenticationError", "InvalidURL",
    "RepositoryNotFoundError", "GatedRepoError", "EntryNotFoundError",
})  # fmt: skip
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                            "TooManyRequests", "ServerBusy", "InternalError", "ServiceUnavailable"})  # fmt: skip


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, its causes and contexts (fsspec backends re-raise library errors as OSError)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or len(seen) > 8:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def status_of(error: BaseException) -> int | None:
    """The HTTP status an error carries (aiohttp ``status``, azure ``status_code``, gcsfs ``code``,
    botocore ``response``), looking through its causes; None if there is none."""
    for e in _chain(error):
        if _named(e, "HttpProcessingError") or (e.__cause__ is not None and _named(e.__cause__, "HttpProcessingError")):
            continue  # aiohttp's parser errors, and the ClientResponseError made of one: not the server's status
        for attr in ("status", "status_code", "code"):  # the first one it has (aiohttp's "code" is deprecated)
            value = getattr(e, attr, None)
            if isinstance(value, int):
                if 100 <= value < 600:
                    return value
                break
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(value, int):
                return value
    return None


def transient(error: BaseException) -> bool:
    """Whether another try may succeed: connection errors, timeouts, cut bodies, 408/429/5xx; not 4xx
    (missing, forbidden), not bad data, not a programming error.

    A "not found" that some layer made of another error is judged by that error: fsspec's HTTP
    filesystem turns every failed ``info`` (a 500, a refused connection) into a ``FileNotFoundError``."""
    for e in _chain(error):  # an unknown host, or a client told to stay offline, stays so
        if isinstance(e, socket.gaierror) and e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
            return False
        if any(cls.__name__ in PERMANENT_NAMES for cls in type(e).__mro__):
            return False
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return error.__cause__ is not None and transient(error.__cause__)
    for e in _chain(error):  # a cut connection first: its causes may carry a parser's "400" (aiohttp)
        if isinstance(e, (ConnectionError, TimeoutError, http.client.HTTPException, Truncated)):
            return True
        if _named(e, "HttpProcessingError"):  # a garbled answer (not HTTP, a bad header, a cut chunk)
            return True
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNO:
            return True
        if any(cls.__name__ in TRANSIENT_NAMES for cls in type(e).__mro__):
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in THROTTLE_CODES:
            return True
    status = status_of(error)
    return status is not None and (status in TRANSIENT_STATUS or status >= 500)


def diagnose(error: BaseException) -> tuple[str, str]:
    """What ``error`` means, in words, and what to do about it: ``("access denied (403)", "check the
    credentials ...")``. An HTTP status wins over the exception's type (a layer may have wrapped it).

    >>> diagnose(FileNotFoundError("s3://b/x"))
    ('not found', 'check the URL')
    >>> diagnose(ConnectionRefusedError(111, "Connect call failed"))[0]
    'connection refused'
    """
    status = status_of(error)
    if status in (404, 410):
        return f"not found ({status})", "check the URL"
    if status in (401, 403):
        return f"access denied ({status})", ACCESS_ADVICE
    for e in _chain(error):
        if _named(e, "TooManyRedirects"):
            return "too many redirects (a redirect loop?)", "check the URL"
        if _named(e, "HttpProcessingError"):
            return "the answer is not valid HTTP", "is the URL's server an HTTP server? check it"
        if isinstance(e, socket.gaierror) or _named(e, "ClientConnectorDNSError"):
            host = getattr(e, "host", None)
            what = f"unknown host {host!r}" if host else "unknown host"
            return what, "the name does not resolve: check the URL (and any endpoint_url in storage_options)"
        if isinstance(e, ConnectionRefusedError) or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED):
            return "connection refused", "is the server up? check the host and port in the URL (and any endpoint_url)"
    if status is not None:
        return f"the server answered {status} {http.client.responses.get(status, '')}".rstrip(), ""
    for e in _chain(error):
        if isinstance(e, FileNotFoundError):
            return "not found", "check the URL"
        if isinstance(e, PermissionError) or (type(e) is OSError and str(e).startswith("Forbidden")):  # gcsfs' 403
            return "access denied", ACCESS_ADVICE
        if isinstance(e, TimeoutError) or _named(e, "ServerTimeoutError", "FSTimeoutError", "ReadTimeoutError"):
            return "timed out", "the server is slow or stalled: check it"
        if isinstance(e, ConnectionResetError):
            return "connection reset", ""
        if isinstance(e, Truncated):
            return "the body ended early", ""
    return type(error).__name__, ""


ACCESS_ADVICE = "check the credentials in storage_options and the permissions they have"


def _named(error: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(error).__mro__)


def retry_after(error: BaseException) -> float | None:
    """Seconds a 429/503 answer asked to wait (its ``Retry-After`` header), if it said."""
    for e in _chain(error):
        headers = getattr(e, "headers", None) or getattr(getattr(e, "response", None), "headers", None)
        if headers is None:
            continue
        try:
            value = headers.get("Retry-After")
        except (AttributeError, TypeError):
            continue
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


class Truncated(OSError):
    """A body ended before the bytes the object's size promised: transient, read again from there."""


class GaveUp(SourceError):
    """A transient error that outlasted the retry policy."""


@dataclass
class RetryStats:
    """What retrying did, for one filesystem: tries after a failure, by error type, and the time waited."""

    retries: int = 0
    waited_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, error: BaseException, wait: float) -> None:
        with self._lock:
            self.retries += 1
            self.waited_s += wait
            self.errors[type(error).__name__] += 1

    def __getstate__(self) -> dict[str, Any]:
        return {"retries": self.retries, "waited_s": self.waited_s, "errors": self.errors}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


@dataclass(frozen=True)
class Retry:
    """How remote reads are retried.

    ``attempts`` tries in all (the first included) within ``deadline`` seconds, waiting a random time in
    ``[0, min(max_wait, backoff * 2**k)]`` before try ``k + 1`` ("full jitter": clients that failed
    together do not come back together), or what a ``Retry-After`` header asked, up to ``max_wait``.
    ``Retry(attempts=1)`` switches retrying off. ``timeout`` bounds one request's wait for the server (to
    connect, and between two reads of its answer; HTTP(S) and S3 unless ``storage_options`` set their
    own), and ``deadline`` a whole HTTP answer: a stalled or endless answer fails as a timeout, retried.

    >>> import headrace as hr
    >>> policy = hr.Retry(attempts=5, deadline=30.0)
    >>> policy.attempts, policy.deadline
    (5, 30.0)
    """

    attempts: int = 10
    backoff: float = 0.05
    max_wait: float = 5.0
    deadline: float = 300.0
    seed: int | None = None  # the jitter's seed; None: drawn per process
    timeout: float = 60.0  # seconds one request may wait to connect, or for the next bytes of its answer

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Retry(attempts=) must be at least 1, got {self.attempts}")
        if self.backoff < 0 or self.max_wait < 0 or self.deadline <= 0 or self.timeout <= 0:
            raise ValueError("Retry(backoff=, max_wait=) must be >= 0, and deadline= and timeout= > 0")

    def ceiling(self, k: int) -> float:
        """The longest wait before try ``k + 1``."""
        return float(min(self.max_wait, self.backoff * 2**k))

    def call(
        self,
        fn: Callable[[], T],
        describe: Callable[[], str],
        stats: RetryStats | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> T:
        """``fn()``, tried again on transient errors; a permanent error is re-raised as it came, and one
        that outlasts the policy raises :class:`GaveUp` naming ``describe()`` (the URL and position).
        ``cancelled()`` true (the reader was closed) ends the retrying: the error is re-raised."""
        jitter = random.Random(self.seed)
        began = time.monotonic()
        k = 0
        while True:
            try:
                return fn()
            except Exception as e:
                if not transient(e) or (cancelled is not None and cancelled()):
                    raise
                elapsed = time.monotonic() - began
                wait = jitter.uniform(0.0, self.ceiling(k))
                asked = retry_after(e)
                if asked is not None:
                    wait = max(wait, min(asked, self.max_wait))
                k += 1
                if k >= self.attempts or elapsed + wait > self.deadline:
                    what, advice = diagnose(e)
                    raise GaveUp(
                        f"{describe()}: gave up after {k} tries in {elapsed:.1f} s: {what} ({type(e).__name__}: "
                        f"{redact(str(e))}); {advice or 'the network or the server keeps failing: check it'}, or "
                        f"allow more with hr.open(..., retry=hr.Retry(attempts=, deadline=))"
                    ) from None
                log.warning("%s: %s: %s; try %d of %d in %.2f s", describe(), type(e).__name__, redact(str(e)), k + 1,
                            self.attempts, wait)  # fmt: skip
                if stats is not None:
                    stats.add(e, wait)
                time.sleep(wait)
