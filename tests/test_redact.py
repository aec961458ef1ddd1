"""Credentials never appear in what headrace prints, logs, raises, reprs or checkpoints.

Each scenario uses a secret the way users pass them — S3 keys and an Azure connection string in
``storage_options``, a password and a signature in an HTTP URL, ``-o`` flags of ``headrace inspect`` —
against real servers, with faults injected so retries log, and with wrong keys and missing objects so
errors are raised. Everything that comes out (messages, tracebacks, logs at DEBUG from every logger,
warnings, reprs, states, CLI stdout/stderr) is searched for each secret.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from faultproxy import FaultProxy
from headrace.core.errors import SourceError
from headrace.core.redact import redact, register
from servers import AZURE_KEY, Store

pytestmark = pytest.mark.timeout(120)
PASSWORD = "pw-hunter2-do-not-print"
SIGNATURE = "sig-9f8e7d6c5b4a3-do-not-print"
WRONG = "wrong-secret-do-not-print"
FAST = hr.Retry(attempts=4, backoff=0.01, max_wait=0.02)


class Outputs:
    """Everything a scenario let out, to be searched."""

    def __init__(self, caplog: pytest.LogCaptureFixture, caught: list[warnings.WarningMessage]) -> None:
        self.texts: list[str] = []
        self.caplog, self.caught = caplog, caught

    def everything(self) -> list[str]:
        """The texts added, every log record so far (of any logger) and every warning."""
        records = self.caplog.get_records("setup") + self.caplog.get_records("call")
        assert records  # the scenarios log (fsspec at DEBUG at least): the search has something to search
        logs = [self.caplog.handler.format(r) for r in records]
        return self.texts + logs + [str(w.message) for w in self.caught]

    def error(self, run: Callable[[], Any]) -> BaseException:
        with pytest.raises(Exception) as e:  # any error: its text is what is checked
            run()
        self.texts += [str(e.value), repr(e.value), "".join(traceback.format_exception(e.value))]
        return e.value

    def add(self, *values: Any) -> None:
        self.texts += [v if isinstance(v, str) else repr(v) for v in values]


@pytest.fixture
def outputs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)  # every logger, every level: ours, fsspec's, the SDKs'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield Outputs(caplog, caught)


def assert_nowhere(outputs: Outputs, *secrets: str) -> None:
    texts = outputs.everything()
    assert outputs.texts
    for secret in secrets:
        leaks = [t[max(0, t.find(secret) - 200) : t.find(secret) + 50] for t in texts if secret in t]
        assert not leaks, f"{secret!r} leaked: {leaks[:3]}"


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("secret-data")
    for f in range(3):
        pq.write_table(pa.table({"id": list(range(f * 100, (f + 1) * 100))}), folder / f"part-{f}.parquet")
    return folder


def read_all(ds: hr.Dataset) -> tuple[list[int], hr.Loader, list[str]]:
    loader = hr.Loader(ds.batch(25))
    ids, states = [], []
    for batch in loader:
        ids += batch["id"].tolist()
        states.append(json.dumps(loader.state_dict()))
    return ids, loader, states


def test_s3_keys_do_not_leak_through_reads_retries_errors_or_state(
    s3_store: Store, small: Path, outputs: Outputs, fault_proxy: Callable[..., tuple[FaultProxy, Store]]
) -> None:
    s3_store.put(small, "secret-data")
    proxy, proxied = fault_proxy(s3_store, rate=0.3, seed=1, kinds=("reset", "503"), stall_s=0.0)
    ds = hr.open(proxied.url("secret-data/*.parquet"), storage_options=proxied.storage_options, retry=FAST)
    ids, loader, states = read_all(ds)
    assert ids == list(range(300)) and sum(proxy.counts.values()) >= 1
    outputs.add(ds, loader, ds.source, ds.source.fs, *states, ds.describe())
    wrong = proxied.with_keys(proxied.key, WRONG)
    error = outputs.error(lambda: hr.open(proxied.url("secret-data/*.parquet"), storage_options=wrong.storage_options))
    assert isinstance(error, SourceError) and "access denied" in str(error)
    proxy.inject("403", times=100, match="part-1")
    outputs.error(lambda: read_all(hr.open(proxied.url("secret-data/part-1.parquet"),
                                           storage_options=proxied.storage_options, retry=FAST)))  # fmt: skip
    assert_nowhere(outputs, s3_store.secret, WRONG)


def test_a_password_and_a_signature_in_an_http_url_do_not_leak(
    http_store: Store, small: Path, outputs: Outputs, fault_proxy: Callable[..., tuple[FaultProxy, Store]]
) -> None:
    http_store.put(small, "signed")
    proxy, proxied = fault_proxy(http_store)
    host = proxied.endpoint.removeprefix("http://")
    url = f"http://reader:{PASSWORD}@{host}/signed/part-0.parquet?sig={SIGNATURE}&sp=r"
    ds = hr.open(url, retry=FAST)
    for kind in ("reset", "503", "truncate"):
        proxy.inject(kind, match="part-0")
    ids, loader, states = read_all(ds)
    assert ids == list(range(100))
    assert [SIGNATURE in f.target for f in proxy.log] == [True] * 3  # it went over the wire, with faults ...
    outputs.add(ds, loader, *states, ds.describe(), ds.source.shards)
    missing = url.replace("part-0", "part-9")
    error = outputs.error(lambda: hr.open(missing, retry=FAST))
    assert str(error).startswith(f"no such file or directory: 'http://reader:***@{host}/signed/part-9.parquet?sig=***")
    proxy.inject("500", times=100, match="part-0")
    outputs.error(lambda: read_all(hr.open(url, retry=FAST)))
    assert_nowhere(outputs, PASSWORD, SIGNATURE)  # ... and never came back out


def test_an_azure_account_key_does_not_leak(azure_store: Store, small: Path, outputs: Outputs) -> None:
    azure_store.put(small, "az-secret")
    ds = hr.open(azure_store.url("az-secret/*.parquet"), storage_options=azure_store.storage_options)
    ids, loader, states = read_all(ds)
    assert ids == list(range(300))
    outputs.add(ds, loader, *states)
    bad_key = AZURE_KEY[::-1]
    options = {"connection_string": azure_store.storage_options["connection_string"].replace(AZURE_KEY, bad_key)}
    outputs.error(lambda: hr.open(azure_store.url("az-secret/*.parquet"), storage_options=options))
    assert_nowhere(outputs, AZURE_KEY, bad_key)


def test_headrace_inspect_prints_no_secret(s3_store: Store, http_store: Store, small: Path) -> None:
    s3_store.put(small, "cli-secret")
    http_store.put(small, "cli-signed")
    host = http_store.endpoint.removeprefix("http://")
    where = s3_store.url("cli-secret/*.parquet")
    endpoint = ["-o", f"client_kwargs.endpoint_url={s3_store.endpoint}", "-o", "client_kwargs.region_name=us-east-1"]
    keys = ["-o", f"key={s3_store.key}", "-o", f"secret={s3_store.secret}"]
    signed = f"http://u:{PASSWORD}@{host}/cli-signed/%s?sig={SIGNATURE}"
    runs = {
        "s3": ["inspect", where, *keys, *endpoint],
        "s3-json": ["inspect", "--json", where, *keys, *endpoint],
        "s3-wrong": ["inspect", where, "-o", f"key={s3_store.key}", "-o", f"secret={WRONG}", *endpoint],
        "http": ["inspect", signed % "part-1.parquet"],
        "http-404": ["inspect", signed % "nothing.parquet"],
    }
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    done = {
        name: subprocess.run(
            [sys.executable, "-m", "headrace", *argv], capture_output=True, text=True, timeout=90, env=env
        )
        for name, argv in runs.items()
    }
    assert [done[n].returncode for n in runs] == [0, 0, 2, 0, 2], {n: d.stderr[-500:] for n, d in done.items()}
    assert json.loads(done["s3-json"].stdout)["totals"]["rows"] == 300
    assert "access denied" in done["s3-wrong"].stderr
    assert "sig=***" in done["http"].stdout
    for name, run in done.items():
        for secret in (s3_store.secret, WRONG, PASSWORD, SIGNATURE):
            assert secret not in run.stdout + run.stderr, (name, secret)


def test_redact_masks_urls_and_registered_secrets() -> None:
    register({"client_kwargs": {"aws_session_token": "FQoGZXIvYXdzEJr-session"}, "anon": False, "region": "eu"})
    register({"connection_string": "AccountName=a;AccountKey=c2VjcmV0LWtleQ==;EndpointSuffix=x"})
    assert redact("token FQoGZXIvYXdzEJr-session expired") == "token *** expired"
    assert redact("bad key c2VjcmV0LWtleQ== for a") == "bad key *** for a"
    assert redact("s3://bucket/eu/x.parquet") == "s3://bucket/eu/x.parquet"  # a short non-secret stays
    assert redact("https://h/x?X-Amz-Signature=abc&X-Amz-Credential=AK%2F1&x=1") == (
        "https://h/x?X-Amz-Signature=***&X-Amz-Credential=***&x=1"
    )
    assert redact("abfs://c@acct.dfs.core.windows.net/x") == "abfs://c@acct.dfs.core.windows.net/x"


def test_redact_notes_masks_notes_and_a_worker_processes_traceback_text() -> None:
    from concurrent.futures.process import _RemoteTraceback

    from headrace.core.redact import redact_notes

    register({"token": "late-registered-0123"})
    error = ValueError("the user's own message stays: late-registered-0123")
    error.add_note("headrace: at http://u:pw-in-note@h/x.jsonl?sig=s1g (record 3) late-registered-0123")
    error.__cause__ = _RemoteTraceback('\n"""\nValueError\nat http://u:pw-in-tb@h/x late-registered-0123\n"""')
    assert redact_notes(error) is error
    assert error.__notes__ == ["headrace: at http://u:***@h/x.jsonl?sig=*** (record 3) ***"]
    assert str(error.__cause__) == '\n"""\nValueError\nat http://u:***@h/x ***\n"""'
    assert str(error) == "the user's own message stays: late-registered-0123"


def test_redacted_masks_every_string_of_a_json_document() -> None:
    from headrace.core.redact import redacted

    report = {"pipeline": [{"files": ["x.bin?X-Amz-Signature=abc", "y.bin"]}], "rows": 3, "name": ("s3://b/k",)}
    assert redacted(report) == {"pipeline": [{"files": ["x.bin?X-Amz-Signature=***", "y.bin"]}], "rows": 3,
                                "name": ("s3://b/k",)}  # fmt: skip


def test_an_authorization_header_masks_its_token_alone() -> None:
    register({"client_kwargs": {"headers": {"Authorization": "Bearer hf_abcdefghij0123"}}})
    assert redact("401 for token hf_abcdefghij0123") == "401 for token ***"


def test_headrace_log_records_are_redacted_with_their_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    register({"secret": "log-secret-0123456"})
    try:
        raise OSError("GET http://u:pw-in-exc@h/x?X-Amz-Signature=s1g failed")
    except OSError:
        logging.getLogger("headrace.io").warning("%s: retry", "http://u:pw-in-log@h/x log-secret-0123456",
                                                 exc_info=True)  # fmt: skip
    logging.getLogger("fsspec.http").debug("Retrieve file size for %s", "http://u:pw-fsspec@h/y?sig=s1g")
    assert [r.getMessage() for r in caplog.records] == [
        "http://u:***@h/x ***: retry",
        "Retrieve file size for http://u:***@h/y?sig=***",
    ]
    assert "OSError: GET http://u:***@h/x?X-Amz-Signature=*** failed" in caplog.text
    for secret in ("pw-in-exc", "pw-in-log", "log-secret-0123456", "pw-fsspec", "s1g"):
        assert secret not in caplog.text


def test_a_worker_forked_while_the_secrets_lock_is_held_can_still_redact() -> None:
    """Another thread may hold the lock when a worker forks: the child gets a lock of its own (else its
    first register() would wait forever)."""
    import headrace.core.redact as module

    with module._lock:
        pid = os.fork()
        if pid == 0:  # the child: a deadlock here is ended by the alarm
            import signal

            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler, inherited
            signal.alarm(10)
            register({"token": "child-token-0123"})  # takes the lock
            os._exit(0 if redact("http://u:pw@h/child-token-0123") == "http://u:***@h/***" else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_skipped_where_and_warnings_mask_secrets_registered_after_the_error() -> None:
    from headrace.core.errors import RecordError
    from headrace.core.policy import ErrorLog, SkippedRecordWarning

    error = RecordError("s3://bucket/tok-after-0123456/x.jsonl:3: malformed JSON line")
    register({"token": "tok-after-0123456"})
    log = ErrorLog(policy="warn")
    with pytest.warns(SkippedRecordWarning) as caught:
        log.record(error)
    assert log.where == ["s3://bucket/***/x.jsonl:3: malformed JSON line"]
    assert [str(w.message) for w in caught] == ["skipped: s3://bucket/***/x.jsonl:3: malformed JSON line"]


def test_the_repr_of_a_dataset_masks_the_arguments_of_its_functions(tmp_path: Path) -> None:
    import functools

    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1}\n')
    fetch = functools.partial(dict, base="https://u:pw-in-partial@h/api?token=tok123")
    shown = repr(hr.open(str(path)).map(fetch).batch(2))
    assert "base='https://u:***@h/api?token=***'" in shown and "pw-in-partial" not in shown


def test_a_token_alone_in_an_http_url_cookies_and_more_query_names_are_masked() -> None:
    register({"client_kwargs": {"headers": {"Cookie": "session=c00kie-value"}}})
    assert redact("https://ghp_0123456789@raw.githubusercontent.com/o/r/x.jsonl") == (
        "https://***@raw.githubusercontent.com/o/r/x.jsonl"
    )
    assert (
        redact("abfs://container@account.dfs.core.windows.net/x") == "abfs://container@account.dfs.core.windows.net/x"
    )
    assert redact("sent session=c00kie-value") == "sent ***"
    assert redact("https://h/x?Expires=9&Signature=abc&Key-Pair-Id=K1&auth=t0k&private_token=p4t") == (
        "https://h/x?Expires=9&Signature=***&Key-Pair-Id=K1&auth=***&private_token=***"
    )


def test_a_registered_secret_is_masked_percent_encoded_too() -> None:
    register({"secret": "wJalr/K7MD+ENG=="})
    assert redact("GET /b/k?X-Secret=wJalr%2FK7MD%2BENG%3D%3D") == "GET /b/k?X-Secret=***"
    assert redact("GET /b/k?X-Secret=wJalr/K7MD%2BENG%3D%3D&x=wJalr%2FK7MD%2BENG%3D%3D") == (
        "GET /b/k?X-Secret=***&x=***"
    )
