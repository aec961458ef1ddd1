"""One interface over the tokenizers users bring: ``tokenizers``, ``transformers``, ``tiktoken``, or a path.

``load_tokenizer(x)`` returns a :class:`Tokenizer` whose ``encode_batch`` gives *flat* token ids and
per-document lengths as numpy arrays — never a Python list per row downstream. Encoding runs in the
library's native code (Rust for ``tokenizers`` and ``tiktoken``), which releases the GIL, so the
loader's worker threads tokenize in parallel. The libraries are imported only when used.

>>> from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers
>>> hf = HFTokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
>>> hf.pre_tokenizer = pre_tokenizers.Whitespace()
>>> ids, lengths = load_tokenizer(hf).encode_batch(["a b", "b"])
>>> ids.tolist(), lengths.tolist()
([1, 2, 2], [2, 1])
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headrace.core.errors import HeadraceError

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[SEP]", "<|end_of_text|>")
BOS_CANDIDATES = ("<s>", "<bos>", "[CLS]", "<|begin_of_text|>", "<|startoftext|>")
EOS = "<|endoftext|>"  # the one special token of the BPEs train_tokenizer trains (GPT-2's end of text)


class TokenizerError(HeadraceError):
    """A tokenizer that cannot be loaded or used."""


class Tokenizer(ABC):
    """What headrace needs from a tokenizer."""

    name: str
    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    mask_id: int | None = None
    special_ids: frozenset[int] = frozenset()
    chat_template: str | None = None  # Jinja, as transformers' tokenizer_config.json carries it

    @abstractmethod
    def encode_lists(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(flat ids, lengths)``: the ids of all texts back to back, and how many belong to each."""
        lists = self.encode_lists(texts)
        lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum()))
        return flat, lengths

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of one text and each token's character span (for label masks on chat turns)."""
        raise TokenizerError(f"{self.name}: this tokenizer does not give character offsets")

    def token_id(self, token: str) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id}


class HFTokenizersTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` (also the backend of a fast ``transformers`` tokenizer).

    Works on a copy with padding and truncation switched off: documents are tokenized whole (packing
    and windows decide lengths), and the caller's tokenizer is left as it was.
    """

    def __init__(self, tok: Any, name: str) -> None:
        if tok.padding is not None or tok.truncation is not None:
            tok = type(tok).from_str(tok.to_str())
            tok.no_padding()
            tok.no_truncation()
        self.tok = tok
        self.name = name
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        added: dict[int, Any] = getattr(tok, "get_added_tokens_decoder", dict)()
        self.special_ids = frozenset(int(i) for i, t in added.items() if getattr(t, "special", False))
        self.eos_id = self._first(EOS_CANDIDATES)
        self.bos_id = self._first(BOS_CANDIDATES)
        self.pad_id = self._first(("[PAD]", "<pad>", "<|pad|>"))
        self.mask_id = self._first(("[MASK]", "<mask>"))
        self.digest = hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]  # what it does, not where it lives

    def describe(self) -> dict[str, Any]:
        """The tokenizer's identity in a pipeline fingerprint: its content (vocabulary, merges, normalizers,
        padding and truncation off), not the name of the folder it was loaded from."""
        return {"name": "tokenizers", "sha256": self.digest, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id}  # fmt: skip

    def _first(self, candidates: Sequence[str]) -> int | None:
        for token in candidates:
            i = self.tok.token_to_id(token)
            if i is not None:
                return int(i)
        return None

    def token_id(self, token: str) -> int | None:
        i = self.tok.token_to_id(token)
        return None if i is None else int(i)

    def encode_lists(self, texts: Sequence[str]) -> list[list[int]]:
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        e = self.tok.encode(text, add_special_tokens=False)
        return list(e.ids), [tuple(o) for o in e.offsets]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=False))


class TiktokenTokenizer(Tokenizer):
    """A ``tiktoken.Encoding``; special-token text in the data is encoded as ordinary text."""

    def __init__(self, enc: Any) -> None:
        self.enc = enc
        self.name = f"tiktoken:{enc.name}"
        self.vocab_size = int(enc.n_vocab)
        self.eos_id = int(enc.eot_token)
        self.special_ids = frozenset(int(enc.encode_single_token(t)) for t in enc.special_tokens_set)

    def token_id(self, token: str) -> int | None:
        try:
            return int(self.enc.encode_single_token(token))
        except KeyError:
            return None

    def encode_lists(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.enc.encode_ordinary(t) for t in texts]

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids = self.enc.encode_ordinary(text)
        _, starts = self.enc.decode_with_offsets(ids)
        ends = [*starts[1:], len(text)]
        return ids, list(zip(starts, ends, strict=True))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.enc.decode(list(ids)))


def load_tokenizer(spec: Any) -> Tokenizer:
    """A :class:`Tokenizer` from a ``tokenizers.Tokenizer``, a ``transformers`` tokenizer, a ``tiktoken``
    encoding, a path to a ``tokenizer.json`` or to a folder with one, or ``"tiktoken:NAME"``."""
    if isinstance(spec, Tokenizer):
        return spec
    module = type(spec).__module__
    if module.startswith("tokenizers"):
        return HFTokenizersTokenizer(spec, name="tokenizers")
    if module.startswith("tiktoken"):
        return TiktokenTokenizer(spec)
    if hasattr(spec, "backend_tokenizer") and getattr(spec, "is_fast", False):
        tok = HFTokenizersTokenizer(spec.backend_tokenizer, name=str(getattr(spec, "name_or_path", "transformers")))
        for attr in ("bos", "eos", "pad", "mask"):
            value = getattr(spec, f"{attr}_token_id", None)
            if value is not None:
                setattr(tok, f"{attr}_id", int(value))
        tok.special_ids = frozenset(int(i) for i in getattr(spec, "all_special_ids", [])) | tok.special_ids
        template = getattr(spec, "chat_template", None)
        tok.chat_template = template if isinstance(template, str) else None
        return tok
    if hasattr(spec, "convert_tokens_to_ids"):
        raise TokenizerError(f"{type(spec).__name__}: a slow (Python) transformers tokenizer; load the fast one "
                             "(AutoTokenizer.from_pretrained(..., use_fast=True))")  # fmt: skip
    if isinstance(spec, str | os.PathLike):
        return _from_path(str(spec))
    raise TokenizerError(f"cannot use {type(spec).__name__} as a tokenizer; pass a tokenizers.Tokenizer, a "
                         "transformers fast tokenizer, a tiktoken.Encoding, or a path to tokenizer.json")  # fmt: skip


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: str | os.PathLike[str]) -> str:
    """A byte-level BPE with ``<|endoftext|>``, trained on ``texts`` and saved at ``path``; returns the path.

    GPT-2's scheme (byte-level pre-tokenizer and decoder, the 256 byte symbols always in the
    vocabulary, :data:`EOS` its one special token, id 0), for a tokenizer that needs no download. The
    file is written under a temporary name and renamed, so a kill never leaves half of it.

    >>> import tempfile
    >>> path = train_tokenizer(["to be or not to be"] * 10, 300, Path(tempfile.mkdtemp(), "tokenizer.json"))
    >>> tok = load_tokenizer(path)
    >>> tok.eos_id, tok.decode(tok.encode_lists(["not to be"])[0])
    (0, 'not to be')
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    path = Path(path)
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return str(path)


def _from_path(path: str) -> Tokenizer:
    if path.startswith("tiktoken:"):
        import tiktoken

        try:
            return TiktokenTokenizer(tiktoken.get_encoding(path.split(":", 1)[1]))
        except (ValueError, KeyError) as e:
            raise TokenizerError(f"{path}: no such tiktoken encoding ({e})") from None
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise TokenizerError(f"{path}: no tokenizer there; pass a tokenizer.json, a folder holding one, "
                             "or 'tiktoken:NAME'")  # fmt: skip
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(file)
    except Exception as e:  # the Rust side raises a plain Exception for a malformed file
        raise TokenizerError(f"{file}: cannot load the tokenizer ({e})") from None
    out = HFTokenizersTokenizer(tok, name=os.path.basename(os.path.dirname(os.path.abspath(file))) or file)
    config = os.path.join(os.path.dirname(file), "tokenizer_config.json")
    if os.path.exists(config):
        with open(config, encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
        out.chat_template = template if isinstance(template, str) else None
    return out
