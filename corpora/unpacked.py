"""The corpora shipped with the repository (``corpora/corpora.tar.zst``), unpacked on first use.

:func:`corpora_dir` returns the folder holding ``shakespeare/`` and ``python-docs/``: ``$HEADRACE_CORPORA``
when it is set, else ``.corpora/corpora`` at the repository's root, unpacked there the first time. Several
processes may ask at once (pytest-xdist workers): each unpacks into a folder of its own and renames it into
place; the first rename wins, the others remove theirs. Only the standard library and pyarrow (for zstd).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARCHIVE = HERE / "corpora.tar.zst"
TARGET = HERE.parent / ".corpora"  # git-ignored


def corpora_dir() -> Path:
    """The corpora folder (``shakespeare/``, ``python-docs/``), unpacked from the archive when needed."""
    chosen = os.environ.get("HEADRACE_CORPORA")
    if chosen:
        return Path(chosen)
    if not TARGET.is_dir():
        _unpack()
    return TARGET / "corpora"


def _unpack() -> None:
    import pyarrow as pa

    scratch = Path(tempfile.mkdtemp(prefix=".corpora-", dir=TARGET.parent))
    try:
        with pa.input_stream(str(ARCHIVE), compression="zstd") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            tar.extractall(scratch, filter="data")  # no member can land outside scratch
        try:
            scratch.rename(TARGET)  # whole or not at all: a reader never sees a half-unpacked folder
        except OSError:
            if not TARGET.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
