"""Pre-tokenized data: Megatron-LM indexed datasets, nanoGPT ``.bin`` files and ``.npy`` arrays.

All three are *indexed* (row counts come from metadata, never from reading the tokens) and read
through ``numpy.memmap`` (ranged reads on object stores). Each row is one column, ``input_ids``: a
``list<int32>`` (``list<int64>`` for int64/uint32 files), built from one flat array and offsets —
never a Python list per row.

How to name them:

- **Megatron** (``MMapIndexedDataset``): name the ``.bin`` files (``hr.open("data/*.bin")`` or a
  folder); a ``.bin`` with a sibling ``.idx`` (same prefix) is Megatron, one row per sequence (a
  document, for data written by Megatron's ``preprocess_data.py`` or ``headrace prepare``). The
  ``.idx`` layout, little-endian: magic ``b"MMIDIDX\\x00\\x00"``, version ``uint64`` (1), dtype code
  ``uint8`` (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16; code 9 =
  uint32, which some forks write, is read too), sequence count ``uint64``, document count ``uint64``,
  then ``sizes`` int32[sequences], ``pointers`` int64[sequences] (byte offsets into the ``.bin``)
  and ``document_indices`` int64[documents] (``0 ... sequences``).
- **nanoGPT**: a ``.bin`` without a sibling ``.idx`` is a flat array of uint16 tokens with no header
  and no document boundaries; rows are ``tokens_per_row`` tokens (default 2048, the last row
  shorter). ``format="nanogpt"`` forces it.
- **.npy**: a 1-D integer array (rows as for nanoGPT) or a 2-D ``[n, seq_len]`` array (a row per
  line). Never unpickled.

``tokens_per_row`` is read from ``ReadOptions.extra``. For random access to the tokens of many
shards as one sequence (windows), use :class:`TokenShards`; to write Megatron files,
:class:`MegatronWriter`.
"""

from headrace.formats.tokens.files import (
    DTYPE_CODES,
    WRITE_CODES,
    TokenFile,
    arrow_type,
    bin_format,
    megatron_index_path,
    open_megatron,
    open_nanogpt,
    open_npy,
    open_token_file,
    token_dtype,
)
from headrace.formats.tokens.readers import MegatronFormat, NanoGPTFormat, NpyFormat, tokens_per_row
from headrace.formats.tokens.shards import TokenShards
from headrace.formats.tokens.writer import MegatronWriter, megatron_index_bytes

__all__ = [
    "DTYPE_CODES",
    "WRITE_CODES",
    "MegatronFormat",
    "MegatronWriter",
    "NanoGPTFormat",
    "NpyFormat",
    "TokenFile",
    "TokenShards",
    "arrow_type",
    "bin_format",
    "megatron_index_bytes",
    "megatron_index_path",
    "open_megatron",
    "open_nanogpt",
    "open_npy",
    "open_token_file",
    "token_dtype",
    "tokens_per_row",
]
