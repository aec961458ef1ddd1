"""Golden saved states: loader states saved by the code of before issue #16, checked in, load and resume exactly.

(Saved by commit 10851db, the last one before issue #16, with pyarrow 26.0.1 and tokenizers 0.23.3.)

Each case is a representative pipeline (a buffer shuffle, map and batch over JSON Lines, with and
without worker threads; the global order over Parquet, tokenized and packed; a mixture; the global
order on one rank of two, filtered, cut and repeated). ``tests/data/states/<case>.state.json`` is the
``Loader.state_dict()`` taken after a few batches, ``<case>.expected.json`` the batches that followed
it. A fresh loader of the same pipeline must accept the state and give exactly those batches: the
state format, the pipeline descriptions (they feed the fingerprint) and the order all stay as they were.

The inputs have fixed names and contents, so their fingerprint (file names and sizes, never paths)
is the same in every folder: the JSON Lines shards are written by :func:`write_jsonl` into the test's
temporary folder; the Parquet shards and the tokenizer (whose bytes depend on the library versions
that wrote them) are checked in under ``tests/data/states/inputs/``.

To regenerate — only when a change of the state format or of the order is intended, and said so in
the commit — run ``.venv/bin/python tests/test_golden_states.py``: it writes the inputs (Parquet,
tokenizer) and every case's state and expected batches again.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import headrace as hr
from headrace.core.world import World
from headrace.tokenizer import load_tokenizer, train_tokenizer

STATES = Path(__file__).parent / "data" / "states"
INPUTS = STATES / "inputs"
WORDS = ["river", "stone", "light", "over", "the", "quiet", "field", "and", "a", "bird", "sings", "slowly"]
JSONL_ROWS = (17, 13, 10)  # rows per JSON Lines shard: ids 0..39
PARQUET_ROWS = (20, 16, 12)  # rows per Parquet shard: ids 0..47, in row groups of 4


def text(i: int) -> str:
    """A fixed sentence of 3..9 words for row ``i``."""
    return " ".join(WORDS[(i * 7 + k * 5) % len(WORDS)] for k in range(3 + i % 7))


def write_jsonl(folder: Path) -> Path:
    """``part-0.jsonl`` .. ``part-2.jsonl``: rows ``{"id", "text"}`` with ids 0..39, the same bytes every time."""
    folder.mkdir(parents=True, exist_ok=True)
    first = 0
    for k, n in enumerate(JSONL_ROWS):
        lines = [json.dumps({"id": i, "text": text(i)}) + "\n" for i in range(first, first + n)]
        (folder / f"part-{k}.jsonl").write_text("".join(lines), encoding="utf-8")
        first += n
    return folder


def write_inputs() -> None:
    """The checked-in inputs: three Parquet shards (ids 0..47) and a byte-level BPE of 300 tokens trained on them."""
    folder = INPUTS / "parquet"
    folder.mkdir(parents=True, exist_ok=True)
    first = 0
    for k, n in enumerate(PARQUET_ROWS):
        ids = list(range(first, first + n))
        table = pa.table({"id": pa.array(ids, pa.int64()), "text": [text(i) for i in ids]})
        pq.write_table(table, folder / f"part-{k}.parquet", row_group_size=4)
        first += n
    train_tokenizer([text(i) for i in range(first)], 300, INPUTS / "tokenizer.json")


def words(row: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(row["text"].split())}


def keep(row: dict[str, Any]) -> bool:
    return bool(row["id"] % 3 != 1)


def _jsonl(data: Path) -> hr.Dataset:
    return hr.open(str(data / "*.jsonl"), chunk_bytes=256, block_rows=8)


def _parquet() -> hr.Dataset:
    return hr.open(str(INPUTS / "parquet"), block_rows=8)


@dataclass(frozen=True)
class Case:
    pipeline: Callable[[Path], hr.Dataset]  # from the folder of the JSON Lines shards
    steps: int  # batches before the state is taken
    loader: dict[str, Any] = field(default_factory=dict)

    def make(self, data: Path) -> hr.Loader:
        return hr.Loader(self.pipeline(data), **self.loader)


CASES: dict[str, Case] = {
    "jsonl-shuffle-map-batch": Case(lambda d: _jsonl(d).shuffle(seed=3, buffer_size=10).map(words).batch(4), 4),
    "jsonl-shuffle-map-batch-2-threads": Case(
        lambda d: _jsonl(d).shuffle(seed=3, buffer_size=10).map(words).batch(4), 4, {"num_workers": 2, "prefetch": 2}
    ),
    "parquet-global-tokenize-pack": Case(
        lambda d: (
            _parquet()
            .shuffle(seed=2, buffer_size=None, chunk_rows=4, window=2)
            .tokenize(str(INPUTS / "tokenizer.json"), add_eos=True)
            .pack(16)
            .batch(2)
        ),
        3,
    ),
    "mix-jsonl-parquet": Case(  # mixer blocks of 8 rows: the state is inside the fourth, the sources part-read
        lambda d: hr.mix({"a": _jsonl(d), "b": _parquet()}, weights={"a": 0.3, "b": 0.7}, seed=1, block_rows=8).batch(
            4
        ),
        7,
    ),
    "global-order-rank-0-of-2-filter-take-repeat": Case(
        lambda d: _parquet().shuffle(seed=5, buffer_size=None, chunk_rows=3).filter(keep).take(12).repeat(2).batch(3),
        5,
        {"world": World(rank=0, world_size=2), "uneven": "off"},  # one rank alone: no process group to agree over
    ),
}


def plain(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """A batch as JSON values, column by column (what ``<case>.expected.json`` holds)."""
    return {name: np.asarray(col).tolist() for name, col in batch.items()}


def save(name: str, data: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The state after ``steps`` batches (through JSON) and the batches that follow it, as plain JSON."""
    case = CASES[name]
    loader = case.make(data)
    batches = iter(loader)
    for _ in range(case.steps):
        next(batches)
    state = json.loads(json.dumps(loader.state_dict()))
    return state, [plain(b) for b in batches]


def read(name: str, kind: str) -> Any:
    return json.loads((STATES / f"{name}.{kind}.json").read_text(encoding="utf-8"))


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def _tokenizer_as_saved(state: dict[str, Any]) -> None:
    """Skip (saying why) where the installed ``tokenizers`` serializes the checked-in tokenizer otherwise than
    the one that saved the state: its content hash is part of the pipeline, so that state is refused, rightly."""
    saved = [s["tokenizer"] for s in state["pipeline"] if isinstance(s, dict) and "tokenizer" in s]
    now = load_tokenizer(str(INPUTS / "tokenizer.json")).describe()
    if saved and saved[0] != now:
        version = __import__("tokenizers").__version__
        pytest.skip(f"tokenizers {version} reads the checked-in tokenizer as {now}, the golden state has "
                    f"{saved[0]}: regenerate the golden states (see the module docstring)")  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_state_saved_before_resumes_exactly(name: str, tmp_path: Path) -> None:
    state, expected = read(name, "state"), read(name, "expected")
    _tokenizer_as_saved(state)
    loader = CASES[name].make(write_jsonl(tmp_path / "jsonl"))
    loader.load_state_dict(state)
    assert [plain(b) for b in loader] == expected
    assert len(expected) >= 3


@pytest.mark.parametrize("name", sorted(CASES))
def test_todays_code_saves_the_same_state_and_batches(name: str, tmp_path: Path) -> None:
    state, expected = read(name, "state"), read(name, "expected")
    _tokenizer_as_saved(state)
    assert save(name, write_jsonl(tmp_path / "jsonl")) == (state, expected)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_states_name_no_folder(name: str, tmp_path: Path) -> None:
    """File names and sizes enter the fingerprint, never paths: the states hold no folder of any machine."""
    state = read(name, "state")
    for s in strings(state):
        assert "/" not in s and "\\" not in s and "tmp" not in s, f"{name}: the state holds {s!r}"


def regenerate() -> None:
    write_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_jsonl(Path(tmp) / "jsonl")
        for name in CASES:
            state, expected = save(name, data)
            for kind, value in (("state", state), ("expected", expected)):
                path = STATES / f"{name}.{kind}.json"
                path.write_text(json.dumps(value, indent=1, sort_keys=False) + "\n", encoding="utf-8")
                print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


if __name__ == "__main__":
    if sys.argv[1:]:
        sys.exit("usage: python tests/test_golden_states.py   (writes tests/data/states/ again)")
    regenerate()
