"""`python scripts/second_opinion.py {mnist,cifar10} FILE.npz [FILE.npz ...] [--root DIR] [--cache DIR] [--epochs 6] [--threads N]`

A second, independent classifier's reading of the VAE's wrong-label outputs.

The project scores those outputs with its judge (s18exp/models/judge.py, `build_judge`). On CIFAR-10 the VAE can
train with a guide classifier (task.guide_weight) of the judge's own architecture; the decoder may then learn
patterns that this architecture reads as the given class while another network would not, and the judge's
score would be inflated. This script trains a classifier of a deliberately different architecture (strided
convolutions instead of max pooling, BatchNorm, GELU, wider: 48-96-192 channels, global average pooling) with
its own seed (1234) and augmentation (horizontal flip for RGB, shift up to 2 px, Gaussian blur on half of each
batch), and reads the npz files of `python -m s18exp.generate ckpt=RUN_DIR n=N output=FILE.npz`. It prints its
accuracy on the real test split (the ceiling of what follow can show), then per file: N; follow, the share of
outputs read as their given (wrong) label; keep, the share read as their true label; inputs_acc, the share of
inputs read right. Where these agree with the judge's, its score is no artefact of the shared architecture.

`--root` (default `$S18EXP_DATA`, else ~/.cache/s18exp/data, as the project's data.root) holds MNIST/raw/, or for
CIFAR-10 cifar-10-batches-py/ (read first, as the project does) or else cifar10-jpg/{train,test}/<class>/. Weights
(with a json of test accuracy and settings) and decoded JPEGs are cached in `--cache` per dataset, layout, epochs
and settings. Six epochs take about 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.datasets import CIFAR10, MNIST, ImageFolder

from s18exp import cli
from s18exp.atomic_files import atomic_torch_save, atomic_write_json
from s18exp.data.cache import cached, fingerprint
from s18exp.data.cifar10 import CLASS_NAMES as CIFAR10_CLASSES, JPG_DIR, PICKLE_DIR
from s18exp.data.labelled import resize_square
from s18exp.errors import UserError, one_line
from s18exp.runtime import resolve_precision

SIZE = 32
NUM_CLASSES = 10
CHANNELS = {"mnist": 1, "cifar10": 3}
NPZ_KEYS = ("inputs", "true_labels", "given_labels", "outputs")
# What decides the trained weights besides dataset, layout and epochs; hashed into the cache key, so raise
# `version` whenever the network, the augmentation or the training loop changes.
SETTINGS = {"version": 1, "seed": 1234, "batch_size": 128, "lr": 3e-3, "weight_decay": 5e-4, "bn_batches": 40}


def data_source(dataset: str, root: Path) -> tuple[str, Path]:
    """(layout, folder) of `dataset` under `root`: idx (MNIST), pickle or jpg (CIFAR-10)."""
    if dataset == "mnist":
        if (root / "MNIST" / "raw").is_dir():
            return "idx", root
        expected = "MNIST/raw/"
    elif (root / PICKLE_DIR).is_dir():
        return "pickle", root
    elif all((root / JPG_DIR / split).is_dir() for split in ("train", "test")):
        return "jpg", root / JPG_DIR
    else:
        expected = f"{PICKLE_DIR}/ or {JPG_DIR}/{{train,test}}/<class>/"
    raise UserError(f"no {expected} under {root}; pass --root DIR, the folder that holds it (as the project's data.root)")


def load_split(layout: str, folder: Path, train: bool, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, C, 32, 32) and labels int64 (N,) of the official train or test split."""
    try:
        if layout == "idx":
            digits = MNIST(folder, train=train, download=False)
            return resize_square(digits.data[:, None], SIZE, pad=True), digits.targets.long()
        if layout == "pickle":
            photos = CIFAR10(folder, train=train, download=False)
            return torch.from_numpy(photos.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(photos.targets)
    except RuntimeError as exc:  # torchvision's word for missing or damaged files
        raise UserError(f"{folder}: {one_line(exc)}") from None
    split = "train" if train else "test"
    files = ImageFolder(folder / split)
    if files.classes != CIFAR10_CLASSES:
        raise UserError(f"{folder / split} must hold the 10 CIFAR-10 class folders {CIFAR10_CLASSES}, not {files.classes}")

    # Only the JPEGs are cached: decoding 60,000 of them takes half a minute, the other layouts load instantly.
    def decode() -> dict[str, torch.Tensor]:
        pixels = np.stack([np.asarray(files.loader(path).convert("RGB")) for path, _ in files.samples])
        return {"images": torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), "labels": torch.tensor(files.targets)}

    description = {"dataset": "cifar10-jpg", "split": split, "files": fingerprint([Path(p) for p, _ in files.samples])}
    tensors = cached(cache / "tensors", description, decode)
    return tensors["images"], tensors["labels"]


def classifier_view(images: torch.Tensor, digits: bool) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, C, 32, 32) as the classifier was trained, whatever the run's data.image_size:
    digits, which the project pads around the centre from 28 px up and resizes below, are cut or padded to 32
    around the centre (resized to 28 first when smaller); other images are resized."""
    if not digits:
        return resize_square(images, SIZE, pad=False)
    height, width = images.shape[-2:]
    if min(height, width) > SIZE:
        top, left = (height - SIZE) // 2, (width - SIZE) // 2
        images = images[..., top : top + SIZE, left : left + SIZE]
    elif min(height, width) < 28:
        images = resize_square(images, 28, pad=False)
    return resize_square(images, SIZE, pad=True)


def read_npz(path: Path, channels: int, digits: bool) -> dict[str, torch.Tensor]:
    """The arrays of a `python -m s18exp.generate` npz as tensors, images as the classifier reads them."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is missing or no npz file; give the output=FILE.npz of python -m s18exp.generate")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in NPZ_KEYS if key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a readable npz: {one_line(exc)}") from None
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; expected the keys {', '.join(NPZ_KEYS)} that s18exp.generate writes")
    n = arrays["true_labels"].size
    for key in ("true_labels", "given_labels"):
        labels = arrays[key]
        if labels.shape != (n,) or n == 0 or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise UserError(f"{path}: {key} is {labels.dtype} {labels.shape}; expected N > 0 integers in 0..{NUM_CLASSES - 1}, N = {n}")
    for key in ("inputs", "outputs"):
        images = arrays[key]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n or images.shape[3] != channels:
            raise UserError(f"{path}: {key} is {images.dtype} {images.shape}; expected uint8 (N, H, W, {channels}) with N = {n}")
    images = {key: classifier_view(torch.from_numpy(arrays[key]).permute(0, 3, 1, 2), digits) for key in ("inputs", "outputs")}
    return {**images, **{key: torch.from_numpy(arrays[key]).long() for key in ("true_labels", "given_labels")}}


def build_classifier(channels: int) -> nn.Sequential:
    """32 -> 16 -> 8 px by strided 3x3 convolutions (no pooling), 48-96-192 channels, global average pooling."""
    layers: list[nn.Module] = []
    for inputs, outputs, stride in ((channels, 48, 1), (48, 96, 2), (96, 96, 1), (96, 192, 2), (192, 192, 1)):
        layers += [nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs), nn.GELU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(192, NUM_CLASSES))


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - 0.5) / 0.25


def augment(x: torch.Tensor, flip: bool) -> torch.Tensor:
    """Float (B, C, H, W): a random half mirrored when `flip`, all shifted by up to 2 px (edges replicated), and a
    random half blurred with a Gaussian of sigma 0.5..2 px, so that blurry VAE outputs read as their class."""
    batch, channels, height, width = x.shape
    if flip:
        x = torch.where((torch.rand(batch) < 0.5)[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    rows = (torch.randint(0, 5, (batch,))[:, None] + torch.arange(height))[:, None, :, None]
    cols = (torch.randint(0, 5, (batch,))[:, None] + torch.arange(width))[:, None, None, :]
    x = padded[torch.arange(batch)[:, None, None, None], torch.arange(channels)[None, :, None, None], rows, cols]
    blurred = torch.rand(batch) < 0.5
    count = int(blurred.sum())
    if count:
        sigma = torch.empty(count).uniform_(0.5, 2.0)
        taps = torch.exp(-torch.arange(-4, 5.0)[None] ** 2 / (2 * sigma[:, None] ** 2))
        taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(channels, 0)
        # one group per (image, channel), so each image gets its own sigma; rows then columns (separable)
        planes = F.pad(x[blurred].reshape(1, count * channels, height, width), (4, 4, 4, 4), mode="replicate")
        planes = F.conv2d(planes, taps[:, None, :, None], groups=count * channels)
        planes = F.conv2d(planes, taps[:, None, None, :], groups=count * channels)
        x[blurred] = planes.reshape(count, channels, height, width)
    return x


def train(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, flip: bool, epochs: int, bf16: bool) -> None:
    """AdamW with a one-cycle learning rate over `epochs`; a loss line per epoch on stderr."""
    batch_size = SETTINGS["batch_size"]
    optimizer = torch.optim.AdamW(net.parameters(), lr=SETTINGS["lr"], weight_decay=SETTINGS["weight_decay"])
    total_steps = epochs * math.ceil(len(images) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=SETTINGS["lr"], total_steps=total_steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order, loss_sum = torch.randperm(len(images)), 0.0
        for first in range(0, len(images), batch_size):
            batch = order[first : first + batch_size]
            inputs = augment(normalize(images[batch]), flip)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(inputs), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / len(images):.4f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)


@torch.no_grad()
def reestimate_batchnorm(net: nn.Module, images: torch.Tensor, flip: bool, bf16: bool) -> None:
    """BatchNorm running statistics as exact averages over augmented training batches. The running averages that
    training leaves lag behind weights that changed fast (a one-cycle schedule, a run of one or few epochs), and
    stale statistics cost test accuracy in eval mode."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # None: a cumulative average of every batch seen, not an exponential one
    net.train()
    batch_size = SETTINGS["batch_size"]
    order = torch.randperm(len(images))[: SETTINGS["bn_batches"] * batch_size]
    for first in range(0, len(order), batch_size):
        inputs = augment(normalize(images[order[first : first + batch_size]]), flip)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            net(inputs)


@torch.no_grad()
def classify(net: nn.Module, images: torch.Tensor, bf16: bool, batch_size: int = 500) -> torch.Tensor:
    """uint8 images (N, C, 32, 32) -> class indices (N,)."""
    net.eval()
    predictions = []
    for first in range(0, len(images), batch_size):
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            predictions.append(net(normalize(images[first : first + batch_size])).argmax(1))
    return torch.cat(predictions)


def cache_stem(cache: Path, dataset: str, layout: str, epochs: int, bf16: bool) -> Path:
    """The cached classifier's path without suffix; a different dataset, layout, epochs, precision or SETTINGS
    gives another (the data folder does not: one copy of a dataset is taken to be as good as another)."""
    key = json.dumps({"dataset": dataset, "layout": layout, "epochs": epochs, "bf16": bf16, **SETTINGS}, sort_keys=True)
    return cache / f"{dataset}-{layout}-e{epochs}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def trained_classifier(dataset: str, layout: str, folder: Path, epochs: int, cache: Path, bf16: bool) -> tuple[nn.Module, dict]:
    """The classifier and its summary (test accuracy, settings): read from `cache`, else trained and cached."""
    stem = cache_stem(cache, dataset, layout, epochs, bf16)
    weights, summary = stem.with_suffix(".pt"), stem.with_suffix(".json")
    torch.manual_seed(SETTINGS["seed"])
    net = build_classifier(CHANNELS[dataset])
    if weights.exists() and summary.exists():
        net.load_state_dict(torch.load(weights, weights_only=True))
        return net, {**json.loads(summary.read_text()), "weights": str(weights)}
    images, labels = load_split(layout, folder, True, cache)
    flip = dataset == "cifar10"  # a mirrored digit is another glyph
    print(f"training on {len(images)} {dataset} images for {epochs} epochs (bf16: {bf16})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    train(net, images, labels, flip, epochs, bf16)
    reestimate_batchnorm(net, images, flip, bf16)
    test_images, test_labels = load_split(layout, folder, False, cache)
    accuracy = (classify(net, test_images, bf16) == test_labels).float().mean().item()
    info = {"dataset": dataset, "layout": layout, "epochs": epochs, "test_accuracy": accuracy, "n_train": len(images),
            "n_test": len(test_labels), "bf16": bf16, "train_seconds": round(time.perf_counter() - start, 1), **SETTINGS}
    atomic_torch_save(net.state_dict(), weights)
    atomic_write_json(info, summary)  # written last: a summary means its weights are complete
    return net, {**info, "weights": str(weights)}


@cli.command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=list(CHANNELS))
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE.npz", help="written by python -m s18exp.generate")
    default_root = os.environ.get("S18EXP_DATA") or str(Path.home() / ".cache/s18exp/data")  # as the data configs' root
    parser.add_argument("--root", type=Path, default=Path(default_root), metavar="DIR", help="data folder, as data.root (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/s18exp/second_opinion", metavar="DIR", help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=6, metavar="N", help="training epochs; each value is cached apart (default: %(default)s)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args(argv)
    for name in ("epochs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)} must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    layout, folder = data_source(args.dataset, args.root.expanduser())
    results = [read_npz(path, CHANNELS[args.dataset], digits=args.dataset == "mnist") for path in args.files]  # all checked before training
    bf16 = resolve_precision("auto", torch.device("cpu")) == "bf16"  # where the CPU computes it natively
    net, info = trained_classifier(args.dataset, layout, folder, args.epochs, args.cache.expanduser(), bf16)
    print(f"classifier: accuracy {info['test_accuracy']:.4f} on the {info['n_test']} real {args.dataset} test images "
          f"(epochs={info['epochs']}, {info['weights']})")
    for path, arrays in zip(args.files, results):
        read_outputs, read_inputs = classify(net, arrays["outputs"], bf16), classify(net, arrays["inputs"], bf16)
        follow = (read_outputs == arrays["given_labels"]).float().mean().item()
        keep = (read_outputs == arrays["true_labels"]).float().mean().item()
        inputs_acc = (read_inputs == arrays["true_labels"]).float().mean().item()
        print(f"{path}  N={len(read_outputs)}  follow={follow:.4f}  keep={keep:.4f}  inputs_acc={inputs_acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
