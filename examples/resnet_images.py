"""Train a small ResNet on image shards streamed by headrace: scikit-learn's handwritten digits.

The script writes the data itself: the 1,797 real 8x8 digit scans of ``sklearn.datasets.load_digits``,
upscaled to 32x32 grey PNGs, into WebDataset-style tar shards (``KEY.png`` + ``KEY.cls`` per sample):
4 train shards (80%) and 1 test shard (20%, a fixed stratified split). Then headrace streams the
train shards, shuffled, decoded by Pillow on the loader's worker and augmented on the fly::

    hr.open("train-*.tar", columns=["png", "cls"], block_rows=256)
      .shuffle(seed, buffer_size=512)
      .decode_images("png", mode="L")                       # uint8 [64, 32, 32, 1]
      .augment(random_crop=32, padding=3, seed=seed)        # shifts of up to 3 pixels
      .batch(64, drop_last=True)

into a plain-PyTorch ResNet (a stride-2 3x3 stem, then three basic residual blocks of 16, 32 and 64
channels at 16, 8 and 4 pixels; no torchvision), and finally evaluates on the test shard and prints
the accuracy.

Augmentations: random crops of the zero-padded image (shifts of up to 3 pixels) — what a scanned
digit plausibly varies by. No flips: a mirrored 2, 3, 4, 5, 7 or 9 is not that digit (or not a
digit), so flipping would teach the network wrong labels and costs accuracy.

With the defaults (``--epochs 10``) it reaches 98-99% test accuracy (seen: 98.3-99.2% over seeds 0-3;
98.9% with the default seed) in 5-10 seconds on 2 CPU cores; ``--epochs 3`` reaches 96.7-97.5%. It
exits with status 1 when the accuracy is below ``--min-accuracy`` (default 0.97).

    python examples/resnet_images.py [--epochs 10] [--out DIR] [--min-accuracy 0.97] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

import headrace as hr

SIZE = 32  # the 8x8 digits are upscaled to this


def write_shards(out: Path, train_shards: int = 4, seed: int = 0) -> tuple[str, str, int]:
    """The digits as PNG + label tar shards in ``out``: ``(train glob, test glob, train samples)``."""
    digits = load_digits()
    index = np.arange(len(digits.images))
    train, test = train_test_split(index, test_size=0.2, random_state=seed, stratify=digits.target)
    out.mkdir(parents=True, exist_ok=True)

    def write(path: Path, indices: np.ndarray) -> None:
        with tarfile.open(path, "w") as tar:
            for i in indices:
                pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)  # 0..16 -> 0..255
                image = Image.fromarray(pixels, mode="L").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                png = io.BytesIO()
                image.save(png, format="PNG")
                for extension, data in (("png", png.getvalue()), ("cls", str(digits.target[i]).encode())):
                    info = tarfile.TarInfo(f"digit-{i:04d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

    for k, part in enumerate(np.array_split(np.sort(train), train_shards)):
        write(out / f"train-{k:04d}.tar", part)
    write(out / "test-0000.tar", np.sort(test))
    return str(out / "train-*.tar"), str(out / "test-*.tar"), len(train)


class Block(nn.Module):
    """A basic residual block: two 3x3 convolutions, and a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class ResNet(nn.Module):
    """A stride-2 stem, three stages of ``depth`` blocks (``width``, 2x, 4x channels; each later stage halves
    the resolution: 16, 8, 4 pixels for a 32-pixel input), global average pooling, a linear classifier."""

    def __init__(self, classes: int = 10, width: int = 16, depth: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(depth):
                layers.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 1]`` -> float ``[B, 1, H, W]`` in about [-1, 1]."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 127.5


def train(train_glob: str, samples: int, epochs: int, batch_size: int, seed: int) -> nn.Module:
    data = (
        hr.open(train_glob, columns=["png", "cls"], block_rows=256)  # small blocks: decoding overlaps training
        .shuffle(seed=seed, buffer_size=512)
        .decode_images("png", mode="L")
        .augment(random_crop=SIZE, padding=3, seed=seed)  # no flip: a mirrored digit is another symbol
        .batch(batch_size, drop_last=True)
    )
    loader = hr.Loader(data, num_workers=1, prefetch=4)
    torch.manual_seed(seed)
    model = ResNet()
    steps = epochs * (samples // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    model.train()
    for epoch in range(epochs):
        began, losses = time.perf_counter(), []
        for batch in loader:  # one pass = one epoch; the next pass is the next epoch, reshuffled
            loss = F.cross_entropy(model(as_tensor(batch["image"])), torch.tensor(batch["cls"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f}, {len(losses)} steps, "
              f"{time.perf_counter() - began:.1f} s, data wait {loader.stats().data_wait:.1%}", flush=True)  # fmt: skip
    return model


@torch.no_grad()
def evaluate(model: nn.Module, test_glob: str) -> float:
    model.eval()
    right = total = 0
    for batch in hr.Loader(hr.open(test_glob).decode_images("png", mode="L").batch(256)):
        predicted = model(as_tensor(batch["image"])).argmax(dim=1).numpy()
        right += int((predicted == batch["cls"]).sum())
        total += len(predicted)
    return right / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="where to write the shards (default: a temp dir)")
    parser.add_argument("--min-accuracy", type=float, default=0.97, help="exit 1 below this test accuracy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        train_glob, test_glob, samples = write_shards(out, seed=args.seed)
        print(f"wrote {samples} train samples to {train_glob} and the test samples to {test_glob}")
        began = time.perf_counter()
        model = train(train_glob, samples, args.epochs, args.batch_size, args.seed)
        accuracy = evaluate(model, test_glob)
    print(f"test accuracy: {accuracy:.4f} after {args.epochs} epochs ({time.perf_counter() - began:.1f} s)")
    if accuracy < args.min_accuracy:
        print(f"below --min-accuracy {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
