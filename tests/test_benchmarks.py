"""The benchmark suite in quick mode: every workload runs against every peer and the report is written.

Quick mode's numbers mean little (tiny sizes, one or two repetitions, a loaded machine); this test keeps
the suite from rotting: each script still runs with the peers' current releases, measures every contender
it promises, and the report has a row for each comparison. It never looks at a timing.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402 - benchmarks/report.py
from suite import Result  # noqa: E402 - benchmarks/suite.py

# workload -> the contenders it must measure (substrings of their names, lower case)
PROMISED = {
    "text": ["headrace", "hf datasets", "tokenizer alone"],
    "windows": ["headrace", "nanogpt", "litdata", "mosaicml"],
    "images": ["headrace", "webdataset", "litdata"],
    "order": ["headrace", "hf datasets", "mosaicml", "litdata"],
    "startup": ["headrace", "hf datasets", "mosaicml", "litdata"],
    "remote": ["headrace", "hf datasets"],
    "memory": ["headrace", "hf datasets", "mosaicml", "litdata"],
    "core": ["headrace", "hf datasets"],
    "loader": ["headrace", "in memory", "hf datasets"],
}


@pytest.mark.timeout(1500)
def test_quick_suite_measures_every_peer_and_writes_the_report(tmp_path: Path) -> None:
    out, report = tmp_path / "results", tmp_path / "BENCHMARKS.md"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--report", str(report)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1450)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = {p.stem: Result.read(p) for p in out.glob("*.json")}
    assert sorted(results) == sorted(PROMISED)
    text = report.read_text()
    for name, promised in PROMISED.items():
        result = results[name]
        assert result.quick and result.machine["cores"] >= 1
        contenders = {m.contender.lower() for m in result.measures}
        for who in promised:
            assert any(who in c for c in contenders), f"{name}: no {who!r} among {sorted(contenders)}"
        assert all(m.values and all(math.isfinite(v) for v in m.values) for m in result.measures), name
        assert f"## {result.title}" in text
        for plot in result.plots:
            assert (out / plot).exists() and (tmp_path / "docs" / "benchmarks" / f"{name}-{Path(plot).name}").exists()
        # the summary has a row comparing headrace with every peer of this workload
        rows = [line for line in text.splitlines() if line.startswith(f"| {name} |")]
        for who in promised[1:]:
            assert any(who in row.lower() for row in rows), f"{name}: no summary row against {who!r}"
    assert (tmp_path / "docs" / "benchmarks" / "summary.png").exists()


def _fixture() -> list[Result]:
    """Two small results: a rate with two headrace configurations, two peers and a reference; a time."""
    machine = {"cpu": "Test CPU", "cores": 2, "ram_gb": 8.0, "os": "Linux", "python": "3.11.7", "versions": {}}
    text = Result("text", "Text", quick=False, machine=machine, date="2026-01-02 03:04 UTC")
    text.add("pack", "headrace w0", "tokens/s", [9.0, 10.0], role="headrace")
    text.add("pack", "headrace w2", "tokens/s", [19.0, 20.0], role="headrace")
    text.add("pack", "HF", "tokens/s", [4.0, 5.0])
    text.add("pack", "HF fast", "tokens/s", [9.0, 10.0])
    text.add("pack", "tokenizer alone", "tokens/s", [20.0, 21.0], role="reference")
    text.add("pack", "headrace w2", "rows/s", [19.0, 20.0], role="headrace")  # the same comparison in rows
    text.add("pack", "HF fast", "rows/s", [9.0, 10.0])
    text.add("pack", "tokenizer alone", "rows/s", [20.0, 21.0], role="reference")
    text.add("other", "headrace", "tokens/s", [1.0], role="headrace")  # a later case of a metric already shown
    text.add("other", "HF", "tokens/s", [1.0])
    text.add("other", "headrace", "s to first batch", [0.6, 0.7], role="headrace", higher_is_better=False)
    text.add("other", "HF", "s to first batch", [1.0, 1.2], higher_is_better=False)
    text.add("other", "litdata", "s to first batch", [0.4, 0.5], higher_is_better=False)
    load = Result("loader", "Loader", quick=False, machine=machine, date="2026-01-02 04:00 UTC")
    load.add("train", "headrace", "steps/s", [8.0], role="headrace")
    load.add("train", "in memory", "steps/s", [16.0], role="reference")
    return [text, load]


def test_headline_rows_compare_the_best_headrace_with_the_strongest_peer_and_reference() -> None:
    assert report.headline_rows(_fixture()) == [
        ["text", "pack", "tokens/s", "headrace w2", "HF fast", "2.05 [1.90–2.22]", "ahead",
         "tokenizer alone", "0.951 [0.905–1.00]", "even"],
        ["text", "other", "s to first batch", "headrace", "litdata", "1.44 [1.20–1.75]", "behind", "–", "", ""],
        ["loader", "train", "steps/s", "headrace", "–", "", "", "in memory", "0.500 [0.500–0.500]", "behind"],
    ]  # fmt: skip
    assert len(report.headline_rows(_fixture(), per_workload=1)) == 2


def test_headline_table_opens_with_its_caption_and_one_line_per_row() -> None:
    lines = report.headline(_fixture())
    assert lines[0] == "## Headline"
    assert "from the run of 2026-01-02 on Test CPU, 2 cores" in lines[2]
    assert lines[4].startswith("| workload | case | metric | best headrace | strongest peer |")
    assert lines[6:9] == [
        "| text | pack | tokens/s | headrace w2 | HF fast | 2.05 [1.90–2.22] | ahead | tokenizer alone | "
        "0.951 [0.905–1.00] | even |",
        "| text | other | s to first batch | headrace | litdata | 1.44 [1.20–1.75] | behind | – |  |  |",
        "| loader | train | steps/s | headrace | – |  |  | in memory | 0.500 [0.500–0.500] | behind |",
    ]
    assert lines[9:] == [""] and report.headline([]) == []


def test_report_opens_with_the_headline_table(tmp_path: Path) -> None:
    for r in _fixture():
        r.write(tmp_path / "results")
    text = report.write(tmp_path / "results", tmp_path / "BENCHMARKS.md", ["text", "loader"]).read_text()
    assert text.index("## Headline") < text.index("- **Run:**") < text.index("## Summary") < text.index("## Text")
