"""A fault-injecting HTTP reverse proxy, for testing that remote reads survive what networks do.

:class:`FaultProxy` listens on a free 127.0.0.1 port in front of one HTTP server (SeaweedFS's S3,
Azurite, the GCS emulator, the plain file server), forwards each request as it came — method, path,
query, headers (``Host`` unchanged, so S3 SigV4 signatures made for the proxy's address still
verify; ``Range``; auth) and body — and relays the answer, except when its schedule says to inject
a fault instead:

========== ==============================================================================
``reset``  the status line, headers and part of the body, then a TCP reset (RST)
``truncate`` the status line, headers (full ``Content-Length``) and part of the body, then close
``stall``  part of the body, a pause of ``stall_s`` seconds, then the rest (a read timeout's target)
``slow``   a pause of ``stall_s`` seconds before the first byte of the answer, then all of it
``500``    ``500 Internal Server Error`` (not forwarded)
``503``    ``503 Service Unavailable`` with ``Retry-After`` (not forwarded)
``429``    ``429 Too Many Requests`` with ``Retry-After`` (not forwarded)
========== ==============================================================================

and what a broken or hostile server does (never drawn by ``rate`` unless named in ``kinds``):

============ ============================================================================
``garbage``  bytes that are not HTTP at all, then close
``loop``     ``302 Found`` back to the same URL: a redirect loop
``lie``      the whole body, under a ``Content-Length`` of half of it, then close
``endless``  a chunked body that never ends: a byte every ``stall_s`` seconds, for ever
``403``      ``403 Forbidden``; ``404``: ``404 Not Found`` (permanent answers)
============ ============================================================================

(A body fault on an answer without a body happens before its first byte: ``reset`` and ``truncate``
close the connection, ``stall`` waits.) Which requests get a fault is a pure function of
``(seed, method, path, Range, how many times this same request was seen before)``, so a run makes
the same faults in the same places whatever the thread timing, and a retry of a failed request gets
a fresh draw. :meth:`FaultProxy.inject` forces a fault on the next matching requests, for tests that
need one in an exact place. ``counts``, ``requests`` and ``log`` say what was done. For example::

    with FaultProxy(store.endpoint, rate=0.05, kinds=("reset", "503")) as proxy:
        proxied = store.via(proxy.endpoint)  # the same bucket, reached through the proxy
        rows = list(hr.open(proxied.url("data/*.parquet"), storage_options=proxied.storage_options))
        proxy.counts  # Counter({'reset': 3, '503': 2})
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
import struct
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from servers import TrackingServer

FAULTS = ("reset", "truncate", "stall", "slow", "500", "503", "429")  # what networks do in passing
PERMANENT = ("403", "404")  # answers no retry can change
HOSTILE = ("garbage", "loop", "lie", "endless")  # what a broken server does
KINDS = FAULTS + PERMANENT + HOSTILE
BODY_FAULTS = frozenset({"reset", "truncate", "stall"})
STATUS_FAULTS = {"500": "InternalError", "503": "SlowDown", "429": "TooManyRequests", "403": "AccessDenied",
                 "404": "NoSuchKey"}  # fmt: skip
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "expect",
})  # fmt: skip
RELAY_BYTES = 1 << 16


@dataclass(frozen=True)
class Injected:
    """One fault the proxy made: the ``n``-th request it saw, what it was, and where in the body."""

    n: int
    method: str
    target: str
    range: str | None
    kind: str
    at_byte: int | None = None  # body faults: how many body bytes were sent before the fault


class FaultProxy:
    """A threaded reverse proxy in front of ``upstream`` (``http://127.0.0.1:PORT``) that injects faults.

    ``rate`` is the chance that an eligible request (its method in ``methods``) gets a fault, drawn from
    ``kinds`` (see the module docstring). ``stall_s`` is the pause of ``stall`` and ``slow``;
    ``retry_after`` the seconds a 429/503 asks for. ``rewrite_host=True`` sends the upstream's own
    ``Host`` instead of the client's (which breaks S3 signatures: a test shows they cover it).
    Attributes may be changed while it runs (``proxy.rate = 0.0``).
    """

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        kinds: Sequence[str] = FAULTS,
        seed: int = 0,
        methods: Sequence[str] = ("GET",),
        stall_s: float = 1.0,
        retry_after: int = 1,
        rewrite_host: bool = False,
        upstream_timeout: float = 60.0,
    ) -> None:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown or not kinds:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {KINDS}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.rate, self.kinds, self.seed = rate, tuple(kinds), seed
        self.methods = frozenset(m.upper() for m in methods)
        self.stall_s, self.retry_after, self.rewrite_host = stall_s, retry_after, rewrite_host
        self.upstream_timeout = upstream_timeout
        self.requests = 0  # every request received
        self.paths: Counter[str] = Counter()  # requests by "METHOD /path" (query and Range left out)
        self.gets: list[tuple[str, str | None]] = []  # (path, Range header) of every GET, in arrival order
        self.counts: Counter[str] = Counter()  # faults injected, by kind
        self.log: list[Injected] = []
        self._seen: Counter[str] = Counter()
        self._forced: list[list[Any]] = []  # [kind, times left, match, method]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: TrackingServer | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: point clients here instead of at the upstream."""
        if self._server is None:
            raise RuntimeError("the proxy is not running; use it as a context manager or call start()")
        return self._server.endpoint

    def start(self) -> FaultProxy:
        self._stopping.clear()
        self._server = TrackingServer(_Handler)
        self._server.proxy = self  # type: ignore[attr-defined]
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # stalls end now
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, kind: str, times: int = 1, match: str | None = None, method: str | None = "GET") -> None:
        """Give the next ``times`` requests whose path contains ``match`` (any, if None) and whose method is
        ``method`` (any, if None) the fault ``kind``, whatever ``rate`` and ``methods`` say."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; choose from {KINDS}")
        with self._lock:
            self._forced.append([kind, times, match, method and method.upper()])

    def clear_injected(self) -> None:
        """Forget the faults :meth:`inject` has not made yet."""
        with self._lock:
            self._forced.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.paths.clear()
            self.gets.clear()
            self.counts.clear()
            self.log.clear()
            self._seen.clear()

    def _decide(self, method: str, target: str, byte_range: str | None) -> tuple[int, str | None, float]:
        """``(request number, fault or None, where in the body: a fraction in [0.1, 0.9))``."""
        key = f"{method} {target} {byte_range or ''}"
        with self._lock:
            n = self.requests
            self.requests += 1
            self.paths[f"{method} {target.split('?', 1)[0]}"] += 1
            if method == "GET":
                self.gets.append((target.split("?", 1)[0], byte_range))
            seen = self._seen[key]
            self._seen[key] += 1
            forced = None
            for entry in self._forced:
                if (entry[2] is None or entry[2] in target) and entry[3] in (None, method):
                    forced = entry[0]
                    entry[1] -= 1
                    if entry[1] <= 0:
                        self._forced.remove(entry)
                    break
        digest = hashlib.sha256(f"{self.seed}|{key}|{seen}".encode()).digest()
        draw, pick, where = struct.unpack("<QQQ", digest[:24])
        fraction = 0.1 + 0.8 * where / 2**64
        if forced is not None:
            return n, forced, fraction
        if method not in self.methods or draw / 2**64 >= self.rate:
            return n, None, fraction
        return n, self.kinds[pick % len(self.kinds)], fraction

    def _record(self, n: int, method: str, target: str, byte_range: str | None, kind: str, at: int | None) -> None:
        with self._lock:
            self.counts[kind] += 1
            self.log.append(Injected(n, method, target, byte_range, kind, at))

    def _pause(self) -> None:
        self._stopping.wait(self.stall_s)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall per request
    timeout = 60  # an idle client connection is closed after this
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def setup(self) -> None:
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self._close_upstream()

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def do_GET(self) -> None:
        self._proxy()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _proxy(self) -> None:
        proxy: FaultProxy = self.server.proxy
        body = self._request_body()
        byte_range = self.headers.get("Range")
        n, kind, fraction = proxy._decide(self.command, self.path, byte_range)
        if kind in STATUS_FAULTS:
            proxy._record(n, self.command, self.path, byte_range, kind, None)
            self._status_fault(int(kind), STATUS_FAULTS[kind], proxy.retry_after)
            return
        if kind in ("garbage", "loop"):
            proxy._record(n, self.command, self.path, byte_range, kind, None)
            self._garbage() if kind == "garbage" else self._redirect_to_itself()
            return
        try:
            response = self._forward(proxy, body)
        except (OSError, http.client.HTTPException) as e:
            self._bad_gateway(e)
            return
        self._relay(proxy, response, n, kind, fraction)

    def _request_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _forward(self, proxy: FaultProxy, body: bytes | None) -> http.client.HTTPResponse:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body is not None and "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            headers["Content-Length"] = str(len(body))
        if proxy.rewrite_host:
            headers = {k: v for k, v in headers.items() if k.lower() != "host"}
            headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
        for attempt in range(2):  # a kept-alive upstream connection may have been closed meanwhile: reconnect once
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.upstream_timeout)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                return self._upstream.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._close_upstream()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _relay(
        self, proxy: FaultProxy, response: http.client.HTTPResponse, n: int, kind: str | None, fraction: float
    ) -> None:
        status, reason = response.status, response.reason
        headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        body: Any = response
        if self.command == "HEAD" or status in (204, 304) or 100 <= status < 200:
            length = 0
            response.read()  # nothing, but it frees the upstream connection for the next request
        elif response.getheader("Content-Length") is None:  # chunked or until-close: relay with a length
            body = _Buffered(response.read())
            length = len(body.data)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"] + [("Content-Length", str(length))]
        else:
            length = int(response.getheader("Content-Length") or 0)
        where = (n, self.command, self.path, self.headers.get("Range"))
        if kind == "endless":
            proxy._record(*where, kind, 0)
            self._endless(proxy, status, reason, headers)
            return
        if kind == "lie" and length >= 2:  # a Content-Length of half the body, and the whole body
            proxy._record(*where, kind, length // 2)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(length // 2)))
            self.close_connection = True
        cut = int(length * fraction) if kind in BODY_FAULTS and length else None
        if kind == "slow" or (kind in BODY_FAULTS and cut is None):  # before the first byte of the answer
            proxy._record(*where, kind, 0)
            if kind in ("slow", "stall"):
                proxy._pause()
            else:
                self._drop(reset=kind == "reset")
                return
        self.send_response_only(status, reason)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        sent = 0
        while sent < length:
            try:
                chunk = body.read(min(RELAY_BYTES, length - sent))
            except (OSError, http.client.HTTPException):
                chunk = b""
            if not chunk:  # the upstream sent less than it announced: pass that on
                self._drop(reset=False)
                return
            if cut is not None and sent + len(chunk) >= cut:
                head, chunk = chunk[: cut - sent], chunk[cut - sent :]
                self.wfile.write(head)
                sent += len(head)
                proxy._record(*where, str(kind), sent)
                cut = None
                if kind != "stall":
                    self._drop(reset=kind == "reset")
                    return
                self.wfile.flush()
                proxy._pause()
            self.wfile.write(chunk)
            sent += len(chunk)
        body.read(1)  # the end: frees the upstream connection for the next request
        self.wfile.flush()

    def _garbage(self) -> None:
        """An answer that is not HTTP, then an orderly close."""
        self.wfile.write(b"\x00\xff\xfeGARBAGE<html>not a status line\r\n\x01\x02\r\n\r\n" + bytes(range(256)))
        self._drop(reset=False)

    def _redirect_to_itself(self) -> None:
        self.send_response_only(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _endless(self, proxy: FaultProxy, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        """The upstream's status and headers, then a chunked body of one byte every ``stall_s`` seconds
        until the client hangs up or the proxy stops."""
        self._close_upstream()  # its own body is not sent
        self.close_connection = True
        self.send_response_only(status, reason)
        for k, v in headers:
            if k.lower() not in ("content-length", "content-range"):
                self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with contextlib.suppress(OSError):
            while not proxy._stopping.is_set():
                self.wfile.write(b"1\r\nx\r\n")
                self.wfile.flush()
                proxy._pause()

    def _drop(self, *, reset: bool) -> None:
        """Close the client connection now, after what was sent: with a TCP reset (RST), or an orderly close.

        The upstream connection goes too: the rest of its answer is unread.
        """
        self.close_connection = True
        self._close_upstream()
        with contextlib.suppress(OSError):
            self.wfile.flush()
            if reset:  # no FIN first: linger 0, and the last close of the socket sends RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_WR)

    def _status_fault(self, status: int, code: str, retry_after: int) -> None:
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the headrace test fault proxy</Message></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        if status in (429, 503):
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        if self.command != "HEAD":  # an answer to HEAD has the headers of a body, never the body itself
            self.wfile.write(body)

    def _bad_gateway(self, error: Exception) -> None:
        body = f"fault proxy: upstream unreachable ({error})".encode()
        self.send_response_only(502)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Buffered:
    """An upstream body already read whole, read like a response."""

    def __init__(self, data: bytes) -> None:
        self.data, self._at = data, 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self._at : self._at + n]
        self._at += len(chunk)
        return chunk
