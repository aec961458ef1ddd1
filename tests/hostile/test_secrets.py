"""Secrets in every output channel: a dataset served over real HTTP at URLs that carry a password
(``http://user:password@host/...``), a signature (``?X-Amz-Signature=...``) and a token in the path that
is also a ``storage_options`` secret. Pipelines fail in user functions (in this process, in threads, in
worker processes), skip bad records with warnings, log, report stats, print reprs and states, and run
``headrace inspect`` and ``headrace bench``; every channel is searched for each secret, and the parts of
the URL that are not secret (host, path, file) must still be there.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import headrace as hr
from headrace.core.policy import SkippedRecordWarning
from headrace.core.redact import register
from headrace.prepare import prepare
from servers import Store

pytestmark = pytest.mark.timeout(120)
USER = "reader"
PASSWORD = "hunter2secret-in-userinfo"
SIGNATURE = "SECRETSIG-0f1e2d3c4b5a"
PATH_TOKEN = "pathtoken-7a6b5c4d3e"  # a token in the URL's path, also passed in storage_options
LATE_TOKEN = "latetoken-9z8y7x6w5v"  # registered only after the worker processes forked
SECRETS = (PASSWORD, SIGNATURE, PATH_TOKEN, LATE_TOKEN)
OPTIONS = {"client_kwargs": {"headers": {"X-Api-Token": PATH_TOKEN}}}
ROWS = 300
BAD_LINE = 8  # 1-based line of bad.jsonl that is not JSON


@dataclass(frozen=True)
class Served:
    host: str  # "127.0.0.1:PORT"

    def url(self, path: str) -> str:
        """The signed URL of ``path``, with the password."""
        return f"http://{USER}:{PASSWORD}@{self.host}/{path}?X-Amz-Signature={SIGNATURE}&X-Amz-Expires=3600"

    def shown(self, path: str) -> str:
        """How headrace may print :meth:`url`: the password, the signature and the token masked."""
        masked = path.replace(PATH_TOKEN, "***").replace(LATE_TOKEN, "***")
        return f"http://{USER}:***@{self.host}/{masked}?X-Amz-Signature=***&X-Amz-Expires=3600"


ROWS_PATH = f"hostile-secrets/t/{PATH_TOKEN}/rows.jsonl"
BAD_PATH = f"hostile-secrets/t/{PATH_TOKEN}/bad.jsonl"
LATE_PATH = f"hostile-secrets/late/{LATE_TOKEN}/rows.jsonl"


@pytest.fixture(scope="module")
def served(http_store: Store) -> Served:
    assert http_store.root is not None
    rows = "".join(json.dumps({"id": i, "text": f"row {i}"}) + "\n" for i in range(ROWS))
    bad = [json.dumps({"id": i, "text": f"row {i}"}) for i in range(20)]
    bad[BAD_LINE - 1] = '{"id": 7, "text": '
    for path, text in ((ROWS_PATH, rows), (LATE_PATH, rows), (BAD_PATH, "\n".join(bad) + "\n")):
        target = http_store.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return Served(http_store.endpoint.removeprefix("http://"))


def assert_clean(*texts: str) -> None:
    """No secret in any of ``texts``."""
    assert texts
    for secret in SECRETS:
        leaks = [t[max(0, t.find(secret) - 120) : t.find(secret) + 40] for t in texts if secret in t]
        assert not leaks, f"{secret!r} leaked: {leaks[:2]}"


def explode(row: dict[str, Any]) -> dict[str, Any]:
    if row["id"] == 150:
        raise ValueError("explode: row 150 is cursed")
    return {"double": 2 * row["id"]}


def drop_150(row: dict[str, Any]) -> bool:
    if row["id"] == 150:
        raise ValueError("drop_150: row 150 is cursed")
    return True


def failure(loader: hr.Loader) -> BaseException:
    with pytest.raises(ValueError, match="row 150 is cursed") as caught:
        for _ in loader:
            pass
    return caught.value


# -- lineage and notes ----------------------------------------------------------------------------------


def test_lineage_masks_the_password_the_signature_and_the_storage_options_token(served: Served) -> None:
    ds = hr.open(served.url(ROWS_PATH), storage_options=OPTIONS)
    assert ds.lineage(0, 7) == f"{served.shown(ROWS_PATH)} (record 7)"
    mixed = hr.mix({"web": ds, "bad": hr.open(served.url(BAD_PATH), storage_options=OPTIONS)})
    assert mixed.lineage(1, 3) == f"bad: {served.shown(BAD_PATH)} (record 3)"
    assert mixed.lineage(0, 3) == f"web: {served.shown(ROWS_PATH)} (record 3)"


@pytest.mark.parametrize(("num_workers", "worker_type"), [(0, "thread"), (2, "thread"), (2, "process")])
def test_a_failing_map_names_its_block_without_secrets(served: Served, num_workers: int, worker_type: str) -> None:
    ds = hr.open(served.url(ROWS_PATH), storage_options=OPTIONS).map(explode).batch(10)
    error = failure(hr.Loader(ds, num_workers=num_workers, worker_type=worker_type))  # type: ignore[arg-type]
    # blocks ramp up 64, 64, 128, ...: row 150 is in the block that starts at record 128
    assert error.__notes__ == [f"headrace: raised by map(explode) on a block starting at "
                               f"{served.shown(ROWS_PATH)} (record 128)"]  # fmt: skip
    printed = "".join(traceback.format_exception(error))
    assert f"{served.host}/hostile-secrets/t/***/rows.jsonl" in printed
    assert_clean(printed, str(error), repr(error))


def test_a_failing_filter_in_worker_processes_names_its_block_without_secrets(served: Served) -> None:
    ds = hr.open(served.url(ROWS_PATH), storage_options=OPTIONS).filter(drop_150).batch(10)
    error = failure(hr.Loader(ds, num_workers=2, worker_type="process"))
    assert error.__notes__ == [f"headrace: raised by filter(drop_150) on a block starting at "
                               f"{served.shown(ROWS_PATH)} (record 128)"]  # fmt: skip
    assert_clean("".join(traceback.format_exception(error)))


def test_a_secret_registered_after_the_workers_forked_is_masked_in_their_notes(served: Served) -> None:
    """The note is written in a worker process that never saw the secret: this process masks it (the note
    and the worker's own traceback text, which travels as the error's cause)."""
    ds = hr.open(served.url(LATE_PATH)).map(explode).batch(10)
    loader = hr.Loader(ds, num_workers=2, worker_type="process", prefetch=0)
    batches = iter(loader)
    assert next(batches)["id"].tolist() == list(range(10))  # the workers are running
    register({"token": LATE_TOKEN})
    with pytest.raises(ValueError, match="row 150 is cursed") as caught:
        for _ in batches:
            pass
    error = caught.value
    assert error.__notes__ == [f"headrace: raised by map(explode) on a block starting at "
                               f"{served.shown(LATE_PATH)} (record 128)"]  # fmt: skip
    assert_clean("".join(traceback.format_exception(error)))


def test_a_pipeline_unpickled_in_a_spawned_process_masks_its_storage_options_secrets(
    served: Served, tmp_path: Path
) -> None:
    """A pipeline sent to a spawned process (a torch DataLoader with ``spawn``, Ray) registers the secrets of
    its filesystems' ``storage_options`` there: a fresh interpreter has seen none of them."""
    path = tmp_path / "pipeline.pkl"
    path.write_bytes(pickle.dumps(hr.open(served.url(ROWS_PATH), storage_options=OPTIONS).batch(10)))
    child = ("import pickle, sys; from headrace.core.redact import redact; token = 'token ' + sys.argv[2]; "
             "print(redact(token) == token); ds = pickle.loads(open(sys.argv[1], 'rb').read()); "
             "print(redact(token)); print(ds.lineage(0, 5)); print(repr(ds))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", child, str(path), PATH_TOKEN], capture_output=True, text=True,
                          timeout=90, cwd=Path(__file__).parent)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[:3] == ["True", "token ***", f"{served.shown(ROWS_PATH)} (record 5)"]
    assert_clean(*lines[1:], done.stderr)


# -- stats, logs, reprs, state, warnings ----------------------------------------------------------------


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    yield caplog


def test_stats_logs_reprs_and_state_carry_no_secret(served: Served, logs: pytest.LogCaptureFixture) -> None:
    ds = hr.open(served.url(ROWS_PATH), storage_options=OPTIONS).map(lambda r: {"double": 2 * r["id"]})
    ds = ds.filter(lambda r: r["id"] != 150).batch(50)
    loader = hr.Loader(ds, num_workers=2, log_every=0.0)
    seen = []
    for batch in loader:
        seen += batch["id"].tolist()
        state = json.dumps(loader.state_dict())
    assert seen == [i for i in range(ROWS) if i != 150]
    stats = loader.stats()
    assert stats.rows == ROWS - 1 and stats.batches == 6
    lines = [r.getMessage() for r in logs.records if r.name == "headrace"]
    assert len(lines) == 6 and lines[-1].startswith("batches 6 |")
    shown = repr(ds)
    assert served.shown(ROWS_PATH) in shown
    assert_clean(shown, repr(ds.source.shards), repr(loader), state, json.dumps(ds.describe()), stats.line(),
                 json.dumps(stats.scalars()), repr(stats), logs.text)  # fmt: skip


def test_token_windows_over_a_signed_url_keep_no_secret_in_the_state(served: Served, http_store: Store) -> None:
    import numpy as np

    assert http_store.root is not None
    path = f"hostile-secrets/t/{PATH_TOKEN}/tokens.bin"
    (http_store.root / path).write_bytes(np.arange(4096, dtype=np.uint16).tobytes())
    ds = hr.open(served.url(path), storage_options=OPTIONS).shuffle(seed=0, buffer_size=None).window(64).batch(4)
    loader = hr.Loader(ds)
    first = next(iter(loader))
    assert first["input_ids"].shape == (4, 64)
    state = loader.state_dict()
    assert_clean(json.dumps(state), json.dumps(ds.describe()), repr(ds))
    assert "tokens.bin" in json.dumps(state["pipeline"])
    resigned = hr.open(served.url(path).replace(SIGNATURE, "0ther-signature-9"), storage_options=OPTIONS)
    again = hr.Loader(resigned.shuffle(seed=0, buffer_size=None).window(64).batch(4))
    again.load_state_dict(state)  # a URL signed anew is the same data: the state still fits


def test_skipped_records_warn_and_are_listed_without_secrets(served: Served) -> None:
    ds = hr.open(served.url(BAD_PATH), storage_options=OPTIONS, errors="warn")
    loader = hr.Loader(ds.batch(5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [i for batch in loader for i in batch["id"].tolist()]
    assert ids == [i for i in range(20) if i != BAD_LINE - 1] and loader.skipped == 1
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedRecordWarning)]
    where = f"{served.shown(BAD_PATH)}:{BAD_LINE}: malformed JSON line"
    assert len(messages) == 1 and messages[0].startswith(f"skipped: {where}")
    assert len(loader.skipped_where) == 1 and loader.skipped_where[0].startswith(where)
    assert_clean(*messages, *loader.skipped_where, json.dumps(loader.state_dict()))


# -- the command line -----------------------------------------------------------------------------------


def test_headrace_inspect_and_bench_print_no_secret(served: Served) -> None:
    url = served.url(ROWS_PATH)
    token = ["-o", f"client_kwargs.headers.X-Api-Token={PATH_TOKEN}"]
    runs = {
        "inspect": ["inspect", url, *token, "-n", "2"],
        "inspect-json": ["inspect", "--json", url, *token, "-n", "2"],
        "bench": ["bench", url, *token, "--batches", "3", "--batch-size", "10"],
        "bench-json": ["bench", "--json", url, *token, "--batches", "3", "--batch-size", "10"],
        "missing": ["inspect", url.replace("rows.jsonl", "none.jsonl"), *token],
    }
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250"}
    done = {
        name: subprocess.run(
            [sys.executable, "-m", "headrace", *argv], capture_output=True, text=True, timeout=90, env=env
        )
        for name, argv in runs.items()
    }
    assert {n: d.returncode for n, d in done.items()} == {n: 2 if n == "missing" else 0 for n in runs}, {
        n: d.stderr[-800:] for n, d in done.items()
    }
    report = json.loads(done["inspect-json"].stdout)
    assert report["shards"][0]["path"] == served.shown(ROWS_PATH) and len(report["sample"]) == 2
    assert json.loads(done["bench-json"].stdout)["batches"] == 3
    assert served.host in done["inspect"].stdout and served.host in done["missing"].stderr
    assert_clean(*(run.stdout + run.stderr for run in done.values()))


# -- files written: prepare's job, completion records and manifest ---------------------------------------


def test_prepare_writes_no_secret_into_its_output_folder_and_still_resumes(
    served: Served, bpe_path: str, tmp_path: Path
) -> None:
    out = tmp_path / "tokens"
    first = prepare(served.url(ROWS_PATH), out, bpe_path, storage_options=OPTIONS, workers=1, quiet=True)
    assert first.units == 1 and first.resumed_units == 0
    assert first.manifest["sources"][0]["path"] == served.shown(ROWS_PATH)
    written = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix not in (".bin", ".idx"))
    assert {p.name for p in written} >= {"manifest.json", "job.json"} and len(written) >= 3
    assert_clean(*(p.read_text() for p in written))
    again = prepare(served.url(ROWS_PATH), out, bpe_path, storage_options=OPTIONS, workers=1, quiet=True)
    assert again.resumed_units == 1 and again.new_tokens == 0 and again.tokens == first.tokens


FUNCTIONS = """
def cursed_value(row):
    if row["id"] == 150:
        raise ValueError("row 150 is cursed")
    return {"double": 2 * row["id"]}


def cursed_runtime(row):
    if row["id"] == 150:
        raise RuntimeError("row 150 is cursed")
    return {"double": 2 * row["id"]}
"""


@pytest.mark.parametrize("fn", ["cursed_value", "cursed_runtime"])
def test_the_command_line_shows_where_a_user_function_failed_without_secrets(
    served: Served, tmp_path: Path, fn: str
) -> None:
    """A failing step of a config run by ``headrace bench``: the error says which function and block
    (the note), masked, whatever the exception's type, and is not a raw traceback with the URL in it."""
    (tmp_path / "secretfns.py").write_text(FUNCTIONS)
    config = {
        "source": {"path": served.url(ROWS_PATH), "storage_options": OPTIONS},
        "steps": [{"map": {"fn": f"secretfns:{fn}"}}, {"batch": {"size": 10}}],
        "loader": {"num_workers": 2, "worker_type": "process"},
    }
    (tmp_path / "pipeline.yaml").write_text(json.dumps(config))  # JSON is YAML
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, "-m", "headrace", "bench", str(tmp_path / "pipeline.yaml")],
                          capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == (2 if fn == "cursed_value" else 1), done.stderr[-2000:]
    assert "row 150 is cursed" in done.stderr
    assert (f"headrace: raised by map({fn}) on a block starting at {served.shown(ROWS_PATH)} (record 128)"
            in done.stderr)  # fmt: skip
    assert_clean(done.stdout, done.stderr)
