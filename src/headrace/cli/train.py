"""``headrace train``: the command-line flags of the training job (:mod:`headrace.train`).

The job is :func:`headrace.train.run`; this module maps its flags and prints the summary:

    $ headrace train --max-steps 200 --out run/
    $ headrace train --data 'data/*.parquet' --text-column body --out run/ --resume
    $ headrace train --max-steps 200 --out run/ --overwrite     # start afresh over run/checkpoint.pt
"""

from __future__ import annotations

import argparse
import sys

from headrace.cli.options import non_negative, positive_count, remote_options


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", default=[], metavar="URL",
                        help="any source headrace opens (default: five Shakespeare plays in the package)")  # fmt: skip
    parser.add_argument("--text-column", default="text", help="the text column of --data (default: text)")
    parser.add_argument("--tokenizer", help="tokenizer.json, a transformers folder or a tiktoken encoding "
                        "(default: a byte-level BPE trained on the data, kept in --out)")  # fmt: skip
    parser.add_argument("--config", help="a pipeline config (.yaml) whose batches hold input_ids")
    parser.add_argument("--seq-len", type=positive_count, default=128, help="tokens per training sequence")
    parser.add_argument("--batch-size", type=positive_count, default=16, help="sequences per step")
    parser.add_argument("--max-steps", type=positive_count, default=500, help="train up to this step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW, warm-up then cosine decay)")
    parser.add_argument("--layers", type=positive_count, default=2, help="transformer blocks")
    parser.add_argument("--heads", type=positive_count, default=4, help="attention heads")
    parser.add_argument("--embd", type=positive_count, default=128, help="embedding width (a multiple of --heads)")
    parser.add_argument("--out", default="headrace-train", help="checkpoints and the trained tokenizer go here")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt")
    again.add_argument("--overwrite", action="store_true",
                       help="start afresh, replacing OUT/checkpoint.pt (else an existing one is refused)")  # fmt: skip
    parser.add_argument("--checkpoint-every", type=positive_count, default=100, metavar="N",
                        help="save OUT/checkpoint.pt every N steps and at the end")  # fmt: skip
    parser.add_argument("--log-every", type=positive_count, default=10, metavar="N", help="log the loss every N steps")
    parser.add_argument("--seed", type=non_negative, default=0, help="the model's initialization and the data order")
    parser.add_argument("--workers", type=non_negative, default=0, help="loader worker threads")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when there is one)")
    parser.add_argument("--metrics", help="append a JSON line per logged step to this file")
    parser.add_argument("-o", "--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option for a remote --data (repeatable)")  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    try:
        from headrace.train import TrainOptions, run
    except ImportError as e:
        raise ValueError(f"headrace train needs PyTorch and tokenizers ({e}): pip install torch tokenizers") from None
    if args.embd % args.heads:
        raise ValueError(f"--embd ({args.embd}) must be a multiple of --heads ({args.heads})")
    options = TrainOptions(
        data=args.data, text_column=args.text_column, tokenizer=args.tokenizer, config=args.config,
        seq_len=args.seq_len, batch_size=args.batch_size, max_steps=args.max_steps, lr=args.lr,
        n_layer=args.layers, n_head=args.heads, n_embd=args.embd, out=args.out, resume=args.resume,
        overwrite=args.overwrite,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed, workers=args.workers,
        device=args.device, metrics=args.metrics,
        storage_options=remote_options(argparse.Namespace(storage_option=args.storage_option, cache_dir=None,
                                                          cache_limit=None))["storage_options"],
    )  # fmt: skip
    if args.checkpoint_every > args.max_steps:
        print(f"headrace: warning: --checkpoint-every {args.checkpoint_every} is larger than --max-steps "
              f"{args.max_steps}: no checkpoint is saved until the end (step {args.max_steps}); a run stopped before "
              "then has nothing to --resume. Training anyway", file=sys.stderr)  # fmt: skip
    summary = run(options)
    if not summary["losses"]:  # resumed at or past --max-steps
        print(f"nothing to train: {summary['checkpoint']} is at step {summary['steps']} (--max-steps "
              f"{args.max_steps}); raise --max-steps to train further")  # fmt: skip
        return 0
    first, last = summary["losses"][0], summary["losses"][-1]
    print(f"trained {summary['steps']} steps: loss {first[1]:.3f} (step {first[0]}) -> {last[1]:.3f} "
          f"(step {last[0]}), {summary['tokens_per_s']:,.0f} tok/s, data wait {100 * summary['data_wait']:.1f}%; "
          f"checkpoint {summary['checkpoint']}")  # fmt: skip
    return 0
