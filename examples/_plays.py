"""What the examples share: a few Shakespeare plays from ../shared/corpora as Parquet, one row per paragraph."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CORPORA = Path(os.environ.get("HEADRACE_CORPORA", Path(__file__).resolve().parents[2] / "shared" / "corpora"))


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
        source = CORPORA / "shakespeare" / f"{name}.txt"
        if not source.exists():
            sys.exit(f"no {source}: set HEADRACE_CORPORA to the shared/corpora folder, or pass {flag}")
        text = source.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        tmp = out.with_suffix(".tmp")
        pq.write_table(pa.table({"text": paragraphs}), tmp, row_group_size=1000)
        tmp.rename(out)  # a second run never sees a half-written file
    return str(folder / "*.parquet")
