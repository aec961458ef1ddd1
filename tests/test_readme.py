"""Every code block of README.md runs.

The blocks are found anew on each run, so an edited or added block is tested as it is. Each ```python block runs as
a script in a fresh process (the test environment's Python), in a temporary working directory that holds small real
files at the paths the README names: ``data/*.parquet`` (paragraphs of the shipped corpora, columns ``id``, ``doc``,
``text``), ``code/*.jsonl.zst`` (more paragraphs), ``tokenizer.json`` (a byte-level BPE trained on them) and
``openai-community/gpt2/`` (a tiny GPT-2 saved with ``save_pretrained``: ``from_pretrained`` reads a local folder of
that name before the Hub, and the Hub is offline here). The URLs ``s3://BUCKET/PREFIX/...`` of a block are served
by SeaweedFS on loopback (``tests/servers.py``), with the files of :data:`S3_DATA` under each prefix, reached through
``AWS_ENDPOINT_URL`` and the keys in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``. Each ```bash block runs as a
script under ``set -euo pipefail`` there, with the environment's ``bin/`` first on the ``PATH``. Blocks in other
languages (the CLI synopses, YAML) are text.

A name a block uses before defining it is one the reader knows from the text around it (``hr``, "your" ``ds``,
``tok``, ``model``...): the script starts with its definition from :data:`PRELUDES`. A free name without one fails
the test, naming it: define it in the block, or add a prelude.

An HTML comment right before a block (blank lines between are fine) steers its run; several may follow each other:

- ``<!-- readme-test: skip REASON -->``: not run; the reason is the skip's.
- ``<!-- readme-test: replace OLD => NEW | OLD2 => NEW2 -->``: run with these substitutions (sizes a 2-core CPU
  trains in seconds, ``device="cpu"``); each OLD must occur in the block, so a stale one fails.
- ``<!-- readme-test: from TEXT -->``: run only the lines from the first one that starts with TEXT (headrace's half
  of a comparison with another library's code, ``# headrace``).
- ``<!-- readme-test: torchrun N -->``: run the python block under ``torch.distributed.run --standalone
  --nproc_per_node=N`` (gloo on the CPU), as the ranks of one job.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN = ("python", "bash")  # the languages that run; other fences are text
FENCE = re.compile(r"^```(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
DIRECTIVES = ("skip", "replace", "from", "torchrun")
S3_URL = re.compile(r"s3://([a-z0-9.-]+)/([^/\"'*]+)/")


@dataclass
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    section: str
    code: str
    directives: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-") or "top"
        return f"{self.lang}-L{self.line}-{slug}"

    def directive(self, name: str) -> str | None:
        return next((arg for kind, arg in self.directives if kind == name), None)


def blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` in the languages of :data:`RUN`, with the directives before each."""
    out: list[Block] = []
    lines = text.splitlines()
    section, pending, i = "", [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section, pending = line.lstrip("#").strip(), []
        elif m := DIRECTIVE.match(line):
            if m.group(1) not in DIRECTIVES:
                raise ValueError(
                    f"README.md:{i + 1}: unknown readme-test directive {m.group(1)!r}; one of {DIRECTIVES}"
                )
            pending.append((m.group(1), m.group(2)))
        elif m := FENCE.match(line):
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if m.group(1) in RUN:
                out.append(Block(m.group(1), start + 1, section, "\n".join(body) + "\n", pending))
            pending = []
        elif line.strip():
            pending = []  # a directive belongs to the block right after it
        i += 1
    return out


def replaced(block: Block) -> str:
    code = block.code
    start = block.directive("from")
    if start is not None:
        lines = code.splitlines(keepends=True)
        first = next((i for i, line in enumerate(lines) if line.startswith(start)), None)
        assert first is not None, f"README.md:{block.line}: from {start!r}: no line of the block starts with it"
        code = "".join(lines[first:])
    spec = block.directive("replace")
    for pair in spec.split("|") if spec else []:
        old, sep, new = (s.strip() for s in pair.partition("=>"))
        assert sep and old, f"README.md:{block.line}: replace takes OLD => NEW pairs separated by |, got {pair!r}"
        assert old in code, f"README.md:{block.line}: replace {old!r}: not in the block (a stale directive?)"
        code = code.replace(old, new)
    return code


# What a name used before its definition means, for the reader and here: (code, the preludes it needs first).
# Data paths are the working directory's (see the module's docstring).
PRELUDES: dict[str, tuple[str, tuple[str, ...]]] = {
    "hr": ("import headrace as hr", ()),
    "tok": ("from tokenizers import Tokenizer\ntok = Tokenizer.from_file('tokenizer.json')", ()),
    "ds": (  # "your" pipeline: token windows with labels, batched
        "ds = hr.open('data/*.parquet', columns=['text']).take(300).tokenize('tokenizer.json').window(64).batch(8)",
        ("hr",),
    ),
    "model": (  # a tiny causal LM for the tokenizer
        "from transformers import GPT2Config, GPT2LMHeadModel\n"
        "model = GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_positions=64, n_embd=32, n_layer=1, n_head=2,"
        " bos_token_id=0, eos_token_id=0))",
        (),
    ),
    "wandb": (  # a stand-in for the wandb module (not installed): what the hook calls
        "import types\nlogged = []\nwandb = types.SimpleNamespace(log=logged.append)",
        (),
    ),
    "web": ("web = hr.open('data/*.parquet', columns=['text'])", ("hr",)),
    "code": ("code = hr.open('code/*.jsonl.zst', columns=['text'])", ("hr",)),
    "world_size": (  # rank 0 of 4, as torchrun would say in the environment
        "import os\nos.environ.update(RANK='0', WORLD_SIZE='4')\nworld_size = 4",
        (),
    ),
    "saved_on_8_ranks": (  # the state of rank 0 of 8 after 3 batches of the README's pipeline
        "_ds = hr.open('data/*.parquet').shuffle(seed=0, buffer_size=None).batch(64 // 8, drop_last=True)\n"
        "_loader = hr.Loader(_ds, rank=0, world_size=8)\n"
        "for _step, _ in zip(range(3), _loader):\n    pass\n"
        "saved_on_8_ranks = _loader.state_dict()",
        ("hr",),
    ),
    "my_dataset": (
        "my_dataset = hr.open('data/*.parquet', columns=['id', 'text']).take(400).shuffle(seed=0, buffer_size=50)"
        ".batch(16)",
        ("hr",),
    ),
    "KEY": ("import os\nKEY = os.environ['AWS_ACCESS_KEY_ID']", ()),  # the S3 server's keys
    "SECRET": ("import os\nSECRET = os.environ['AWS_SECRET_ACCESS_KEY']", ()),
    "load_dataset": ("from datasets import load_dataset", ()),
    "DataLoader": ("from torch.utils.data import DataLoader", ()),
    "tokenize": (  # HF datasets' usual batched map
        "def tokenize(batch):\n    return {'input_ids': [e.ids for e in tok.encode_batch(batch['text'])]}",
        ("tok",),
    ),
    "group_texts": (  # run_clm.py's
        "def group_texts(batch, block_size=2048):\n"
        "    ids = [t for row in batch['input_ids'] for t in row]\n"
        "    n = len(ids) // block_size * block_size\n"
        "    return {'input_ids': [ids[i : i + block_size] for i in range(0, n, block_size)]}",
        (),
    ),
    "state": ("import jax.numpy as jnp\nstate = jnp.zeros((), jnp.int32)", ()),
    "train_step": (  # a jitted step over a sharded batch
        "import jax\ntrain_step = jax.jit(lambda state, ids: state + (ids[:, 0] > 0).sum())",
        (),
    ),
}


class _Scan(ast.NodeVisitor):
    """The names read before anything binds them, in the order a script runs (module-level flow; loops and branches
    once, in order; a function's body when it is defined)."""

    def __init__(self) -> None:
        self.bound: set[str] = set(dir(builtins))
        self.free: list[str] = []

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            self.bound.add(node.id)
        elif node.id not in self.bound and node.id not in self.free:
            self.free.append(node.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for stmt in node.body + node.orelse:
            self.visit(stmt)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        for gen in node.generators:
            self.visit(gen.iter)
            self.visit(gen.target)
            for cond in gen.ifs:
                self.visit(cond)
        for child in (node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,):
            self.visit(child)

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension

    def _arguments(self, args: ast.arguments) -> None:
        for arg in args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]:
            self.bound.add(arg.arg)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._arguments(node.args)
        self.visit(node.body)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.bound.add(node.name)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d]:
            self.visit(default)
        self._arguments(node.args)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.bound.add(node.name)
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            self.bound.add(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import


def free_names(code: str) -> list[str]:
    """The names ``code`` reads before binding them, in order.

    >>> free_names("import json\\nx = f(json)\\nfor s in x:\\n    state = step(state, s)\\ny = [i for i in x]")
    ['f', 'step', 'state']
    """
    scan = _Scan()
    scan.visit(ast.parse(code))
    return scan.free


def prelude(names: list[str], line: int) -> str:
    unknown = [n for n in names if n not in PRELUDES]
    assert not unknown, (
        f"README.md:{line}: the block uses {', '.join(unknown)} without defining it: define it in the block, or add "
        "it to PRELUDES in tests/test_readme.py if the text around the block says what it is"
    )
    order: list[str] = []

    def need(name: str) -> None:
        for dep in PRELUDES[name][1]:
            need(dep)
        if name not in order:
            order.append(name)

    for name in names:
        need(name)
    return "".join(PRELUDES[n][0] + "\n" for n in order)


# The working directory's files, built once per test process and linked into each block's folder.


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from corpora import paragraphs, write_jsonl, write_parquet

    root = tmp_path_factory.mktemp("readme-files")
    table = paragraphs(max_rows=6000)
    write_parquet(table.slice(0, 3000), root / "data", shards=3, row_group_size=250)
    write_jsonl(table.slice(3000), root / "code", shards=2)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(table.column("text").to_pylist(), trainer)
    tok.save(str(root / "tokenizer.json"))
    return root


def gpt2(files: Path) -> Path:
    """``openai-community/gpt2``, tiny: a one-layer GPT-2 and the BPE of ``tokenizer.json`` (built on first use)."""
    folder = files / "openai-community" / "gpt2"
    if not (folder / "config.json").exists():
        from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(files / "tokenizer.json"), bos_token="<|endoftext|>",
                                            eos_token="<|endoftext|>", unk_token="<|endoftext|>")  # fmt: skip
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=32, n_layer=1, n_head=2,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        scratch = folder.with_name(".gpt2-partial")
        GPT2LMHeadModel(config).save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        scratch.rename(folder)
    return folder


def images(files: Path) -> Path:
    """``train-0000{0,1}.tar``: WebDataset shards of scikit-learn's digit scans as 32x32 JPEGs with their class."""
    folder = files / "imagenet"
    if not (folder / "train-00001.tar").exists():
        import io
        import tarfile

        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        scratch = folder.with_name(".imagenet-partial")
        scratch.mkdir()
        for shard in range(2):
            with tarfile.open(scratch / f"train-{shard:05d}.tar", "w") as tar:
                for i in range(shard * 32, shard * 32 + 32):
                    pixels = (digits.images[i] * 255 / 16).astype("uint8")
                    jpeg = io.BytesIO()
                    Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(jpeg, format="JPEG")
                    for ext, data in (("jpg", jpeg.getvalue()), ("cls", str(digits.target[i]).encode())):
                        info = tarfile.TarInfo(f"train/{i:06d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        scratch.rename(folder)
    return folder


def tokens(files: Path) -> Path:
    """``part-0000{0,1}.bin``: nanoGPT token files (raw uint16) of the paragraphs, tokenized with ``tokenizer.json``."""
    folder = files / "tokens"
    if not (folder / "part-00001.bin").exists():
        import numpy as np
        import pyarrow.parquet as pq
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(files / "tokenizer.json"))
        texts = pq.read_table(files / "data", columns=["text"]).column("text").to_pylist()
        ids = np.array([t for e in tok.encode_batch(texts) for t in [*e.ids, 0]], dtype=np.uint16)  # 0: end of text
        scratch = folder.with_name(".tokens-partial")
        scratch.mkdir()
        for i, part in enumerate(np.array_split(ids, 2)):
            part.tofile(scratch / f"part-{i:05d}.bin")
        scratch.rename(folder)
    return folder


# What the S3 server holds under each prefix a block names (s3://BUCKET/PREFIX/...).
S3_DATA = {"data": lambda files: files / "data", "fineweb": lambda files: files / "data", "imagenet": images,
           "tokens": tokens}  # fmt: skip


@contextlib.contextmanager
def s3_serving(code: str, files: Path) -> Iterator[dict[str, str]]:
    """SeaweedFS holding what the block's s3:// URLs name; yields the environment that reaches it."""
    urls = S3_URL.findall(code)
    if not urls:
        yield {}
        return
    buckets = {bucket for bucket, _ in urls}
    assert len(buckets) == 1, f"one S3 bucket per block, got {sorted(buckets)}"
    unknown = sorted({prefix for _, prefix in urls} - S3_DATA.keys())
    assert not unknown, f"no files for s3://.../{unknown[0]}/: add them to S3_DATA in tests/test_readme.py"
    from servers import Missing, SeaweedS3

    server = SeaweedS3(bucket=buckets.pop())
    try:
        store = server.start()
    except Missing as e:
        server.stop()
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{server.name}: {e}; CI must run the README's S3 blocks (make setup installs it)")
        pytest.skip(f"{server.name}: {e}")
    try:
        for prefix in sorted({prefix for _, prefix in urls}):
            store.put(S3_DATA[prefix](files), prefix)
        yield {"AWS_ENDPOINT_URL": store.endpoint, "AWS_ACCESS_KEY_ID": store.key,
               "AWS_SECRET_ACCESS_KEY": store.secret, "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    finally:
        server.stop()


def workdir(tmp_path: Path, files: Path, code: str) -> Path:
    """``tmp_path`` with links to the files (the tiny GPT-2 built first when the block names it)."""
    if "openai-community/gpt2" in code:
        gpt2(files)
    for entry in sorted(files.iterdir()):
        if not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return tmp_path


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}  # only the test's own S3 server
    return {
        **env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",  # two cores, shared with the other test process
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",  # two JAX devices on the CPU
        "WANDB_MODE": "disabled",
    }


ALL = blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_blocks_and_every_language_is_known() -> None:
    text = README.read_text(encoding="utf-8")
    langs = {m.group(1) for m in map(FENCE.match, text.splitlines()) if m}
    assert langs <= {*RUN, "", "yaml"}, f"README.md has ```{langs - {*RUN, '', 'yaml'}} blocks: run them here"
    assert sum(b.lang == "python" for b in ALL) >= 10


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_readme_block_runs(block: Block, files: Path, tmp_path: Path) -> None:
    reason = block.directive("skip")
    if reason is not None:
        pytest.skip(f"README.md:{block.line}: {reason}")
    code = replaced(block)
    cwd = workdir(tmp_path, files, code)
    if block.lang == "python":
        script = cwd / "block.py"
        script.write_text(prelude(free_names(code), block.line) + code)
        argv = [sys.executable, str(script)]
        ranks = block.directive("torchrun")
        if ranks is not None:
            assert ranks.isdigit(), f"README.md:{block.line}: torchrun takes the number of processes, got {ranks!r}"
            argv[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    else:
        script = cwd / "block.sh"
        script.write_text("set -euo pipefail\n" + code)
        argv = ["bash", str(script)]
    with s3_serving(code, files) as s3:
        done = subprocess.run(argv, cwd=cwd, env={**environment(), **s3}, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, (
        f"README.md:{block.line} ({block.section}) failed with exit code {done.returncode}:\n"
        f"{textwrap.indent(script.read_text(), '    ')}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n"
        f"{done.stderr[-6000:]}"
    )
