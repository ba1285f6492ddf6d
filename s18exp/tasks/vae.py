"""The VAE task: a label-conditioned VAE trained on the negative ELBO, then fed test images with WRONG labels.

Metrics, in nats per image over a whole split: `elbo` (the negative ELBO, recon + kl, lower is better;
`task.beta` weighs the KL in the training loss only), `recon` (-log p(x|z) for one z drawn from q(z|x, y))
and `kl`. At the end, `finalize` draws the pictures (wrong_labels.png, label_sweep.png,
reconstructions.png, samples.png), has the whole test split's outputs read by the panel of independent
readers (s18exp/readers/) and by the judge, and writes each item's outcome to test_items.npz:

- `test/label_follow_acc`: each test image fed with a wrong label; the share of outputs read as that label;
- `test/input_keep_acc`: the share of those outputs read as the input's true label instead;
- `test/recon_read_acc`: each test image fed with its TRUE label; the share of reconstructions read as it.
  A ceiling for label follow set by how legible the decoder's outputs are at all;
- `test/sample_follow_acc`: z ~ N(0, I) decoded with label k, as many samples as test images, the labels
  cycling through the classes; the share read as k. The ceiling of the label alone, with no input to keep.

Each is the panel's minimum over its readers, with their mean and each reader's beside it, and the judge's
own reading under `judge/` (s18exp/tasks/vae_scores.py).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw
from torch import nn

from s18exp import test_items
from s18exp.data import Batches, TensorSplit
from s18exp.errors import UserError, instantiate
from s18exp.atomic_files import atomic_save_image
from s18exp.distributed import Dist, all_reduce_sum
from s18exp.runtime import Runtime, unwrap
from s18exp.losses import cross_entropy
from s18exp.models.guides import DrawnAugment
from s18exp.models.judge import classify
from s18exp.models.vae import BernoulliLikelihood, GaussianLikelihood, check_condition, gaussian_kl
from s18exp.readers.panel import checked_readers, panel_for
from s18exp.tasks.vae_scores import JUDGE, item_outcomes, scores_from_items
from s18exp.pictures import LEGEND_HEIGHT, TITLE_HEIGHT, captioned_grid, font, side_by_side, titled, to_pil
from s18exp.report.spec import Column, Curve, CurvePanel, ItemMetric, TaskSpec
from s18exp.tasks import TestResult

if TYPE_CHECKING:
    from s18exp.tracking import Tracker

PICTURE_SEED = 0  # not the run's seed: every run shows the same test images with the same wrong labels
EVAL_SEED = 0  # the z drawn for the recon term of evaluate(): the same for every epoch and run
WRONG_LABEL_TILES = 25  # 5 x 5
WRONG_LABEL_COLUMNS = 5
SAMPLES_PER_CLASS = 8
MAX_PICTURE_CLASSES = 20  # rows of samples.png, columns of reconstructions.png
TILE_PIXELS = 128  # tiles are enlarged (nearest) to about this size, so that captions fit under them
CAPTION_HEIGHT = 14  # captions in a 10-pixel font: "automobile → airplane" fits under a 128-pixel tile
SWEEP_ROWS = 10  # label_sweep.png: test inputs, one per class while classes last
FILES = {
    "wrong_labels": "wrong_labels.png",
    "label_sweep": "label_sweep.png",
    "reconstructions": "reconstructions.png",
    "samples": "samples.png",
}
MEDIA = {picture: f"test/{picture}" for picture in FILES}  # the same pictures in W&B


def likelihood_for(loss: DictConfig) -> nn.Module:
    """The reconstruction term that `loss=` names; a UserError for losses that are not likelihoods."""
    if loss.name == "bce":
        return BernoulliLikelihood()
    if loss.name == "mse":
        return GaussianLikelihood(loss.get("sigma", 0.1))
    raise UserError(
        f"loss={loss.name} cannot train a VAE; task=vae takes loss=bce (Bernoulli pixels) or loss=mse (Gaussian pixels)"
    )


def other_labels(true: torch.Tensor, num_classes: int, generator: torch.Generator | None) -> torch.Tensor:
    """A label for each entry of `true`, uniform over the num_classes - 1 classes other than the true one
    (drawn from `generator`, or torch's global one when None)."""
    if num_classes < 2:
        raise UserError("a wrong label needs at least 2 classes; the dataset has fewer")
    shift = torch.randint(1, num_classes, true.shape, generator=generator)  # drawn on the CPU: no device sync
    return (true.long() + shift.to(true.device)) % num_classes


def non_negative(cfg: DictConfig, key: str, example: str) -> float:
    """The number at `key` (0 when absent); anything but a finite number >= 0 is a one-line UserError."""
    value = OmegaConf.select(cfg, key, default=0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise UserError(f"{key}={value!r} must be a finite number >= 0; e.g. {example}")
    return float(value)


def spanning_selection(labels: torch.Tensor, count: int, seed: int) -> list[int]:
    """`count` indices that cycle through the classes present (class 0, 1, ..., then again), each class's
    images taken in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    by_class = [order[labels[order] == c].tolist() for c in sorted(set(labels.tolist()))]
    chosen: list[int] = []
    for round_ in range(max((len(v) for v in by_class), default=0)):
        for members in by_class:
            if round_ < len(members) and len(chosen) < count:
                chosen.append(members[round_])
    return chosen


def arrow() -> str:
    """"→" where the caption font draws it, else "->" (Pillow's own default font has no arrow glyph)."""
    text_font = font(CAPTION_HEIGHT - 4)
    drawn = []
    for text in ("\u2192", "\ue000"):  # the arrow, and a private-use code point that no font draws
        picture = Image.new("L", (24, 24))
        ImageDraw.Draw(picture).text((2, 2), text, font=text_font, fill=255)
        drawn.append(picture.tobytes())
    return "\u2192" if drawn[0] != drawn[1] else "->"


def to_pixels(mean: torch.Tensor) -> torch.Tensor:
    """Decoder means in [0, 1] -> uint8 images on the CPU."""
    return (mean.float() * 255).round().clamp(0, 255).to(torch.uint8).cpu()


class VAETask:
    name = "vae"
    monitor = "elbo"
    monitor_mode = "min"
    combo_keys = ("dataset", "condition", "encoder", "decoder", "loss")  # loss: the bce or mse likelihood
    # Beside the test split's scores: the judge's and the panel's readers' own (their accuracy on real test
    # images, their training time).
    shown_scores = ("test/", "judge/", "panel/")

    def __init__(self, cfg: DictConfig, class_names: list[str] | None = None) -> None:
        self.cfg = cfg
        self.likelihood = likelihood_for(cfg.loss)
        check_condition(cfg.model.condition)
        if not cfg.task.beta >= 0:
            raise UserError(f"task.beta={cfg.task.beta} must be >= 0; e.g. task.beta=1")
        data_class = get_class(cfg.data._target_)
        if not hasattr(data_class, "classes_for"):
            raise UserError(f"data={cfg.data.name} holds no class labels; task=vae takes data=mnist|cifar10|imagefolder")
        # Checks an image folder's layout now, before any work, and fixes the class count for build_model.
        self.class_names = list(class_names) if class_names is not None else data_class.classes_for(cfg.data)
        if len(self.class_names) < 2:
            raise UserError(f"data={cfg.data.name} has {len(self.class_names)} class; a wrong label needs at least 2 classes")
        self.beta = float(cfg.task.beta)
        self.beta_start = float(cfg.task.get("beta_start", self.beta))
        self.beta_warmdown = float(cfg.task.get("beta_warmdown", 0.0))
        if not (self.beta_start >= 0 and 0 <= self.beta_warmdown <= 1):
            raise UserError(
                f"task.beta_start={self.beta_start} / task.beta_warmdown={self.beta_warmdown} are out of range; "
                f"beta_start >= 0 and beta_warmdown a fraction of training in [0, 1], e.g. task.beta_start=8 task.beta_warmdown=0.3"
            )
        self.prior_z_share = float(cfg.task.get("prior_z_share", 0.0))
        if not 0 <= self.prior_z_share <= 1:
            raise UserError(f"task.prior_z_share={self.prior_z_share} is not a probability; e.g. task.prior_z_share=0.25")
        noise = float(cfg.task.get("encoder_label_noise", 0.0))
        if not 0 <= noise <= 1:
            raise UserError(f"task.encoder_label_noise={noise} is not a probability; e.g. task.encoder_label_noise=0.5")
        # Only `both` feeds the label to the encoder; elsewhere there is no encoder label to make noisy.
        self.encoder_label_noise = noise if cfg.model.condition == "both" else 0.0
        self.guide_weight = non_negative(cfg, "task.guide_weight", "task.guide_weight=200")
        self.guide_blur = non_negative(cfg, "task.guide_blur", "task.guide_blur=2")
        # Configs of checkpoints from before guide ensembles, drawn-image augmentation and the panel lack
        # these keys: one guide of the judge's architecture, no augmentation, no panel to score with.
        self.guide_arches = list(OmegaConf.select(cfg, "task.guides", default=None) or ["judge"])
        augment = OmegaConf.select(cfg, "task.guide_augment", default=None)
        self.drawn_augment = DrawnAugment(**(OmegaConf.to_container(augment) if augment is not None else {}))
        readers = OmegaConf.select(cfg, "task.panel.readers", default=None)
        self.panel_readers = checked_readers(OmegaConf.to_container(readers, resolve=True)) if readers is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_data(self, **overrides: Any) -> Any:
        data = instantiate(self.cfg.data, cache_dir=self.cfg.paths.cache_dir, **overrides)
        if list(data.class_names) != self.class_names:
            raise UserError(f"the data's classes {data.class_names} differ from the model's {self.class_names}")
        return data

    def build_model(self) -> nn.Module:
        return instantiate(
            self.cfg.model,
            num_classes=self.num_classes,
            image_size=self.cfg.data.image_size,
            downsample=instantiate(self.cfg.encoder.downsample),
            upsample=instantiate(self.cfg.decoder.upsample),
            # the guide classifiers exist only when their term is on: no unused weights otherwise
            guide_width=self.cfg.model.get("guide_width", 0) if self.guide_weight > 0 else 0,
            guide_arches=self.guide_arches,
            drawn_augment=self.drawn_augment if self.drawn_augment.active else None,
        )

    @staticmethod
    def check_config(cfg: DictConfig) -> None:
        """None beyond s18exp.config.validate's: the VAE's own settings are checked as the task is built."""

    def describe(self) -> dict[str, Any]:
        """What identifies this run's combo in summary.json, W&B tags and the report."""
        return {
            "task": self.name,
            "dataset": self.cfg.data.name,
            "condition": self.cfg.model.condition,
            "encoder": self.cfg.encoder.name,
            "decoder": self.cfg.decoder.name,
            "loss": self.cfg.loss.name,
            "seed": self.cfg.seed,
            "combo": self.cfg.combo,
        }

    def example_input(self, image_size: int) -> tuple[torch.Tensor, ...]:
        """One zero image of `image_size` and its label, class 0: a batch of one."""
        return torch.zeros(1, int(self.cfg.model.in_channels), image_size, image_size), torch.zeros(1, dtype=torch.long)

    def report_spec(self) -> TaskSpec:
        """The report's section of VAE runs: the ELBO's terms, the wrong-label scores of the panel (its minimum,
        mean and each reader's) beside the judge's, and wrong_labels.png side by side."""
        panel = list(self.panel_readers or {})
        return TaskSpec(
            name=self.name,
            title="Label-conditioned VAE",
            identity=self.combo_keys,
            required=f"test/{self.monitor}",
            columns=(
                Column("test/elbo", "test -ELBO (nats)", "min"),
                Column("test/recon", "recon (nats)", "min"),
                Column("test/kl", "KL (nats)", None),
                Column("test/label_follow_acc", "label follow (panel min)", "max"),
                Column("test/label_follow_mean", "label follow (panel mean)", "max"),
                *(Column(f"test/label_follow/{name}", f"label follow ({name})", None) for name in panel),
                Column("judge/label_follow_acc", "label follow (judge)", None),
                Column("test/input_keep_acc", "input keep (panel min)", None),
                Column("test/recon_read_acc", "recon read right (panel min)", "max"),
                Column("test/sample_follow_acc", "samples follow (panel min)", "max"),
                Column("judge/test_acc", "judge acc", None),
            ),
            curve_panels=(
                CurvePanel("train loss (solid), val negative ELBO (dashed)", (Curve("train/loss", "train", "-"), Curve("val/elbo", "val", "--"))),
                CurvePanel("validation recon (solid) and KL (dashed), nats; log scale", (Curve("val/recon", "recon", "-"), Curve("val/kl", "KL", "--")), log_y=True),
            ),
            bars_title="wrong-label scores (panel minimum, judge)",
            bar_keys=(
                ("test/label_follow_acc", "label follow (panel min)"),
                ("judge/label_follow_acc", "label follow (judge)"),
                ("test/input_keep_acc", "input keep (panel min)"),
            ),
            item_metrics=(
                *((ItemMetric("test/label_follow_acc", "label follow (panel min)", "max", "min_mean", "follow", tuple(panel), "readers"),) if panel else ()),
                ItemMetric("judge/label_follow_acc", "label follow (judge)", "max", "mean", "follow", (JUDGE,), "readers"),
                ItemMetric("test/elbo", "test -ELBO (nats)", "min", "mean", "elbo"),
            ),
            picture=FILES["wrong_labels"],
            picture_columns=2,  # input grid | output grid (wrong_labels_figure)
            picture_shared=1,
            picture_scores=(("test/label_follow_acc", "follow"), ("test/input_keep_acc", "keep")),
            wandb_lines=(("train loss and validation -ELBO", ("train/loss", "val/elbo")), ("validation recon and KL", ("val/recon", "val/kl"))),
            wandb_bars=(
                ("test -ELBO", ("test/elbo",)),
                ("wrong-label scores", ("test/label_follow_acc", "test/label_follow_mean", "judge/label_follow_acc", "test/input_keep_acc")),
                ("label follow by reader", tuple(f"test/label_follow/{name}" for name in panel) + ("judge/label_follow_acc",)),
            ),
            wandb_media=(MEDIA["wrong_labels"], MEDIA["reconstructions"], MEDIA["samples"]),
            notes=(
                "label follow: share of wrong-label outputs read as the GIVEN label; input keep: share read as the "
                "input's TRUE label (not ranked: a diagnostic). 'panel min' is the lowest reading among the independent "
                f"readers ({', '.join(panel) or 'none'}), 'panel mean' their mean; the judge shares its architecture "
                "with the guide that the VAE may train against, so its reading is shown for comparison only.",
            ),
            settings=(
                ("data", "data.name"), ("image size", "data.image_size"), ("epochs", "trainer.max_epochs"),
                ("batch", "trainer.batch_size"), ("lr", "trainer.lr"), ("width", "model.width"), ("depth", "model.depth"),
                ("latent", "model.latent_dim"), ("limit train", "data.limit_train"), ("limit val", "data.limit_val"),
                ("limit test", "data.limit_test"), ("weight EMA", "trainer.ema_decay"),
            ),
        )

    @staticmethod
    def to_input(images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> floats in [0, 1], channels_last: the encoder's input and the likelihood's target."""
        return (images.float() / 255).contiguous(memory_format=torch.channels_last)

    def beta_at(self, progress: float) -> float:
        """The KL weight at `progress` (0 at the first step, 1 at the end of training): `task.beta_start`
        falling linearly to `task.beta` over the first `task.beta_warmdown` of training, then `task.beta`."""
        if self.beta_warmdown <= 0 or progress >= self.beta_warmdown:
            return self.beta
        return self.beta_start + (self.beta - self.beta_start) * progress / self.beta_warmdown

    def encoder_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels the encoder trains with: each replaced by a uniformly random class with probability
        `task.encoder_label_noise` (drawn from torch's global generator, which checkpoints save)."""
        if self.encoder_label_noise <= 0:
            return labels
        noisy = torch.rand(len(labels)) < self.encoder_label_noise
        random = torch.randint(0, self.num_classes, (len(labels),))
        return torch.where(noisy.to(labels.device), random.to(labels.device), labels)

    def prior_rows(self, count: int, device: torch.device) -> torch.Tensor | None:
        """Which rows of a batch decode a z from the prior: each with probability `task.prior_z_share`
        (drawn from torch's global generator, which checkpoints save); None when the share is 0."""
        if self.prior_z_share <= 0:
            return None
        return (torch.rand(count) < self.prior_z_share).to(device)

    def training_loss(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, progress: float = 1.0, size: int | None = None
    ) -> torch.Tensor:
        """The negative ELBO with the KL weighted by `beta_at(progress)`, mean over the batch, in nats per image,
        at the images' own size (config validation refuses a `trainer.size_schedule` for the VAE, so the loop's
        `size` is always that size);
        the rows of `prior_rows` are decoded from a prior z (their reconstruction term then teaches the decoder
        to draw the label's class from any z). With the guides on (`task.guide_weight` > 0), plus each guide's
        cross-entropy on the real images (half blurred) and `guide_weight` x the guides' mean cross-entropy on
        each z decoded under a random wrong label, against that label (docs/vae.md, "The guide term")."""
        x = self.to_input(images)
        encoder_labels, prior_rows = self.encoder_labels(labels), self.prior_rows(len(x), x.device)
        guide_term = 0.0
        if getattr(unwrap(model), "guides", None) is None:  # build_model makes them only when guide_weight > 0
            logits, mu, logvar = model(x, labels, encoder_labels, prior_rows)
        else:
            from s18exp.judge_training import blur_half  # training code: `generate` never loads it

            given = other_labels(labels, self.num_classes, None)
            seen = blur_half(x, self.guide_blur, None)
            logits, mu, logvar, on_real, on_drawn = model(x, labels, encoder_labels, prior_rows, seen, given)
            guides = len(on_real)
            on_real_ce = guides * cross_entropy(on_real.flatten(0, 1), labels.repeat(guides))  # each guide's own
            on_drawn_ce = cross_entropy(on_drawn.flatten(0, 1), given.repeat(guides))  # the guides' mean
            guide_term = on_real_ce + self.guide_weight * on_drawn_ce
        return (self.likelihood(logits, x) + self.beta_at(progress) * gaussian_kl(mu, logvar)).mean() + guide_term

    @torch.no_grad()
    def item_terms(self, model: nn.Module, batches: Batches, runtime: Runtime) -> torch.Tensor:
        """(N, 2) float64 on the CPU: each item's reconstruction and KL terms in nats, for every item of the
        split (the items of other ranks are summed in from them)."""
        model = unwrap(model)
        model.eval()
        terms = torch.zeros(len(batches.split), 2, dtype=torch.float64, device=runtime.device)
        # One row of noise per item of the split, picked by the item's index: every item gets the same z
        # whatever the batch size and however many ranks share the split.
        noise_by_item = torch.randn(len(batches.split), model.latent_dim, generator=torch.Generator().manual_seed(EVAL_SEED))
        for index, (images, labels) in zip(batches.index_batches(), batches):
            images, labels = runtime.to_device(images, labels)
            x = self.to_input(images)
            with runtime.autocast():
                mu, logvar = model.encode(x, labels)
                mu, logvar = mu.float(), logvar.float()
                noise = noise_by_item[index].to(mu.device)
                logits = model.decode(mu + noise * (0.5 * logvar).exp(), labels)
            terms[index.to(terms.device)] = torch.stack([self.likelihood(logits, x), gaussian_kl(mu, logvar)], dim=1).double()
        return all_reduce_sum(terms, runtime.dist).cpu()

    def evaluate(self, model: nn.Module, batches: Batches, runtime: Runtime) -> dict[str, float]:
        """Negative ELBO (beta = 1), reconstruction and KL terms in nats per image over the whole split."""
        recon, kl = (self.item_terms(model, batches, runtime).sum(dim=0) / max(len(batches.split), 1)).tolist()
        return {"elbo": recon + kl, "recon": recon, "kl": kl}

    def test(self, model: nn.Module, batches: Batches, runtime: Runtime) -> TestResult:
        """The test split scored as validation scores a split (`evaluate`); the readers' scores come from
        `finalize`, which also replaces these three by the means of its per-item terms (the same values, summed
        in another order)."""
        return TestResult(self.evaluate(model, batches, runtime))

    @torch.no_grad()
    def outputs(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, runtime: Runtime, batch_size: int = 500) -> torch.Tensor:
        """uint8 images fed with `labels` -> the decoder's mean for z = mu, as uint8 images on the CPU."""
        model = unwrap(model)
        model.eval()
        result = []
        for start in range(0, len(images), batch_size):
            x = self.to_input(images[start : start + batch_size].to(runtime.device))
            y = labels[start : start + batch_size].to(runtime.device)
            with runtime.autocast():
                result.append(to_pixels(model.reconstruct(x, y)))
        return torch.cat(result) if result else images[:0].clone()

    @torch.no_grad()
    def decode_means(self, model: nn.Module, z: torch.Tensor, labels: torch.Tensor, runtime: Runtime, batch_size: int = 500) -> torch.Tensor:
        """The decoder's mean images for latent codes `z` and `labels`, as uint8 images on the CPU."""
        model = unwrap(model)
        model.eval()
        result = []
        for start in range(0, len(labels), batch_size):
            z_part, labels_part = z[start : start + batch_size], labels[start : start + batch_size]
            with runtime.autocast():
                logits = model.decode(z_part.to(runtime.device), labels_part.to(runtime.device))
            result.append(to_pixels(torch.sigmoid(logits.float())))
        return torch.cat(result)

    def samples(self, model: nn.Module, classes: list[int], runtime: Runtime, seed: int = PICTURE_SEED) -> torch.Tensor:
        """SAMPLES_PER_CLASS decoder means per class from z ~ N(0, I); column k uses the same z in every row."""
        z = torch.randn(SAMPLES_PER_CLASS, unwrap(model).latent_dim, generator=torch.Generator().manual_seed(seed))
        labels = torch.tensor(classes).repeat_interleave(SAMPLES_PER_CLASS)
        return self.decode_means(model, z.repeat(len(classes), 1), labels, runtime)

    def samples_for(self, model: nn.Module, labels: torch.Tensor, runtime: Runtime, seed: int = EVAL_SEED) -> torch.Tensor:
        """One decoder mean per label, each from its own z ~ N(0, I) (seeded), as uint8 images on the CPU."""
        z = torch.randn(len(labels), unwrap(model).latent_dim, generator=torch.Generator().manual_seed(seed))
        return self.decode_means(model, z, labels, runtime)

    # ---- pictures and the judge's scores -----------------------------------------------------------------

    def _tile(self, image: torch.Tensor) -> Image.Image:
        picture = to_pil(image)
        scale = max(1, round(TILE_PIXELS / max(picture.size)))
        return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)

    def wrong_labels_figure(self, inputs: torch.Tensor, outputs: torch.Tensor, true: torch.Tensor, given: torch.Tensor) -> Image.Image:
        """Two 5-column grids side by side: the inputs captioned with their true class, and the outputs
        captioned `<true> → <given>`."""
        names = self.class_names
        rows = [list(range(i, min(i + WRONG_LABEL_COLUMNS, len(inputs)))) for i in range(0, len(inputs), WRONG_LABEL_COLUMNS)]
        blank = Image.new("RGB", self._tile(inputs[0]).size, "white")

        def grid(images: torch.Tensor, caption: Any) -> Image.Image:
            tiles = [[self._tile(images[i]) for i in row] + [blank] * (WRONG_LABEL_COLUMNS - len(row)) for row in rows]
            captions = [[caption(i) for i in row] + [""] * (WRONG_LABEL_COLUMNS - len(row)) for row in rows]
            return captioned_grid(tiles, captions=captions, caption_height=CAPTION_HEIGHT)

        to = arrow()
        left = grid(inputs, lambda i: names[true[i]])
        right = grid(outputs, lambda i: f"{names[true[i]]} {to} {names[given[i]]}")
        return side_by_side(
            left, right,
            ["test inputs, captioned with their true class", f"the same inputs given a wrong label, captioned true {to} given"],
        )

    def label_sweep_figure(self, inputs: torch.Tensor, true: torch.Tensor, outputs: list[torch.Tensor], labels: list[int]) -> Image.Image:
        """One row per input: the input, then its output under each label. Column titles name the label,
        the first caption of a row the input's true class; the diagonal (true label) is a reconstruction."""
        tiles = [[self._tile(inputs[r])] + [self._tile(out[r]) for out in outputs] for r in range(len(inputs))]
        titles = ["input"] + [f"label {self.class_names[k]}" for k in labels]
        captions = [[f"true: {self.class_names[true[r]]}"] + [""] * len(labels) for r in range(len(inputs))]
        grid = captioned_grid(tiles, titles, captions, caption_height=CAPTION_HEIGHT)
        return titled(grid, f"{self.cfg.run_name}: each row: one test input (left), then the decoder's output for z = mu under each label (columns)")

    def classifier_train_split(self, data: Any, limit: int | None) -> TensorSplit:
        """The training images of the judge and of the readers: the dataset's whole training split (or a seeded
        `limit` of it), whatever `data.limit_train` the VAE used, so that they serve every run of a dataset and size."""
        if self.cfg.data.limit_train == limit:
            return data.train
        return self.build_data(limit_train=limit, limit_val=1, limit_test=1).train

    def draw_pictures(
        self, model: nn.Module, test: TensorSplit, given_all: torch.Tensor, runtime: Runtime, run_dir: Path, label_follow: float
    ) -> dict[str, Image.Image]:
        """wrong_labels.png (under a title with the run's name and its headline `label_follow`, whose height its PNG
        records for the report), label_sweep.png, reconstructions.png and samples.png in `run_dir`; returns them."""
        chosen = spanning_selection(test.targets, WRONG_LABEL_TILES, PICTURE_SEED)
        index = torch.as_tensor(chosen, dtype=torch.long)
        inputs, true, given = test.images[index], test.targets[index], given_all[index]
        figure = self.wrong_labels_figure(inputs, self.outputs(model, inputs, given, runtime), true, given)
        framed = titled(
            figure, f"{self.cfg.run_name}: label follow {label_follow:.3f} (the lowest reading of the independent readers, all {len(test)} test outputs)"
        )
        figures = {"wrong_labels": framed}

        rows = torch.as_tensor(chosen[: min(SWEEP_ROWS, self.num_classes)], dtype=torch.long)
        sweep_labels = list(range(min(self.num_classes, MAX_PICTURE_CLASSES)))
        sweep_outputs = [
            self.outputs(model, test.images[rows], torch.full((len(rows),), k, dtype=torch.long), runtime) for k in sweep_labels
        ]
        figures["label_sweep"] = self.label_sweep_figure(test.images[rows], test.targets[rows], sweep_outputs, sweep_labels)

        shown = chosen[: min(self.num_classes, MAX_PICTURE_CLASSES)]
        index = torch.as_tensor(shown, dtype=torch.long)
        recon = self.outputs(model, test.images[index], test.targets[index], runtime)
        figures["reconstructions"] = titled(
            captioned_grid(
                [[self._tile(test.images[i]) for i in shown], [self._tile(r) for r in recon]],
                captions=[[self.class_names[test.targets[i]] for i in shown], ["reconstruction"] + [""] * (len(shown) - 1)],
                caption_height=CAPTION_HEIGHT,
            ),
            f"{self.cfg.run_name}: top row: one test image per class; bottom row: its reconstruction with its true label",
        )

        classes = list(range(min(self.num_classes, MAX_PICTURE_CLASSES)))
        drawn = self.samples(model, classes, runtime)
        figures["samples"] = titled(
            captioned_grid(
                [[self._tile(drawn[r * SAMPLES_PER_CLASS + k]) for k in range(SAMPLES_PER_CLASS)] for r in range(len(classes))],
                captions=[[self.class_names[c]] + [""] * (SAMPLES_PER_CLASS - 1) for c in classes],
                caption_height=CAPTION_HEIGHT,
            ),
            f"{self.cfg.run_name}: each row: one label; each column: one z ~ N(0, I), the same in every row, decoded with the row's label",
        )
        bands = {TITLE_HEIGHT: str(framed.height - figure.height), LEGEND_HEIGHT: "0"}
        for picture, drawn_figure in figures.items():
            atomic_save_image(drawn_figure, run_dir / FILES[picture], text=bands if picture == "wrong_labels" else None)
        return figures

    def readers(self, data: Any, runtime: Runtime) -> tuple[dict[str, nn.Module], dict[str, float]]:
        """The judge, then the panel's readers, each trained on the dataset's training split or read from the
        cache; and the training seconds that the readers' cache entries recorded."""
        if self.panel_readers is None:
            raise UserError("this run's config has no task.panel; the VAE's scores need its readers (see conf/task/vae.yaml)")
        from s18exp.judge_training import judge_for  # training code: `generate` never loads it

        progress = self.cfg.trainer.progress
        settings = OmegaConf.to_container(self.cfg.task.judge, resolve=True)
        cache_dir = self.cfg.paths.cache_dir if settings.pop("cache", True) else None
        judge_limit, panel_limit = settings.pop("limit_train", None), self.cfg.task.panel.limit_train
        judge_train = self.classifier_train_split(data, judge_limit)
        judge = judge_for(judge_train, self.cfg.data.name, self.class_names, settings, runtime, cache_dir, progress)
        panel = panel_for(
            judge_train if panel_limit == judge_limit else self.classifier_train_split(data, panel_limit), data.test,
            self.cfg.data.name, self.class_names, self.panel_readers, runtime,
            self.cfg.paths.cache_dir if self.cfg.task.panel.cache else None, progress,
        )
        networks = {JUDGE: judge, **{reader.name: reader.network for reader in panel}}
        return networks, {f"panel/train_seconds/{reader.name}": reader.train_seconds for reader in panel}

    def finalize(
        self, model: nn.Module, data: Any, runtime: Runtime, run_dir: Path, tracker: Tracker, scores: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """The outputs of the whole test split read by the judge and the panel's readers: each item's outcome in
        test_items.npz, and the scores (computed from those very arrays) that it adds to summary.json, with
        test/elbo, test/recon and test/kl as the means of its per-item terms; then the four pictures. The test
        split's `scores` are not needed: these replace them."""
        test: TensorSplit = data.test
        given_all = other_labels(test.targets, self.num_classes, torch.Generator().manual_seed(PICTURE_SEED))
        read = self.read_outputs(model, data, runtime, run_dir, given_all)
        figures = self.draw_pictures(model, test, given_all, runtime, run_dir, read["test/label_follow_acc"])
        captions = {
            "wrong_labels": "input | output given a wrong label",
            "label_sweep": "rows: test inputs; columns: the input, then its output under each label",
            "samples": "z ~ N(0, I), one row per class",
        }
        tracker.log({**read, **{MEDIA[k]: tracker.image(figure, caption=captions.get(k)) for k, figure in figures.items()}})
        return read

    def read_outputs(self, model: nn.Module, data: Any, runtime: Runtime, run_dir: Path, given_all: torch.Tensor) -> dict[str, float]:
        """The judge and the readers read the real test images, the outputs given the wrong labels `given_all`,
        the reconstructions and one sample per test image; test_items.npz gets each item's outcome, and the
        scores come from it."""
        test: TensorSplit = data.test
        networks, recorded = self.readers(data, runtime)
        sample_labels = torch.arange(len(test)) % self.num_classes
        shown = {
            "real": test.images,
            "wrong": self.outputs(model, test.images, given_all, runtime),
            "recon": self.outputs(model, test.images, test.targets, runtime),
            "samples": self.samples_for(model, sample_labels, runtime),
        }
        read = {name: {kind: classify(network, images, runtime) for kind, images in shown.items()} for name, network in networks.items()}
        # Only this rank scores here: every item of the test split, with no other rank to sum in.
        terms = self.item_terms(model, Batches(test, int(self.cfg.trainer.eval_batch_size)), replace(runtime, dist=Dist()))
        items = item_outcomes(
            {name: r["wrong"] for name, r in read.items()}, {name: r["recon"] for name, r in read.items()},
            test.targets, given_all, terms.sum(dim=1).numpy(),
        )
        test_items.save(run_dir / test_items.TEST_ITEMS, items)
        real_acc = {name: float((r["real"] == test.targets).double().mean()) for name, r in read.items()}
        return {
            "test/elbo": float(np.mean(items["elbo"])),
            "test/recon": float(np.mean(terms[:, 0].numpy())),
            "test/kl": float(np.mean(terms[:, 1].numpy())),
            **scores_from_items(items, {name: (r["samples"] == sample_labels).numpy() for name, r in read.items()}),
            "judge/test_acc": real_acc[JUDGE],
            **{f"panel/test_acc/{name}": acc for name, acc in real_acc.items() if name != JUDGE},
            **recorded,
        }
