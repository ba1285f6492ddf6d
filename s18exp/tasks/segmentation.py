"""The UNet task: Oxford-IIIT Pet trimap segmentation, trained with BCE or Dice, scored on common metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from s18exp.data import Batches, TensorSplit
from s18exp.errors import UserError, instantiate
from s18exp.distributed import all_reduce_sum
from s18exp.data.pets import CLASS_SCHEMES, IMAGENET_MEAN, IMAGENET_STD
from s18exp.io import atomic_save_image
from s18exp.loop import Runtime
from s18exp.metrics import ConfusionMatrix, segmentation_scores
from s18exp.pictures import captioned_grid, overlay, to_pil
from s18exp.tracking import Tracker

PREDICTION_IMAGES = 8
PREDICTION_SEED = 0  # not the run's seed: every run shows the same test images


class SegmentationTask:
    name = "unet"
    monitor = "miou"
    monitor_mode = "max"

    def __init__(self, cfg: DictConfig) -> None:
        if cfg.data.name != "pets":
            raise UserError(f"data={cfg.data.name} has no segmentation masks; task=unet takes data=pets")
        self.cfg = cfg
        self.criterion: nn.Module = instantiate(cfg.loss.criterion)
        if cfg.data.classes not in CLASS_SCHEMES:
            raise UserError(f"data.classes={cfg.data.classes!r} is unknown; use one of {'|'.join(CLASS_SCHEMES)}")
        self.class_names = CLASS_SCHEMES[cfg.data.classes][0]
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def build_data(self) -> Any:
        return instantiate(self.cfg.data, cache_dir=self.cfg.paths.cache_dir)

    def build_model(self) -> nn.Module:
        return instantiate(
            self.cfg.model,
            num_classes=len(self.class_names),
            downsample=instantiate(self.cfg.encoder.downsample),
            upsample=instantiate(self.cfg.decoder.upsample),
        )

    def describe(self) -> dict[str, Any]:
        """What identifies this run's combo in summary.json, W&B tags and the report."""
        return {
            "task": self.name,
            "encoder": self.cfg.encoder.name,
            "decoder": self.cfg.decoder.name,
            "loss": self.cfg.loss.name,
            "seed": self.cfg.seed,
            "combo": self.cfg.combo,
        }

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> ImageNet-normalised floats, in the images' memory format (NCHW from `Batches`: a
        channels_last model turns its first convolution's output channels_last; a plain one stays NCHW)."""
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float() / 255 - mean) / std

    def augment(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A horizontal flip of half the samples, the same flip for an image and its mask.

        Draws from torch's global RNG, which run.py seeds and checkpoints save, so resumed runs repeat it.
        """
        flip = torch.rand(len(images)) < 0.5
        flip = flip.to(images.device)
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        masks = torch.where(flip.view(-1, 1, 1), masks.flip(-1), masks)
        return images, masks

    def training_loss(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        images, masks = self.augment(images, masks)
        return self.criterion(model(self.normalize(images)), masks)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Batches, runtime: Runtime) -> dict[str, float]:
        """Mean loss and the confusion-matrix scores over the whole split."""
        model.eval()
        confusion = ConfusionMatrix(len(self.class_names), runtime.device)
        loss_sum = torch.zeros((), device=runtime.device)
        for images, masks in batches:
            images, masks = runtime.to_device(images, masks)
            with runtime.autocast():
                logits = model(self.normalize(images))
            loss_sum += self.criterion(logits, masks) * len(images)
            confusion.update(logits.argmax(1), masks)
        counts = all_reduce_sum(confusion.counts, runtime.dist)
        loss_sum = all_reduce_sum(loss_sum, runtime.dist)
        scores = segmentation_scores(counts.view(confusion.num_classes, -1).cpu(), self.class_names)
        return {"loss": (loss_sum / len(batches.split)).item(), **scores}

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
        """uint8 images (N, 3, H, W) -> predicted class indices (N, H, W) on the CPU."""
        model.eval()
        with runtime.autocast():
            logits = model(self.normalize(images.to(runtime.device)))
        return logits.argmax(1).cpu()

    def finalize(self, model: nn.Module, data: Any, runtime: Runtime, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
        """After testing: predictions.png, the same 8 test images for every run (image | truth | prediction).

        Returns the entries it adds to summary.json (none for this task).
        """
        test: TensorSplit = data.test
        count = min(PREDICTION_IMAGES, len(test))
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(PREDICTION_SEED))
        chosen = test.subset(sorted(order[:count].tolist()))
        predicted = self.predict(model, chosen.images, runtime)
        rows, wandb_images = [], []
        labels = dict(enumerate(self.class_names))
        for image, truth, guess, name in zip(chosen.images, chosen.targets, predicted, chosen.names):
            picture = to_pil(image)
            rows.append([picture, overlay(picture, truth), overlay(picture, guess)])
            wandb_images.append(
                tracker.image(
                    picture,
                    caption=name,
                    masks={
                        "ground_truth": {"mask_data": truth.numpy(), "class_labels": labels},
                        "prediction": {"mask_data": guess.numpy(), "class_labels": labels},
                    },
                )
            )
        grid = captioned_grid(rows, ["image", "ground truth", "prediction"], [[n, "", ""] for n in chosen.names])
        atomic_save_image(grid, run_dir / "predictions.png")
        if wandb_images and wandb_images[0] is not None:
            tracker.log({"test/predictions": wandb_images})
        return {}
