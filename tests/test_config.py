"""YAML pipeline configs (hr.Pipeline): the same batches as the pipeline written in Python, one clear error
per mistake naming the file and the place, and `headrace bench CONFIG` with a step time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import headrace as hr

CONFIG = """
sources:
  first:
    path: {parquet}
    columns: [id, text]
    weight: 3
  second:
    path: {jsonl}
    columns: [id, text]
    weight: 1
mix: {{seed: 5, stop: first_exhausted}}
steps:
  - shuffle: {{seed: 42, buffer_size: 300}}
  - filter: {{fn: "hr_test_fns:long_enough"}}
  - tokenize: {{tokenizer: {bpe}, column: text, add_eos: true}}
  - pack: {{seq_len: 32}}
  - batch: {{size: 8, drop_last: true}}
loader: {{num_workers: 2, prefetch: 4}}
"""

FNS = "def long_enough(row):\n    return len(row['text']) > 40\n"


@pytest.fixture
def config(tmp_path: Path, parquet_dir: Path, jsonl_dir: Path, bpe_path: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "hr_test_fns.py").write_text(FNS)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "pipeline.yaml"
    path.write_text(CONFIG.format(parquet=parquet_dir, jsonl=jsonl_dir / "*.jsonl.zst", bpe=bpe_path))
    return path


def test_a_config_builds_the_same_pipeline_as_python(
    config: Path, parquet_dir: Path, jsonl_dir: Path, bpe_path: str
) -> None:
    import hr_test_fns  # type: ignore[import-not-found]

    pipeline = hr.Pipeline.from_yaml(config)
    loader = pipeline.loader()
    assert (loader.num_workers, loader.prefetch) == (2, 4)
    first = hr.open(str(parquet_dir), columns=["id", "text"])
    second = hr.open(str(jsonl_dir / "*.jsonl.zst"), columns=["id", "text"])
    ds = (
        hr.mix({"first": first, "second": second}, {"first": 3, "second": 1}, seed=5, stop="first_exhausted")
        .shuffle(seed=42, buffer_size=300)
        .filter(hr_test_fns.long_enough)
        .tokenize(bpe_path, column="text", add_eos=True)
        .pack(seq_len=32)
        .batch(8, drop_last=True)
    )
    want = [b["input_ids"].tolist() for b in hr.Loader(ds)]
    got = [b["input_ids"].tolist() for b in loader]
    assert len(want) > 100 and got == want
    assert pipeline.loader(num_workers=0).num_workers == 0  # overrides win


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t + "extra: 1\n", r"pipeline.yaml: the config: unknown key\(s\) extra; allowed: source, sources"),
        (
            lambda t: t.replace("- pack:", "- packk:"),
            r"yaml: steps\[3\]: unknown step 'packk'; steps: shuffle",
        ),
        (
            lambda t: t.replace("seq_len: 32", "seqlen: 32"),
            r"steps\[3\].pack: unknown option\(s\) seqlen; options: seq_len",
        ),
        (lambda t: t.replace("weight: 1\n", "weight: -1\n"), r"sources.second.weight: must be a number >= 0, got -1"),
        (lambda t: t.replace("path: ", "paths: ", 1), r"sources.first: needs `path:`"),
        (lambda t: t.replace("hr_test_fns:long_enough", "hr_test_fns:nope"), r"steps\[1\].filter.fn: cannot import"),
        (
            lambda t: t.replace("num_workers: 2", "workers: 2"),
            r"loader: unknown key\(s\) workers; allowed: num_w",
        ),
        (lambda t: t.replace("columns: [id, text]", "columns: [id, nope]", 1), r"sources.first: .*nope"),
        (lambda t: t.replace("steps:", "steps: [").replace("loader:", "]\nloader:"), r"pipeline.yaml: not valid YAML"),
    ],
)
def test_each_mistake_is_one_clear_error_naming_the_place(config: Path, mutate: object, message: str) -> None:
    config.write_text(mutate(config.read_text()))  # type: ignore[operator]
    with pytest.raises(hr.ConfigError, match=message):
        hr.Pipeline.from_yaml(config)


def test_bench_a_config_with_a_step_time(config: Path) -> None:
    def bench(*flags: str) -> dict[str, object]:
        run = subprocess.run([sys.executable, "-m", "headrace", "bench", str(config), "--batches", "20", "--json",
                              *flags], capture_output=True, text=True, timeout=120, env=_env(config))  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        return json.loads(run.stdout)  # type: ignore[no-any-return]

    report = bench("--step-time", "0.002")
    assert report["batches"] == 20 and report["workers"] == 2
    assert [s["stage"] for s in report["stages"]] == ["batch", "pack", "tokenize", "filter(long_enough)", "shuffle",
                                                      "mix"]  # fmt: skip
    assert report["step_time"] == 0.002 and 0 <= report["data_wait"] <= 1 and isinstance(report["keeps_up"], bool)
    assert report["tokens_per_s"] > 0
    assert bench("--workers", "0")["workers"] == 0


def _env(config: Path) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": f"{config.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


FOLDER_CONFIG = """
source: {{path: {data}}}
steps:
  - map: {{fn: "{module}:ids"}}
  - pack: {{seq_len: 4}}
  - batch: {{size: 2}}
"""
FOLDER_FNS = "def ids(row):\n    return {'input_ids': [row['id']] * 3}\n"


def _bench_in(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``headrace`` script (not ``python -m``, which would put the working directory on sys.path)."""
    script = Path(sys.executable).with_name("headrace")
    return subprocess.run([str(script), "bench", str(config), "--batches", "2", "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("where", ["cwd", "config"])
def test_a_function_module_is_found_in_the_working_directory_and_next_to_the_config(tmp_path: Path, where: str) -> None:
    work, conf = tmp_path / "work", tmp_path / "conf"
    work.mkdir()
    conf.mkdir()
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(f'{{"id": {i}}}\n' for i in range(8)))
    module = f"hr_{where}_fns"
    (work if where == "cwd" else conf).joinpath(f"{module}.py").write_text(FOLDER_FNS)
    config = conf / "pipeline.yaml"
    config.write_text(FOLDER_CONFIG.format(data=data, module=module))
    run = _bench_in(work, config)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["batches"] == 2 and report["rows"] == 4
    assert [s["stage"] for s in report["stages"]] == ["batch", "pack", "map(ids)", "source"]


def test_a_function_module_found_nowhere_names_the_places_searched(tmp_path: Path) -> None:
    work, conf = tmp_path / "work", tmp_path / "conf"
    work.mkdir()
    conf.mkdir()
    data = tmp_path / "rows.jsonl"
    data.write_text('{"id": 0}\n')
    config = conf / "pipeline.yaml"
    config.write_text(FOLDER_CONFIG.format(data=data, module="hr_nowhere_fns"))
    run = _bench_in(work, config)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert (f"headrace: error: {config}: steps[0].map.fn: cannot import 'hr_nowhere_fns:ids': no module "
            f"'hr_nowhere_fns' in the Python path (sys.path), the working directory {work}, the config's folder "
            f"{conf}; put hr_nowhere_fns.py (or a package) in one of them, or install it") in run.stderr  # fmt: skip
