"""How one reader learns: its own loop, apart from the VAE's (s18exp/loop.py, s18exp/updates.py) and the
judge's (s18exp/judge_training.py), so that no reader shares a training path with what the VAE trains against.

AdamW with a one-cycle learning rate, label smoothing, the reader's own augmentation (augment.py), its own seed
for the initial weights, the order of the images and every augmentation draw; the run's random state is left
untouched. Readers with BatchNorm then have its statistics recomputed as exact averages over augmented
training batches: the running averages lag behind weights that moved fast in a short schedule.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from s18exp import console
from s18exp.data import Batches, TensorSplit
from s18exp.readers.augment import augmented
from s18exp.readers.networks import build_reader
from s18exp.runtime import Runtime

# What every reader's training shares; part of each reader's cache key, so a change here trains them anew.
RECIPE = {
    "label_smoothing": 0.1,
    "weight_decay": 5e-2,
    "warmup": 0.15,  # share of the steps over which the one-cycle learning rate rises
    "batchnorm_batches": 40,  # augmented training batches averaged into the BatchNorm statistics
}


def augmented_batch(images: torch.Tensor, augment: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, C, H, W) on the device -> augmented floats in [0, 1], channels_last (the layout that the
    convolutions of a channels_last model run fast on; the augmentation's indexing returns NCHW)."""
    return augmented(images.float() / 255, augment, generator).contiguous(memory_format=torch.channels_last)


def train_reader(name: str, train: TensorSplit, num_classes: int, settings: dict[str, Any], runtime: Runtime, progress: str = "auto") -> nn.Module:
    """The reader `settings` describe (arch, width, epochs, batch_size, lr, seed, augment), trained on `train`."""
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings["seed"])
        generator = torch.Generator().manual_seed(settings["seed"])
        reader = runtime.prepare_model(
            build_reader(settings["arch"], train.images.shape[1], num_classes, settings["width"], train.images.shape[-1])
        )
        batches = Batches(train, settings["batch_size"], shuffle=True, seed=settings["seed"])
        optimizer = torch.optim.AdamW(reader.parameters(), lr=settings["lr"], weight_decay=RECIPE["weight_decay"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=settings["epochs"] * len(batches), pct_start=RECIPE["warmup"])
        scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
        for epoch in range(1, settings["epochs"] + 1):
            reader.train()
            batches.set_epoch(epoch)
            shown = console.EpochProgress(epoch, settings["epochs"], len(train), progress)
            shown.title = f"reader {name} {shown.title}"
            with shown:
                last_shown = 0.0
                for images, labels in batches:
                    images, labels = runtime.to_device(images, labels)
                    x = augmented_batch(images, settings["augment"], generator)
                    with runtime.autocast():
                        loss = F.cross_entropy(reader(x).float(), labels, label_smoothing=RECIPE["label_smoothing"])
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    schedule.step()
                    now = time.perf_counter()  # the loss is read (a device sync) at most once a second
                    value = loss.item() if now - last_shown > 1.0 else None
                    last_shown = now if value is not None else last_shown
                    shown.advance(len(images), value)
        recompute_batchnorm(reader, batches, settings["augment"], generator, runtime)
    return reader.eval()


@torch.no_grad()
def recompute_batchnorm(reader: nn.Module, batches: Batches, augment: dict[str, Any], generator: torch.Generator, runtime: Runtime) -> None:
    """BatchNorm running statistics as the plain average over RECIPE["batchnorm_batches"] augmented training batches."""
    norms = [m for m in reader.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None: a cumulative average of every batch seen, not an exponential one
    reader.train()
    for step, (images, _) in enumerate(batches):
        if step == RECIPE["batchnorm_batches"]:
            break
        with runtime.autocast():
            reader(augmented_batch(images.to(runtime.device), augment, generator))
    for norm in norms:
        norm.momentum = 0.1
    reader.eval()
