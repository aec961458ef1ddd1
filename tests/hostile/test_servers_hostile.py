"""Hostile and broken HTTP servers: garbage instead of HTTP, a redirect loop, a Content-Length that lies
either way, a server that goes quiet, a body that never ends. Each ends in a retried read that delivers
every row exactly once, or in one clear error naming the URL (and the bytes) — never a hang.

The server is the real HTTP file server of tests/servers.py behind the fault proxy of tests/faultproxy.py,
which plays the hostile part on the requests a test chooses.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from faultproxy import FaultProxy
from headrace.core.errors import SourceError
from headrace.io.retry import GaveUp
from servers import Store

pytestmark = pytest.mark.timeout(60)
ROWS = 2000
FIVE = hr.Retry(attempts=5, backoff=0.01, max_wait=0.02)
FILES = {"jsonl": "hostile/rows.jsonl", "parquet": "hostile/rows.parquet"}


@pytest.fixture(scope="session")
def served(http_store: Store, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """2,000 rows (ids 0..1999) as one JSONL file (read in sequence) and one Parquet file of 4 row groups
    (ranged reads from the footer)."""
    folder = tmp_path_factory.mktemp("hostile")
    lines = "".join(json.dumps({"id": i, "text": f"row {i} " * 8}) + "\n" for i in range(ROWS))
    (folder / "rows.jsonl").write_text(lines, encoding="utf-8")
    table = pa.table({"id": list(range(ROWS)), "text": [f"row {i} " * 8 for i in range(ROWS)]})
    pq.write_table(table, folder / "rows.parquet", row_group_size=ROWS // 4, compression="none")
    http_store.put(folder, "hostile")
    return http_store


def ids(url: str, retry: hr.Retry = FIVE) -> list[int]:
    return [i for b in hr.open(url, columns=["id"], retry=retry).batch(256) for i in b["id"].tolist()]


Proxy = Callable[..., tuple[FaultProxy, Store]]


@pytest.mark.parametrize("fmt", list(FILES))
@pytest.mark.parametrize("kind", ["garbage", "lie", "truncate", "reset"])
def test_one_broken_answer_to_a_data_read_is_read_again_exactly(
    served: Store, fault_proxy: Proxy, fmt: str, kind: str
) -> None:
    """Garbage instead of HTTP, a Content-Length of half the body (the rest comes as the next answer's
    start), a body shorter than its Content-Length, a reset: once each, then the read goes on."""
    proxy, proxied = fault_proxy(served)
    proxy.inject(kind, times=1, match=FILES[fmt])  # the first GET of the file's bytes
    assert ids(proxied.url(FILES[fmt])) == list(range(ROWS))
    assert proxy.counts == {kind: 1}


@pytest.mark.parametrize("fmt", list(FILES))
def test_a_server_that_always_answers_garbage_gives_up_naming_the_url(
    served: Store, fault_proxy: Proxy, fmt: str
) -> None:
    proxy, proxied = fault_proxy(served)
    url = proxied.url(FILES[fmt])
    proxy.inject("garbage", times=1000, match=FILES[fmt], method=None)
    with pytest.raises(GaveUp) as e:
        ids(url)
    assert str(e.value).startswith(f"{url} (info): gave up after 5 tries in ")
    assert "the answer is not valid HTTP" in str(e.value)
    assert proxy.paths == {f"HEAD /{FILES[fmt]}": 5}


def test_garbage_on_every_data_read_gives_up_naming_the_url_and_the_bytes(served: Store, fault_proxy: Proxy) -> None:
    proxy, proxied = fault_proxy(served)
    url = proxied.url(FILES["jsonl"])
    ds = hr.open(url, retry=FIVE)  # opened without faults
    proxy.inject("garbage", times=1000, match=FILES["jsonl"])
    with pytest.raises(GaveUp) as e:
        list(ds.batch(256))
    assert str(e.value).startswith(f"{url} (bytes 0-")
    assert "gave up after 5 tries" in str(e.value) and "the answer is not valid HTTP" in str(e.value)
    assert proxy.counts == {"garbage": 5}


def test_a_redirect_loop_is_one_clear_error_not_retried(served: Store, fault_proxy: Proxy) -> None:
    proxy, proxied = fault_proxy(served)
    url = proxied.url(FILES["parquet"])
    proxy.inject("loop", times=1000, match=FILES["parquet"], method=None)
    with pytest.raises(SourceError) as e:
        hr.open(url, retry=FIVE)
    assert not isinstance(e.value, GaveUp)
    assert str(e.value).startswith(f"{url}: cannot list or open (TooManyRedirects: ")
    assert str(e.value).endswith("): too many redirects (a redirect loop?); check the URL")
    assert proxy.paths == {f"HEAD /{FILES['parquet']}": 10}  # aiohttp follows 10 redirects, once


def test_a_redirect_loop_on_a_data_read_names_the_url_and_the_bytes(served: Store, fault_proxy: Proxy) -> None:
    proxy, proxied = fault_proxy(served)
    url = proxied.url(FILES["parquet"])
    ds = hr.open(url, retry=FIVE)
    proxy.inject("loop", times=1000, match=FILES["parquet"])
    with pytest.raises(SourceError, match=r"cannot read bytes \d+-\d+: too many redirects") as e:
        list(ds.batch(256))
    assert str(e.value).startswith(f"{url}: cannot read bytes ")
    assert proxy.counts == {"loop": 10}


def test_a_content_length_that_always_lies_gives_up_saying_the_body_ended_early(
    served: Store, fault_proxy: Proxy
) -> None:
    proxy, proxied = fault_proxy(served)
    url = proxied.url(FILES["parquet"])
    ds = hr.open(url, retry=FIVE)
    proxy.inject("lie", times=1000, match=FILES["parquet"])
    with pytest.raises(GaveUp) as e:
        list(ds.batch(256))
    assert str(e.value).startswith(f"{url} (bytes ")
    # the last try sees the body cut short, or (the lie leaves the kept-alive connection out of step) an
    # answer that is not HTTP: both are said, and both are retried the same 5 times
    assert "gave up after 5 tries" in str(e.value)
    assert "the body ended early" in str(e.value) or "is the URL's server an HTTP server?" in str(e.value)
    assert set(proxy.counts) == {"lie"} and proxy.counts["lie"] in (4, 5)  # the 5th try may fail on the 4th's rest


def test_a_server_gone_quiet_times_out_and_the_read_is_tried_again_exactly(served: Store, fault_proxy: Proxy) -> None:
    """No byte for 30 s: the read gives up waiting after Retry(timeout=) and asks again."""
    proxy, proxied = fault_proxy(served, stall_s=30.0)
    proxy.inject("slow", times=1, match=FILES["jsonl"])
    retry = hr.Retry(attempts=5, backoff=0.01, max_wait=0.02, timeout=0.5)
    assert ids(proxied.url(FILES["jsonl"]), retry) == list(range(ROWS))
    assert proxy.counts == {"slow": 1}


def test_an_endless_body_ends_at_the_deadline_with_a_timeout_naming_the_url_and_the_bytes(
    served: Store, fault_proxy: Proxy
) -> None:
    """A byte every 50 ms, for ever: no read timeout fires, the deadline does."""
    proxy, proxied = fault_proxy(served, stall_s=0.05)
    url = proxied.url(FILES["jsonl"])
    retry = hr.Retry(attempts=5, backoff=0.01, max_wait=0.02, deadline=1.0, timeout=0.5)
    ds = hr.open(url, retry=retry)
    proxy.inject("endless", times=1000, match=FILES["jsonl"])
    with pytest.raises(GaveUp) as e:
        list(ds.batch(256))
    assert str(e.value).startswith(f"{url} (bytes 0-")
    assert ": timed out (" in str(e.value) and "the server is slow or stalled" in str(e.value)
    assert proxy.counts == {"endless": 1}


def test_a_silent_server_at_open_times_out_and_says_so(served: Store, fault_proxy: Proxy) -> None:
    proxy, proxied = fault_proxy(served, stall_s=30.0)
    url = proxied.url(FILES["parquet"])
    proxy.inject("slow", times=1000, match=FILES["parquet"], method=None)
    with pytest.raises(GaveUp) as e:
        hr.open(url, retry=hr.Retry(attempts=2, backoff=0.01, max_wait=0.02, timeout=0.3))
    assert str(e.value).startswith(f"{url} (info): gave up after 2 tries in ")
    assert ": timed out (" in str(e.value)
    assert proxy.counts == {"slow": 2}


def test_the_timeout_of_a_retry_policy_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout= > 0"):
        hr.Retry(timeout=0)
