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
