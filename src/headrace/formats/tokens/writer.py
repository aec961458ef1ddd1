"""``MegatronWriter``: writes Megatron-LM .bin/.idx files, atomically."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from headrace.formats.tokens.files import (
    MEGATRON_HEADER,
    MEGATRON_MAGIC,
    MEGATRON_VERSION,
    WRITE_CODES,
)


class MegatronWriter:
    """Writes a Megatron-LM indexed dataset: ``PREFIX.bin`` then ``PREFIX.idx``, each atomically.

    Each document is one sequence (as Megatron's ``preprocess_data.py`` writes without sentence
    splitting). Both files are written under temporary names and renamed into place on :meth:`close`,
    the ``.bin`` first, so a ``.idx`` only ever sits beside a complete ``.bin``. ``dtype``: uint16 for
    vocabularies up to 65,536 ids, else int32 (:func:`token_dtype`); Megatron has no uint32 code.

    >>> import numpy as np, tempfile, os, headrace as hr
    >>> prefix = os.path.join(tempfile.mkdtemp(), "part-00000")
    >>> with MegatronWriter(prefix, np.uint16) as w:
    ...     w.add_document(np.array([5, 6, 7]))
    ...     w.add_documents(np.array([1, 2, 3]), np.array([1, 2]))
    >>> [r["input_ids"] for r in hr.open(prefix + ".bin")]
    [[5, 6, 7], [1], [2, 3]]
    """

    def __init__(self, prefix: str, dtype: Any = np.uint16) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in WRITE_CODES:
            raise ValueError(f"Megatron token files hold one of {', '.join(d.name for d in WRITE_CODES)}, not "
                             f"{self.dtype.name} (for vocabularies over 65,536 ids use int32)")  # fmt: skip
        self.prefix = os.fspath(prefix)
        self.bin_path, self.idx_path = self.prefix + ".bin", self.prefix + ".idx"
        self._tmp = self.bin_path + ".tmp"
        self._file: Any = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._hash = hashlib.sha256()
        self._sizes: list[np.ndarray] = []
        self.num_tokens = 0
        self.num_documents = 0
        self.digests: dict[str, tuple[int, str]] = {}  # after close: {"bin"|"idx": (bytes, sha256 hex)}
        info = np.iinfo(self.dtype)
        self._range = (int(info.min), int(info.max))

    def add_document(self, ids: np.ndarray) -> None:
        """Append one document (a 1-D array of token ids)."""
        ids = np.asarray(ids)
        self.add_documents(ids, np.array([ids.size], dtype=np.int64))

    def add_documents(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given back to back in ``flat``, ``lengths[i]`` ids each (what tokenizers return)."""
        flat, lengths = np.asarray(flat).reshape(-1), np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != flat.size or (lengths < 0).any():
            raise ValueError(f"lengths (sum {int(lengths.sum())}) do not split the {flat.size} ids")
        if (lengths > np.iinfo(np.int32).max).any():
            raise ValueError("a document longer than 2**31 - 1 tokens does not fit Megatron's int32 sizes")
        if flat.size:
            if flat.dtype.kind not in "iu":
                raise ValueError(f"token ids must be integers, got {flat.dtype}")
            lo, hi = int(flat.min()), int(flat.max())
            if lo < self._range[0] or hi > self._range[1]:
                bad = lo if lo < self._range[0] else hi
                raise ValueError(f"token id {bad} does not fit {self.dtype.name} (range {self._range[0]}.."
                                 f"{self._range[1]}); write int32 files for this vocabulary")  # fmt: skip
        data = flat.astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._sizes.append(lengths.astype(np.int32))
        self.num_tokens += flat.size
        self.num_documents += len(lengths)

    def close(self) -> None:
        """Write the ``.idx`` and move both files into place."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self.digests["bin"] = (self.num_tokens * self.dtype.itemsize, self._hash.hexdigest())
        os.replace(self._tmp, self.bin_path)
        index = megatron_index_bytes(self.dtype, np.concatenate([np.zeros(0, np.int32), *self._sizes]))
        _write_atomic(self.idx_path, index)
        self.digests["idx"] = (len(index), hashlib.sha256(index).hexdigest())

    def abort(self) -> None:
        """Drop what was written (nothing is left under the final names)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> MegatronWriter:
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def megatron_index_bytes(dtype: np.dtype, sizes: np.ndarray) -> bytes:
    """The ``.idx`` of back-to-back sequences of ``sizes`` tokens, one document each.

    >>> raw = megatron_index_bytes(np.dtype(np.uint16), np.array([3, 1], dtype=np.int32))
    >>> raw[:7], len(raw) == 34 + 2 * 4 + 2 * 8 + 3 * 8
    (b'MMIDIDX', True)
    """
    n = len(sizes)
    sizes64 = sizes.astype(np.int64)
    pointers = np.zeros(n, dtype="<i8")
    if n > 1:
        np.cumsum(sizes64[:-1] * dtype.itemsize, out=pointers[1:])
    header = MEGATRON_HEADER.pack(MEGATRON_MAGIC, MEGATRON_VERSION, WRITE_CODES[np.dtype(dtype)], n, n + 1)
    documents = np.arange(n + 1, dtype="<i8")
    return header + sizes.astype("<i4").tobytes() + pointers.tobytes() + documents.tobytes()


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
