"""What the examples share: a few Shakespeare plays from the repository's corpora (``corpora/``, unpacked on first
use) as Parquet, one row per paragraph."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpora"))
from unpacked import corpora_dir  # corpora/unpacked.py, beside the examples in the checkout


def write_plays(plays: str, folder: Path, flag: str = "--data") -> str:
    """The plays as Parquet, one row per paragraph (a speech, a stage direction); returns the glob.
    ``flag`` is the option that names other data (for the error when the corpora are missing)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for name in plays.split(","):
        out = folder / f"{name}.parquet"
        if out.exists():
            continue
        source = corpora_dir() / "shakespeare" / f"{name}.txt"
        if not source.exists():
            sys.exit(f"no {source}: name plays of corpora/ (see corpora/README.md), or pass {flag}")
        text = source.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        tmp = out.with_suffix(".tmp")
        pq.write_table(pa.table({"text": paragraphs}), tmp, row_group_size=1000)
        tmp.rename(out)  # a second run never sees a half-written file
    return str(folder / "*.parquet")
