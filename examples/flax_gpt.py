"""A small GPT in Flax NNX, trained on a headrace stream of tokenized, packed text through ``JaxLoader``.

What it shows: the JAX side of headrace. Real text (Shakespeare plays from ``corpora/``,
converted to Parquet under ``--work``, or any ``--data`` that ``hr.open`` reads) is shuffled, tokenized
with a byte-level BPE (trained on the data at start, or ``--tokenizer``), packed into rows of
``--seq_len + 1`` tokens and batched; ``headrace.integrations.jax.JaxLoader`` turns each batch into a
global ``jax.Array`` whose batch dimension is split over the devices (``data_sharding()``), placed
ahead of the training step. The model is a pre-LayerNorm GPT written with ``flax.nnx``, trained with
``nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)``; the loss is printed every ``--log_every`` steps.
The JSON state of the loader (what a checkpoint stores) is saved at the end.

Run it (CPU, about ten seconds)::

    python examples/flax_gpt.py --work /tmp/flax_gpt --steps 100
    python examples/flax_gpt.py --work /tmp/flax_gpt --steps 100 --cpu_devices 2   # the batch split over 2 devices

On a GPU/TPU host the batch is split over all accelerators; in a multi-host job call
``jax.distributed.initialize()`` first and every process reads its own part of the data.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _plays import write_plays

DEFAULT_PLAYS = "hamlet_gut,macbeth_gut,othello_gut"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("flax_gpt_work"), help="converted data, tokenizer, state")
    p.add_argument("--data", help="a path, glob or URL for hr.open (default: --plays converted to Parquet)")
    p.add_argument("--text_column", default="text")
    p.add_argument("--plays", default=DEFAULT_PLAYS, help=f"Shakespeare plays to convert (default: {DEFAULT_PLAYS})")
    p.add_argument("--tokenizer", help="a tokenizer.json or a folder holding one (default: train a BPE on the data)")
    p.add_argument("--vocab_size", type=int, default=512, help="BPE size when training one (default: 512)")
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16, help="global batch: a multiple of the device count")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="headrace worker threads (reading, tokenizing)")
    p.add_argument("--cpu_devices", type=int, default=None, help="on CPU, pretend to have this many devices")
    p.add_argument("--metrics", type=Path, help="write one JSON line per logged step (step, loss) to this file")
    return p.parse_args(argv)


# -- the model -------------------------------------------------------------------------------------


def build_model(vocab: int, seq_len: int, dim: int, layers: int, heads: int, seed: int) -> Any:
    import jax.numpy as jnp
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False, rngs=rngs)
            self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
            self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
            self.down = nnx.Linear(4 * dim, dim, rngs=rngs)

        def __call__(self, x: Any, mask: Any) -> Any:
            x = x + self.attn(self.ln1(x), mask=mask)
            return x + self.down(nnx.gelu(self.up(self.ln2(x))))

    class GPT(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.tokens = nnx.Embed(vocab, dim, rngs=rngs)
            self.positions = nnx.Embed(seq_len, dim, rngs=rngs)
            self.blocks = nnx.List([Block(rngs) for _ in range(layers)])
            self.ln = nnx.LayerNorm(dim, rngs=rngs)

        def __call__(self, ids: Any) -> Any:
            x = self.tokens(ids) + self.positions(jnp.arange(ids.shape[1]))
            mask = nnx.make_causal_mask(ids)
            for block in self.blocks:
                x = block(x, mask)
            return self.tokens.attend(self.ln(x))  # logits, the embedding tied to the output layer

    return GPT(nnx.Rngs(seed))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import jax

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)  # before the first use of a device
    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec
    from tokenizers import Tokenizer

    import headrace as hr
    from headrace.integrations.jax import JaxLoader, data_sharding
    from headrace.tokenizer import train_tokenizer

    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or write_plays(args.plays, args.work / "data")
    if args.tokenizer:
        path = Path(args.tokenizer)
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
    else:  # a byte-level BPE trained on (up to 20,000 rows of) the data itself: no download
        texts = (row[args.text_column] for row in hr.open(data, columns=[args.text_column]).take(20_000))
        tokenizer = Tokenizer.from_file(train_tokenizer(texts, args.vocab_size, args.work / "tokenizer.json"))

    # Rows of seq_len + 1 tokens: the model reads the first seq_len and predicts the last seq_len.
    ds = (
        hr.open(data, columns=[args.text_column])
        .shuffle(seed=args.seed, buffer_size=1000)
        .tokenize(tokenizer, column=args.text_column, add_eos=True)
        .pack(args.seq_len + 1)
        .batch(args.batch_size, drop_last=True)
    )
    sharding = data_sharding()  # the batch dimension over all devices
    loader = JaxLoader(hr.Loader(ds, num_workers=args.threads, prefetch=4), sharding=sharding, prefetch=2)
    print(f"{jax.device_count()} device(s) {[str(d) for d in jax.devices()]}; batches laid out as {sharding.spec}")

    model = build_model(tokenizer.get_vocab_size(), args.seq_len, args.dim, args.layers, args.heads, args.seed)
    opt = nnx.Optimizer(model, optax.adam(args.lr), wrt=nnx.Param)
    replicated = NamedSharding(sharding.mesh, PartitionSpec())  # weights whole on every device (data parallel);
    for part in (model, opt):  # placed before the first step, so that jit compiles the step once
        nnx.update(part, jax.device_put(nnx.state(part), replicated))
    params = sum(np.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"GPT: {params / 1e6:.2f}M parameters, vocabulary {tokenizer.get_vocab_size()}")

    @nnx.jit
    def train_step(model: Any, opt: Any, ids: jax.Array) -> jax.Array:
        def loss_fn(model: Any) -> jax.Array:
            logits = model(ids[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    metrics = args.metrics.open("w") if args.metrics else None
    step, start = 0, time.perf_counter()
    while step < args.steps:  # epoch after epoch: iterating the loader again goes on into the next epoch
        for batch in loader:
            loss = train_step(model, opt, batch["input_ids"])
            step += 1
            if step % args.log_every == 0 or step == 1 or step == args.steps:
                value = float(loss)
                print(f"step {step:5d}  loss {value:.4f}  epoch {loader.loader.epoch}  "
                      f"{time.perf_counter() - start:.1f}s", flush=True)  # fmt: skip
                if metrics is not None:
                    metrics.write(json.dumps({"step": step, "loss": value, "epoch": loader.loader.epoch}) + "\n")
                    metrics.flush()
            if step == args.steps:
                break
    (args.work / "loader_state.json").write_text(json.dumps(loader.state_dict()))  # resume the data from here
    if metrics is not None:
        metrics.close()


if __name__ == "__main__":
    main()
