"""What the report shows for each task: identity fields, table columns, curves, bars, pictures, W&B keys.

One place per fact: every metric key, file name and W&B media key the report reads is named here.
A task the report does not know (a future one) still gets a table of its numeric `test/*` summary keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Column:
    key: str  # key in summary.json
    label: str
    better: str | None  # "max", "min" or None (not ranked)
    kind: str = "score"  # score (3 decimals) | epoch | seconds | count


@dataclass(frozen=True)
class Curve:
    key: str  # key in metrics.jsonl
    label: str
    style: str = "-"  # matplotlib line style


@dataclass(frozen=True)
class CurvePanel:
    title: str
    curves: tuple[Curve, ...]
    log_y: bool = False


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    identity: tuple[str, ...]  # the fields that make a combo (one table row)
    required: str  # a summary key without which a run is not complete
    columns: tuple[Column, ...]
    curve_panels: tuple[CurvePanel, ...]
    bars_title: str
    bar_keys: tuple[tuple[str, str], ...]  # (summary key, label) of the bar chart
    picture: str  # the run's picture shown side by side, one seed per combo
    picture_columns: int  # columns of equal width in that picture (0: show it whole)
    picture_shared: int  # leading columns that are the same for every run (shown once); the rest per combo
    picture_scores: tuple[tuple[str, str], ...]  # (summary key, short label) written above each picture
    wandb_lines: tuple[tuple[str, tuple[str, ...]], ...]  # (title, metric keys) of W&B line plots
    wandb_bars: tuple[tuple[str, tuple[str, ...]], ...]  # (title, summary keys) of W&B bar plots
    wandb_media: tuple[str, ...]  # keys of logged images
    notes: tuple[str, ...] = field(default_factory=tuple)
    time_curve: Curve | None = None  # the metric drawn against cumulative training seconds (time to quality)
    # Classes whose colours the picture's legend names (s18exp.pictures.with_legend); the report takes it off
    # each run's picture before splitting it into columns and draws it once under the figure.
    picture_legend: tuple[str, ...] = ()


SEGMENTATION_CLASSES = ("pet", "background", "border")
PREDICTIONS_PNG = "predictions.png"
WRONG_LABELS_PNG = "wrong_labels.png"

COMMON_TAIL = (
    Column("best_epoch", "best epoch", None, "epoch"),
    Column("train_seconds", "train time (s)", "min", "seconds"),
    Column("params", "params", None, "count"),
)

UNET = TaskSpec(
    name="unet",
    title="UNet segmentation (Oxford-IIIT Pet trimaps)",
    identity=("encoder", "decoder", "loss"),
    required="test/miou",
    columns=(
        Column("test/miou", "test mIoU", "max"),
        *(Column(f"test/iou_{c}", f"IoU {c}", "max") for c in SEGMENTATION_CLASSES),
        Column("test/dice", "Dice", "max"),
        Column("test/pixel_acc", "pixel acc", "max"),
        *COMMON_TAIL,
    ),
    curve_panels=(
        CurvePanel("validation mIoU", (Curve("val/miou", "val mIoU"),)),
        CurvePanel("loss (train solid, val dashed; log scale)", (Curve("train/loss", "train", "-"), Curve("val/loss", "val", "--")), log_y=True),
    ),
    bars_title="test IoU per class",
    bar_keys=tuple((f"test/iou_{c}", c) for c in SEGMENTATION_CLASSES),
    picture=PREDICTIONS_PNG,
    picture_columns=3,  # image | ground truth | prediction (s18exp.tasks.segmentation)
    picture_shared=2,
    picture_scores=(("test/miou", "mIoU"),),
    wandb_lines=(("validation mIoU", ("val/miou",)), ("train and validation loss", ("train/loss", "val/loss"))),
    wandb_bars=(
        ("test mIoU", ("test/miou",)),
        ("test IoU per class", tuple(f"test/iou_{c}" for c in SEGMENTATION_CLASSES)),
        ("test Dice and pixel accuracy", ("test/dice", "test/pixel_acc")),
    ),
    wandb_media=("test/predictions",),
    notes=(
        "Losses of different loss functions (BCE vs Dice) are on different scales and cannot be compared; "
        "the test metrics come from the same confusion matrix for every run and can.",
    ),
    time_curve=Curve("val/miou", "validation mIoU"),
    picture_legend=SEGMENTATION_CLASSES,
)

VAE = TaskSpec(
    name="vae",
    title="Label-conditioned VAE",
    identity=("dataset", "condition", "encoder", "decoder", "loss"),  # loss: bce or mse likelihood
    required="test/elbo",
    columns=(
        Column("test/elbo", "test -ELBO (nats)", "min"),
        Column("test/recon", "recon (nats)", "min"),
        Column("test/kl", "KL (nats)", None),
        Column("test/label_follow_acc", "label follow", "max"),
        Column("test/input_keep_acc", "input keep", None),
        Column("judge/test_acc", "judge acc", None),
        *COMMON_TAIL,
    ),
    curve_panels=(
        CurvePanel("negative ELBO (train solid, val dashed)", (Curve("train/loss", "train", "-"), Curve("val/elbo", "val", "--"))),
        CurvePanel("validation recon (solid) and KL (dashed), nats; log scale", (Curve("val/recon", "recon", "-"), Curve("val/kl", "KL", "--")), log_y=True),
    ),
    bars_title="wrong-label scores (judge classifier)",
    bar_keys=(("test/label_follow_acc", "label follow"), ("test/input_keep_acc", "input keep")),
    picture=WRONG_LABELS_PNG,
    picture_columns=2,  # input grid | output grid (s18exp.tasks.vae.side_by_side)
    picture_shared=1,
    picture_scores=(("test/label_follow_acc", "follow"), ("test/input_keep_acc", "keep")),
    wandb_lines=(("train loss and validation -ELBO", ("train/loss", "val/elbo")), ("validation recon and KL", ("val/recon", "val/kl"))),
    wandb_bars=(
        ("test -ELBO", ("test/elbo",)),
        ("wrong-label scores", ("test/label_follow_acc", "test/input_keep_acc", "judge/test_acc")),
    ),
    wandb_media=("test/wrong_labels", "test/reconstructions", "test/samples"),
    notes=(
        "label follow: share of wrong-label outputs that the judge classifies as the GIVEN label; "
        "input keep: share it classifies as the input's TRUE label (not ranked: a diagnostic).",
    ),
)

TASKS = {spec.name: spec for spec in (UNET, VAE)}


def spec_for(task: str) -> TaskSpec:
    """The known spec of `task`, else a generic one (rows by combo, columns filled in from the summaries)."""
    if task in TASKS:
        return TASKS[task]
    return TaskSpec(
        name=task, title=f"task {task}", identity=("combo",), required="", columns=COMMON_TAIL,
        curve_panels=(CurvePanel("loss (train solid, val dashed)", (Curve("train/loss", "train"), Curve("val/loss", "val", "--"))),),
        bars_title="", bar_keys=(), picture="", picture_columns=0, picture_shared=0, picture_scores=(), wandb_lines=(("train and validation loss", ("train/loss", "val/loss")),),
        wandb_bars=(), wandb_media=(),
    )
