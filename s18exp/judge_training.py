"""Training and caching of the judge classifier (s18exp/models/judge.py).

It is trained once per dataset, image size and training split on that split's real images, and cached in
`paths.cache_dir/judges/` under a key that hashes the training tensors and the judge's settings.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.functional import gaussian_blur

from s18exp import console
from s18exp.data import Batches, TensorSplit
from s18exp.data.cache import cached, tensor_digest
from s18exp.losses import cross_entropy
from s18exp.models.judge import Judge, build_judge, to_unit
from s18exp.runtime import Runtime
from s18exp.updates import optimizer_step


def judge_description(train: TensorSplit, dataset: str, class_names: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides the judge's weights: the training tensors themselves (hashed) and its settings."""
    return {
        "dataset": dataset,
        "split": "judge",
        "image_size": int(train.images.shape[-1]),
        "channels": int(train.images.shape[1]),
        "classes": list(class_names),
        "train": tensor_digest(train.images, train.targets.long()),
        "settings": settings,
    }


def blur_half(images: torch.Tensor, max_sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random half of a float batch blurred by a Gaussian of one random sigma in [0.5, max_sigma], drawn from
    `generator` (torch's global one when None):
    VAE outputs are blurry, and a judge that has only seen sharp images reads blur as a class of its own."""
    if max_sigma <= 0:
        return images
    sigma = 0.5 + (max_sigma - 0.5) * torch.rand((), generator=generator).item()
    size = min(2 * math.ceil(2 * sigma) + 1, (min(images.shape[-2:]) - 1) // 2 * 2 + 1)  # reflect padding < side
    blurred = gaussian_blur(images, [size, size], [sigma, sigma])
    chosen = (torch.rand(len(images), generator=generator) < 0.5).to(images.device).view(-1, 1, 1, 1)
    return torch.where(chosen, blurred, images)


def train_judge(
    train: TensorSplit, num_classes: int, settings: dict[str, Any], runtime: Runtime, progress: str = "auto",
) -> Judge:
    """Cross-entropy training with AdamW and a OneCycle schedule, half of each batch blurred (`blur`, the
    largest sigma in pixels; 0 = none); its own seed, the run's RNG untouched. Each update is the training
    loop's `optimizer_step`, so that fp16 scales the loss and skips overflowed steps as a run does."""
    with torch.random.fork_rng(devices=[runtime.device] if runtime.device.type == "cuda" else []):
        torch.manual_seed(settings["seed"])
        generator = torch.Generator().manual_seed(settings["seed"])
        judge = runtime.prepare_model(
            build_judge(num_classes, train.images.shape[1], train.images.shape[-1], settings["width"])
        )
        batches = Batches(train, settings["batch_size"], shuffle=True, seed=settings["seed"])
        optimizer = torch.optim.AdamW(judge.parameters(), lr=settings["lr"], weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["lr"], total_steps=settings["epochs"] * len(batches))
        scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")  # fp16 gradients underflow unscaled
        judge.train()
        for epoch in range(1, settings["epochs"] + 1):
            batches.set_epoch(epoch)
            shown = console.EpochProgress(epoch, settings["epochs"], len(train), progress)
            shown.title = f"judge {shown.title}"
            with shown:
                last_shown = 0.0
                for images, labels in batches:
                    images, labels = runtime.to_device(images, labels)
                    x = blur_half(to_unit(images), settings.get("blur", 0.0), generator)
                    with runtime.autocast():
                        loss = cross_entropy(judge(x), labels)
                    optimizer_step(judge, loss, optimizer, scaler, scheduler, grad_clip=None)
                    now = time.perf_counter()  # the loss is read (a device sync) at most once a second
                    value = loss.item() if now - last_shown > 1.0 else None
                    last_shown = now if value is not None else last_shown
                    shown.advance(len(images), value)
    return judge.eval()


def judge_for(
    train: TensorSplit, dataset: str, class_names: list[str], settings: dict[str, Any], runtime: Runtime,
    cache_dir: str | Path | None, progress: str = "auto",
) -> Judge:
    """The judge of this dataset and size: read from the cache when trained before, else trained and cached."""
    description = judge_description(train, dataset, class_names, settings)

    def build() -> dict:
        console.info(f"training the judge classifier on {len(train)} {dataset} training images (cached afterwards)")
        judge = train_judge(train, len(class_names), settings, runtime, progress)
        return {"state_dict": {k: v.detach().cpu() for k, v in judge.state_dict().items()}}

    state = cached(Path(cache_dir) / "judges" if cache_dir else None, description, build)
    judge = build_judge(len(class_names), train.images.shape[1], train.images.shape[-1], settings["width"])
    judge.load_state_dict(state["state_dict"])
    return runtime.prepare_model(judge).eval()
