"""The UNet task: Oxford-IIIT Pet trimap segmentation, trained with BCE or Dice, scored on common metrics.

Training batches go through the `augment` config's `PairAugment` (s18exp/augment.py), at the side that
`trainer.size_schedule` gives each epoch (s18exp/size_schedule.py). Validation scores
the resized masks at training resolution (cheap, and compared only with itself, epoch to epoch); the test
split is scored at each image's original resolution, with the `eval.tta` and `eval.tta_scales` test-time
augmentation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from s18exp.data import Batches, TensorSplit
from s18exp.errors import UserError, instantiate
from s18exp.distributed import all_reduce_sum
from s18exp.data.pets import CLASS_SCHEMES, IMAGENET_MEAN, IMAGENET_STD
from s18exp.atomic_files import atomic_save_image
from s18exp.runtime import Runtime
from s18exp.metrics import ConfusionMatrix, pair_counts, segmentation_scores
from s18exp.pictures import LEGEND_HEIGHT, TITLE_HEIGHT, captioned_grid, overlay, titled, to_pil, with_legend
from s18exp.report.spec import Column, Curve, CurvePanel, ItemMetric, TaskSpec
from s18exp.tasks import TestResult

if TYPE_CHECKING:
    from s18exp.augment import PairAugment
    from s18exp.tracking import Tracker

PREDICTIONS_FILE = "predictions.png"
PREDICTIONS_MEDIA = "test/predictions"  # the same pictures in W&B, with the masks as overlays
PREDICTION_IMAGES = 8
PREDICTION_SEED = 0  # not the run's seed: every run shows the same test images
PREDICTION_TILE = 192  # pixels: smaller tiles (64 or 128 px runs) are enlarged to this
PREDICTION_TEXT = 13  # font size of the captions and legend; the title is 2 larger
TTA_MODES = ("none", "flip")


def tta_mode(value: object, key: str = "eval.tta") -> str:
    """`value` when it names a test-time augmentation, else a UserError naming `key`."""
    if value not in TTA_MODES:
        raise UserError(f"{key}={value!r} is not one of {'|'.join(TTA_MODES)}; e.g. {key}=flip")
    return str(value)


def tta_scales(value: object, key: str = "eval.tta_scales") -> tuple[float, ...]:
    """`value` (a list, or a comma-separated string from a command line, bracketed as Hydra writes lists or not)
    as positive, distinct scale factors, else a UserError naming `key`."""
    if isinstance(value, str):
        text = value.strip()
        items: object = (text[1:-1] if text.startswith("[") and text.endswith("]") else text).split(",")
    else:
        items = value
    try:
        scales = tuple(float(item) for item in items)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        scales = ()
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales) or len(set(scales)) != len(scales):
        raise UserError(f"{key}={value!r} must list distinct positive resize factors; e.g. {key}=[0.75,1,1.25]")
    return scales


def view_size(size: int, scale: float, multiple: int) -> int:
    """`size * scale` rounded to the nearest multiple of `multiple` (the model's 2**depth), at least one."""
    return max(multiple, round(size * scale / multiple) * multiple)


def scales_text(scales: tuple[float, ...]) -> str:
    return "scales " + ", ".join(f"{s:g}" for s in scales)


def upsampled_classes(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class indices (H, W) at `size` from one image's logits (C, h, w): the logits are resized bilinearly
    before the argmax, so that mask edges follow the image rather than a blocky upscaled label map."""
    resized = F.interpolate(logits[None].float().contiguous(), size=tuple(size), mode="bilinear", align_corners=False)
    return class_argmax(resized[0])


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """`scores.argmax(0)` for (C, H, W) scores, the first class on ties as there, but one elementwise pass per
    class: on a CPU, argmax along the strided first dim of a full-size image takes several times longer."""
    best = scores[0]
    index = torch.zeros(scores.shape[1:], dtype=torch.long, device=scores.device)
    for c in range(1, len(scores)):
        better = scores[c] > best
        best = torch.where(better, scores[c], best)
        index.masked_fill_(better, c)
    return index


def predictions_title(run_name: str, scores: dict[str, float] | None, tested: int, shown: int) -> str:
    """The title of predictions.png: the run, its test mIoU when known, and how many test images it shows."""
    score = f": test mIoU {scores['miou']:.3f}" if scores and "miou" in scores else ""
    return f"{run_name}{score} ({tested} test images; {shown} shown)"


class SegmentationTask:
    """The UNet's data, model, training loss and scoring.

    A config without `augment` (`~augment` on the command line, or a checkpoint's config from before
    augmentation was configurable) trains without augmentation; one without `eval.tta` tests with `flip`, one
    without `eval.tta_scales` at the training resolution only. The classes are those of `data.classes`; a
    checkpoint's `class_names` must be the same.
    """

    name = "unet"
    monitor = "miou"
    monitor_mode = "max"
    combo_keys = ("encoder", "decoder", "loss")
    shown_scores = ("test/",)

    def __init__(self, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        if cfg.data.name != "pets":
            raise UserError(f"data={cfg.data.name} has no segmentation masks; task=unet takes data=pets")
        self.cfg = cfg
        self.criterion: nn.Module = instantiate(cfg.loss.criterion)
        if cfg.data.classes not in CLASS_SCHEMES:
            raise UserError(f"data.classes={cfg.data.classes!r} is unknown; use one of {'|'.join(CLASS_SCHEMES)}")
        self.class_names = CLASS_SCHEMES[cfg.data.classes][0]
        if class_names is not None and list(class_names) != self.class_names:
            raise UserError(
                f"the checkpoint's classes {list(class_names)} differ from data.classes={cfg.data.classes} ({self.class_names}); "
                "the file is damaged or edited"
            )
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        from s18exp.augment import PairAugment  # training code: the commands that only predict never load it

        augment = cfg.get("augment")
        self.augmenter: PairAugment = PairAugment() if augment is None else instantiate(augment)
        self.tta = tta_mode(OmegaConf.select(cfg, "eval.tta", default="flip"))
        self.tta_scales = tta_scales(OmegaConf.select(cfg, "eval.tta_scales", default=[1.0]))
        self.size_multiple = 2 ** int(cfg.model.depth)

    @staticmethod
    def check_config(cfg: DictConfig) -> None:
        """The convolution block (`model.block`), and a crop (`augment.crop_size`) that the model's depth divides
        and that fits in the image."""
        from s18exp.augment import check_crop_size
        from s18exp.blocks import CONV_BLOCKS

        block = cfg.model.get("block", next(iter(CONV_BLOCKS)))  # a checkpoint from before the option holds none
        if block not in CONV_BLOCKS:
            raise UserError(f"model.block={block!r} is not one of {'|'.join(CONV_BLOCKS)}; e.g. model.block={next(iter(CONV_BLOCKS))}")
        crop, step = OmegaConf.select(cfg, "augment.crop_size"), 2**cfg.model.depth
        check_crop_size(crop)
        if crop is not None and (crop % step or crop > cfg.data.image_size):
            fit = min(cfg.data.image_size, max(step, round(crop / step) * step))
            raise UserError(
                f"augment.crop_size={crop} must divide by 2**model.depth={step} and be at most "
                f"data.image_size={cfg.data.image_size}; use augment.crop_size={fit}, or null for whole images"
            )

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

    def example_input(self, image_size: int) -> tuple[torch.Tensor, ...]:
        """One zero image of `image_size`, a batch of one."""
        return (torch.zeros(1, int(self.cfg.model.in_channels), image_size, image_size),)

    def report_spec(self) -> TaskSpec:
        """The report's section of UNet runs: columns, curves and bars of the segmentation scores (one IoU per
        class), and predictions.png side by side."""
        classes = tuple(self.class_names)
        return TaskSpec(
            name=self.name,
            title="UNet segmentation (Oxford-IIIT Pet trimaps)",
            identity=self.combo_keys,
            required=f"test/{self.monitor}",
            columns=(
                Column("test/miou", "test mIoU", "max"),
                *(Column(f"test/iou_{c}", f"IoU {c}", "max") for c in classes),
                Column("test/dice", "Dice", "max"),
                Column("test/pixel_acc", "pixel acc", "max"),
            ),
            curve_panels=(
                CurvePanel("validation mIoU", (Curve("val/miou", "val mIoU"),)),
                CurvePanel("loss (train solid, val dashed; log scale)", (Curve("train/loss", "train", "-"), Curve("val/loss", "val", "--")), log_y=True),
            ),
            bars_title="test IoU per class",
            bar_keys=tuple((f"test/iou_{c}", c) for c in classes),
            picture=PREDICTIONS_FILE,
            picture_columns=3,  # image | ground truth | prediction (finalize)
            picture_shared=2,
            picture_scores=(("test/miou", "mIoU"),),
            wandb_lines=(("validation mIoU", ("val/miou",)), ("train and validation loss", ("train/loss", "val/loss"))),
            wandb_bars=(
                ("test mIoU", ("test/miou",)),
                ("test IoU per class", tuple(f"test/iou_{c}" for c in classes)),
                ("test Dice and pixel accuracy", ("test/dice", "test/pixel_acc")),
            ),
            wandb_media=(PREDICTIONS_MEDIA,),
            notes=(
                "Losses of different loss functions (BCE vs Dice) are on different scales and cannot be compared; "
                "the test metrics come from the same confusion matrix for every run and can.",
            ),
            time_curve=Curve("val/miou", "validation mIoU"),
            picture_legend=classes,
            item_metrics=(ItemMetric("test/miou", "test mIoU", "max", "miou", "confusion"),),
            settings=(
                ("data", "data.name"), ("image size", "data.image_size"), ("classes", "data.classes"),
                ("epochs", "trainer.max_epochs"), ("batch", "trainer.batch_size"), ("lr", "trainer.lr"),
                ("width", "model.width"), ("depth", "model.depth"), ("block", "model.block"),
                ("limit train", "data.limit_train"), ("limit val", "data.limit_val"), ("limit test", "data.limit_test"),
                ("augment", "augment.name"), ("train crop", "augment.crop_size"), ("train start size", "trainer.size_schedule.start_size"),
                ("weight EMA", "trainer.ema_decay"),
                ("test weights", "eval.weights"), ("test TTA", "eval.tta"), ("test scales", "eval.tta_scales"),
            ),
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> ImageNet-normalised floats, in the images' memory format (NCHW from `Batches`: a
        channels_last model turns its first convolution's output channels_last; a plain one stays NCHW)."""
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float() / 255 - mean) / std

    def training_loss(
        self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, progress: float = 1.0, size: int | None = None
    ) -> torch.Tensor:
        """The criterion on the batch's augmented views of side `size` (None: the images' own); the same at every
        point of training, whatever `progress`."""
        images, masks = self.augmenter(images, masks, size)
        return self.criterion(model(self.normalize(images)), masks)

    def logits(
        self, model: nn.Module, images: torch.Tensor, runtime: Runtime, tta: str = "none", scales: tuple[float, ...] = (1.0,)
    ) -> torch.Tensor:
        """float32 logits (N, C, H, W) of uint8 images on the device, at the images' resolution.

        tta=flip: the mean of the logits of each image and of its mirror image, mirrored back; both go
        through the model as one batch of 2N (the model must be in eval mode, so that samples stay independent).
        scales: one view per factor, the batch resized bilinearly (antialiased when it shrinks) to the nearest
        multiple of 2**depth, its logits resized back; the result is the mean over every view.
        """
        batch = self.normalize(images)
        height, width = batch.shape[-2:]
        total = torch.zeros((), device=batch.device)
        for scale in scales:
            size = (view_size(height, scale, self.size_multiple), view_size(width, scale, self.size_multiple))
            view = batch if size == (height, width) else F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
            logits = self.view_logits(model, view, runtime, tta)
            if size != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            total = total + logits
        return total / len(scales)

    def view_logits(self, model: nn.Module, batch: torch.Tensor, runtime: Runtime, tta: str) -> torch.Tensor:
        """float32 logits of a normalised batch, averaged with its mirror image's when tta=flip."""
        if tta == "flip":
            batch = torch.cat([batch, batch.flip(-1)])
        with runtime.autocast():
            logits = model(batch).float()
        if tta == "flip":
            plain, mirrored = logits.chunk(2)
            logits = (plain + mirrored.flip(-1)) / 2
        return logits

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Batches, runtime: Runtime) -> dict[str, float]:
        """Mean loss and the confusion-matrix scores over the whole split, at training resolution against the
        resized masks, without test-time augmentation: the fast check of every epoch (see `test`)."""
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
    def test(self, model: nn.Module, batches: Batches, runtime: Runtime) -> TestResult:
        """The scores of `evaluate`, but at each image's original resolution and with `eval.tta` and
        `eval.tta_scales`, and each image's own confusion counts.

        Logits at training resolution (averaged over the views of `logits`) are resized bilinearly
        to the size of the image's original mask (`full_targets` of the split), then the argmax is counted
        against that mask, image by image; the split's confusion matrix is the sum of the images'. The loss
        stays the criterion's at training resolution, on the same logits. The items (test_items.npz) are
        `names` (N,), `confusion` (N, C, C) int64 of (true, predicted) counts, and `class_names` (C,).
        """
        model.eval()
        split = batches.split
        classes = len(self.class_names)
        per_image = torch.zeros(len(split), classes * classes, dtype=torch.int64, device=runtime.device)
        loss_sum = torch.zeros((), device=runtime.device)
        for index in batches.index_batches():
            images, masks = runtime.to_device(split.images[index], split.targets[index])
            logits = self.logits(model, images, runtime, self.tta, self.tta_scales)
            loss_sum += self.criterion(logits, masks) * len(images)
            for k, image_logits in zip(index.tolist(), logits):
                full = split.full_targets[k].to(runtime.device)
                per_image[k] = pair_counts(upsampled_classes(image_logits, full.shape), full, classes)
        per_image = all_reduce_sum(per_image, runtime.dist).cpu()  # each rank filled the rows of its images
        loss_sum = all_reduce_sum(loss_sum, runtime.dist)
        scores = segmentation_scores(per_image.sum(0).view(classes, classes), self.class_names)
        items = {
            "names": np.array(split.names, dtype=str),
            "confusion": per_image.view(-1, classes, classes).numpy(),
            "class_names": np.array(self.class_names, dtype=str),
        }
        return TestResult({"loss": (loss_sum / len(split)).item(), **scores}, items)

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
        """uint8 images (N, 3, H, W) -> predicted class indices (N, H, W) on the CPU, with the test's views."""
        model.eval()
        return self.logits(model, images.to(runtime.device), runtime, self.tta, self.tta_scales).argmax(1).cpu()

    def finalize(
        self, model: nn.Module, data: Any, runtime: Runtime, run_dir: Path, tracker: Tracker, scores: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """After testing: predictions.png, the same 8 test images for every run (image | truth | prediction),
        under a title that names the run and its test mIoU (`scores`, the test split's), with the colour legend.
        Tiles are enlarged to PREDICTION_TILE pixels, so that small images leave room for readable names.

        Returns the entries it adds to summary.json: `test_scoring`, how the test scores were computed.
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
        grid = captioned_grid(
            rows, ["image", "ground truth", "prediction"], [[n, "", ""] for n in chosen.names], caption_height=PREDICTION_TEXT + 4,
            min_tile=PREDICTION_TILE,
        )
        framed = titled(grid, predictions_title(self.cfg.run_name, scores, len(test), count), size=PREDICTION_TEXT + 2)
        picture = with_legend(framed, self.class_names, size=PREDICTION_TEXT)
        bands = {TITLE_HEIGHT: str(framed.height - grid.height), LEGEND_HEIGHT: str(picture.height - framed.height)}
        atomic_save_image(picture, run_dir / PREDICTIONS_FILE, text=bands)
        if wandb_images and wandb_images[0] is not None:
            tracker.log({PREDICTIONS_MEDIA: wandb_images})
        return {"test_scoring": f"original resolution, tta={self.tta}, {scales_text(self.tta_scales)}; test/loss at training resolution"}
