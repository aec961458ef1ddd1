"""``headrace prepare``: text into token shards (Megatron-LM ``.bin``/``.idx``) plus a manifest.

Parallel across cores (a process pool) or a Ray cluster (``engine="ray"``, Ray Data), with the same
output bytes either way; resumable after a kill; with a progress bar. See :func:`prepare`.

    from headrace.prepare import prepare
    result = prepare("data/*.parquet", "tokens/", "tokenizer.json", workers=8)
    ds = hr.open("tokens/*.bin")          # rows of input_ids, one per document
"""

from headrace.prepare.job import DEFAULT_TOKENS_PER_SHARD, DEFAULT_UNIT_ROWS, DTYPES, PrepareError
from headrace.prepare.run import ENGINES, MANIFEST, PrepareResult, prepare

__all__ = [
    "DEFAULT_TOKENS_PER_SHARD",
    "DEFAULT_UNIT_ROWS",
    "DTYPES",
    "ENGINES",
    "MANIFEST",
    "PrepareError",
    "PrepareResult",
    "prepare",
]
