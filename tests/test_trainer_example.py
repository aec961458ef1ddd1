"""examples/hf_trainer_causal_lm.py takes the FlexAI job's command line as written: it trains a pretrained (tiny,
local) GPT-2 on local Parquet made from the real corpora under torchrun on two ranks, and a resume from its
checkpoint continues exactly; from a config with --do_eval it reports the perplexity."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from corpora import split  # noqa: E402  (tests/ is on sys.path)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT = EXAMPLES / "hf_trainer_causal_lm.py"
CONFIG = "CC-MAIN-2024-10"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, corpus: pa.Table, bpe_path: str) -> tuple[Path, Path]:
    """``(dataset, model)``: the corpus laid out as a Hub dataset (``data/CONFIG/train-*.parquet`` and
    ``test-*.parquet``), and a tiny GPT-2 with its tokenizer saved with ``save_pretrained``."""
    root = tmp_path_factory.mktemp("fineweb")
    folder = root / "data" / CONFIG
    folder.mkdir(parents=True)
    train, test = corpus.slice(0, 4500), corpus.slice(4500)
    for i, part in enumerate(split(train, 3)):
        pq.write_table(part, folder / f"train-{i:05d}-of-00003.parquet", row_group_size=250)
    pq.write_table(test, folder / "test-00000-of-00001.parquet")
    model = tmp_path_factory.mktemp("gpt2")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=bpe_path, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=len(tokenizer), n_positions=32,
                                     bos_token_id=eos, eos_token_id=eos)  # fmt: skip
    transformers.GPT2LMHeadModel(config).save_pretrained(model)
    tokenizer.save_pretrained(model)
    return root, model


def flexai(dataset: Path, model: Path, output_dir: Path) -> list[str]:
    """The FlexAI job's arguments, sizes made tiny and the data pointed at local files (--use_cpu: no GPU here)."""
    return ["--dataset_streaming", "true", "--do_train", "--eval_strategy", "no", "--dataset_name", str(dataset),
            "--dataset_config_name", CONFIG, "--dataset_group_text", "true", "--dataloader_num_workers", "2",
            "--max_steps", "6", "--model_name_or_path", str(model), "--output_dir", str(output_dir),
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_steps", "3",
            "--use_cpu", "true", "--disable_tqdm", "true", "--report_to", "none"]  # fmt: skip


def torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(SCRIPT), *args]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def trainer_state(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "trainer_state.json").read_text()))


def losses(state: dict[str, Any]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


@pytest.mark.timeout(300)
def test_the_flexai_command_trains_on_two_ranks_and_a_resume_continues_exactly(
    hub: tuple[Path, Path], tmp_path: Path
) -> None:
    dataset, model = hub
    a, b = tmp_path / "a", tmp_path / "b"
    torchrun(*flexai(dataset, model, a))
    saved = trainer_state(a / "checkpoint-3")["stateful_callbacks"]["headrace"]
    assert [(s["world"]["rank"], s["world"]["world_size"]) for s in saved["ranks"]] == [(0, 2), (1, 2)]
    assert [s["batches"] for s in saved["ranks"]] == [6, 6]  # 3 steps of 2 rows: the rows trained, not read ahead
    assert (a / "model.safetensors").exists() and (a / "tokenizer.json").exists()

    torchrun(*flexai(dataset, model, b), "--resume_from_checkpoint", str(a / "checkpoint-3"))
    want, got = trainer_state(a), trainer_state(b)
    assert got["stateful_callbacks"]["headrace"] == want["stateful_callbacks"]["headrace"]  # every rank's position
    assert sorted(losses(want)) == [1, 2, 3, 4, 5, 6]
    assert [losses(got)[s] for s in (4, 5, 6)] == [losses(want)[s] for s in (4, 5, 6)]  # bit-exact


def run_example(argv: list[str]) -> dict[str, float]:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import hf_trainer_causal_lm

        return hf_trainer_causal_lm.main(argv)
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.timeout(300)
def test_from_a_config_with_do_eval_it_reports_the_perplexity(hub: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, model = hub
    argv = ["--dataset_name", str(dataset / "data" / CONFIG), "--config_name", str(model), "--config_overrides",
            "n_embd=16", "--tokenizer_name", str(model), "--torch_dtype", "float32", "--do_train", "--do_eval",
            "--dataset_group_text", "true", "--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples",
            "6", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--save_strategy", "no",
            "--output_dir", str(tmp_path), "--use_cpu", "true", "--disable_tqdm", "true",
            "--report_to", "none"]  # fmt: skip
    metrics = run_example(argv)
    assert metrics["eval_samples"] == 6
    assert metrics["perplexity"] == math.exp(metrics["eval_loss"])
    assert json.loads((tmp_path / "eval_results.json").read_text())["perplexity"] == metrics["perplexity"]
    assert json.loads((tmp_path / "config.json").read_text())["n_embd"] == 16  # built from the config, overridden


def test_a_test_split_is_needed_for_do_eval(hub: tuple[Path, Path], tmp_path: Path, corpus: pa.Table) -> None:
    pq.write_table(corpus.slice(0, 50), tmp_path / "plain.parquet")  # no split named in the path: all training
    model = hub[1]
    argv = ["--dataset_name", str(tmp_path), "--model_name_or_path", str(model), "--do_eval",
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"--do_eval: no files for split 'test' in .*--dataset_test_split"):
        run_example(argv)


def test_a_hub_dataset_name_is_read_from_hf_and_says_so_offline(tmp_path: Path) -> None:
    argv = ["--dataset_name", "someorg/somedata", "--do_train", "--output_dir", str(tmp_path), "--report_to", "none"]
    with pytest.raises(SystemExit, match=r"hf://datasets/someorg/somedata: .*needs the network"):
        run_example(argv)
