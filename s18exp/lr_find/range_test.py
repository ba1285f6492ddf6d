"""The LR range test and its pick, with no output of its own (s18exp/lr_find/display.py shows and writes it).

The test trains the freshly built model for at most `trainer.lr_find.num_steps` steps on the training split,
raising the learning rate exponentially from `start_lr` to `end_lr` (`lr_i = start * (end/start)**(i/(N-1))`),
and records the loss of every step. It is task-agnostic: the batch loss is the task's own
`training_loss(model, images, targets)` under the run's autocast, the optimiser is built from
`trainer.optimizer` exactly as `updates.Updates` builds it and each update is `updates.optimizer_step`, the loop's own, so the
curve describes the training that follows.

- The loss is smoothed with an exponential moving average (`smooth` is the weight of the past, 0 = raw losses)
  with bias correction, so the first points are not pulled towards zero. The average at step i mixes the losses
  of the last ~smooth/(1-smooth) steps, so it describes a smaller lr than step i's (a decade smaller with the
  defaults): each smoothed value is placed at the lr it averages, the same bias-corrected moving average of
  log(lr). That curve, without lag, is what the pick reads and the picture draws.
- The test stops early when the smoothed loss rises above the best smoothed loss so far by more than
  (`diverge_factor` - 1) times the best's magnitude (`current - best > (factor - 1) * |best|`: for a positive
  best, `diverge_factor` times the best; a loss that can go negative, such as the VAE's Gaussian likelihood,
  rises by the same share of its size), or when a loss is not finite. (A bounded loss such as Dice may never reach the factor; the test then runs
  to `end_lr`.)
- It leaves no trace: the weights, BatchNorm buffers, the optimiser state (when one is passed in), the global
  RNGs (torch, CUDA, numpy, random) and the task's own generators are restored afterwards, and it draws its
  batches from a Batches of its own; so `trainer.lr=auto` trains exactly like `trainer.lr=<pick>` would, from
  the same initial weights (tests/test_lr_find.py compares the two runs' metrics).

The pick (`trainer.lr_find.rule`):

- `min_div10` (the default): a tenth of the lr at the minimum of the smoothed loss (fastai's `lr_min`; Smith's
  "an order of magnitude below where the loss stops falling"). Past the minimum a larger step no longer helps;
  a decade below it the loss still falls fast, with a margin against divergence, which is what OneCycle's peak
  lr wants (it spends a third of training near it). On a flat floor, noise alone can move the lowest point by
  decades, so the minimum is read where the curve first comes within 5% of its total fall of the lowest point
  (on a curve that turns up sharply, the lowest point itself). When the test ran all its steps and that
  minimum is its last step (a test too short, or `end_lr` too low), the curve may not have reached its floor
  and the rule may only say `end_lr / 10`: the curve carries a warning that says so.
- `steepest`: the lr where the smoothed loss falls fastest per decade of lr (the most negative
  d loss / d log10 lr), searched after the first tenth of the curve (the moving average holds few losses there)
  and before the minimum. It needs no upturn of the curve, and it is torch-lr-finder's suggestion, which the
  ERA V1 Session 18 assignment's solutions used; but where the loss falls along a straight line in log(lr), as a UNet's often does over
  two or three decades, the steepest point anywhere on that line is a matter of noise (measured on the pets
  data: 1e-4 where min_div10 says 6e-4).

Both candidates are recorded whatever the rule; when the loss never falls below its first value, the pick is
`start_lr` with a warning (lower `start_lr`). The pick is rounded to 3 significant digits, so that
`python -m s18exp trainer.lr=<printed pick>` reproduces an auto run.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from s18exp.data import Batches
from s18exp.errors import UserError
from s18exp.runtime import Runtime, rng_state, set_rng_state
from s18exp.options import LR_FIND_RULES as RULES
from s18exp.updates import optimizer_step

STEEPEST_SKIP = 0.1  # share of the first points the steepest rule ignores (the moving average is still young)
FLOOR_TOLERANCE = 0.05  # the minimum is read where the curve first comes within this share of its fall of it


@dataclass(frozen=True)
class Settings:
    """`trainer.lr_find` of the config (defaults in conf/trainer/default.yaml)."""

    start_lr: float
    end_lr: float
    num_steps: int
    smooth: float
    diverge_factor: float
    rule: str


def settings_from(trainer: DictConfig) -> Settings:
    return Settings(**trainer.lr_find)


@dataclass
class Curve:
    """The recorded range test and its pick."""

    lrs: list[float]  # of each step
    losses: list[float]  # smoothed, at each step
    raw_losses: list[float]  # of each step
    centres: list[float]  # the lr that each smoothed loss describes (moving average of log lr)
    settings: Settings
    diverged: bool
    seconds: float
    pick: float = math.nan
    candidates: dict[str, float] = field(default_factory=dict)  # rule -> lr
    min_index: int = 0  # the minimum: the first point within FLOOR_TOLERANCE of the lowest one
    steepest_index: int | None = None
    warnings: list[str] = field(default_factory=list)  # what the pick could not vouch for, for the display

    def __len__(self) -> int:
        return len(self.lrs)

    def to_json(self) -> dict[str, Any]:
        return {
            "lr": self.lrs,
            "loss": self.raw_losses,
            "smoothed_lr": self.centres,
            "smoothed_loss": self.losses,
            "pick": self.pick,
            "rule": self.settings.rule,
            "candidates": self.candidates,
            "minimum_lr": self.centres[self.min_index] if self.lrs else None,  # where the floor begins
            "minimum_smoothed_loss": self.losses[self.min_index] if self.lrs else None,
            "diverged": self.diverged,
            "steps": len(self),
            "seconds": self.seconds,
            "settings": asdict(self.settings),
        }


def schedule(settings: Settings) -> list[float]:
    """The exponential lr schedule: start_lr at step 0, end_lr at step num_steps - 1."""
    ratio = settings.end_lr / settings.start_lr
    n = settings.num_steps
    return [settings.start_lr * ratio ** (i / (n - 1)) for i in range(n)]


def _generators(*objects: Any) -> list[torch.Generator]:
    """The torch.Generator attributes of the objects (e.g. a task's augmentation generator)."""
    return [g for obj in objects for g in vars(obj).values() if isinstance(g, torch.Generator)]


def has_diverged(current: float, best: float, factor: float) -> bool:
    """The smoothed loss has risen above its best by more than (factor - 1) x the best's magnitude:
    `current > factor * best` for a positive best, and the same rise for a negative one (a Gaussian
    likelihood can go below zero, where `factor * best` lies below the best itself)."""
    return current - best > (factor - 1) * abs(best)


def range_test(
    model: nn.Module,
    task: Any,
    batches: Batches,
    trainer: DictConfig,
    runtime: Runtime,
    optimizer: torch.optim.Optimizer | None = None,
) -> Curve:
    """Run the test on `batches` (cycled when shorter than num_steps) and restore everything it touched.

    `trainer` is the `trainer` config node: `optimizer`, `grad_clip` and `lr_find` are read. Without an
    `optimizer`, one is built from `trainer.optimizer` as `updates.Updates` builds it.
    """
    settings = settings_from(trainer)
    model_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    was_training = model.training
    if optimizer is None:
        optimizer = instantiate(trainer.optimizer, params=model.parameters(), lr=settings.start_lr)
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    generators = [(g, g.get_state()) for g in _generators(task)]
    rngs = rng_state()
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    lrs, raw, smoothed, centres = [], [], [], []
    average, average_log_lr, best, diverged = 0.0, 0.0, math.inf, False
    start = time.perf_counter()
    try:
        model.train()
        passes = 0
        batch_iter = iter(batches)
        for step, lr in enumerate(schedule(settings)):
            try:
                images, targets = next(batch_iter)
            except StopIteration:  # fewer batches than steps: another pass, in another order
                passes += 1
                if hasattr(batches, "set_epoch"):
                    batches.set_epoch(passes)
                batch_iter = iter(batches)
                images, targets = next(batch_iter)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, targets = runtime.to_device(images, targets)
            with runtime.autocast():
                loss = task.training_loss(model, images, targets)
            optimizer_step(model, loss, optimizer, scaler, None, trainer.get("grad_clip"))
            value = loss.item()  # the test needs every loss: one sync per step
            if not math.isfinite(value):
                diverged = True
                break
            average = settings.smooth * average + (1 - settings.smooth) * value
            average_log_lr = settings.smooth * average_log_lr + (1 - settings.smooth) * math.log(lr)
            correction = 1 - settings.smooth ** (step + 1)
            current = average / correction
            lrs.append(lr)
            raw.append(value)
            smoothed.append(current)
            centres.append(math.exp(average_log_lr / correction))
            best = min(best, current)
            if has_diverged(current, best, settings.diverge_factor):
                diverged = True
                break
    finally:
        model.load_state_dict(model_state)
        model.train(was_training)
        optimizer.load_state_dict(optimizer_state)
        optimizer.zero_grad(set_to_none=True)
        for g, state in generators:
            g.set_state(state)
        set_rng_state(rngs)
    curve = Curve(lrs, smoothed, raw, centres, settings, diverged, time.perf_counter() - start)
    choose(curve)
    return curve


def choose(curve: Curve) -> None:
    """Fill in the candidates of both rules, the pick of the configured rule and the warnings (see the module
    docstring)."""
    if not curve.lrs:
        raise UserError("the LR range test recorded no finite loss; lower trainer.lr_find.start_lr")
    losses = np.asarray(curve.losses)
    lrs = np.asarray(curve.centres)
    lowest = int(np.argmin(losses))
    within = losses <= losses[lowest] + FLOOR_TOLERANCE * (losses[0] - losses[lowest])
    curve.min_index = m = int(np.argmax(within))  # the first point on the floor
    start_lr = curve.settings.start_lr
    if losses[lowest] >= losses[0]:
        curve.warnings.append(
            f"the loss never fell below its first value in the LR range test; the pick is its start "
            f"({start_lr:.3g}): lower trainer.lr_find.start_lr"
        )
        curve.candidates = {rule: start_lr for rule in RULES}
    else:
        curve.candidates["min_div10"] = max(float(lrs[m]) / 10, start_lr)
        # Only a test that ran all its steps and still fell at its end may not have reached its floor: one
        # that stopped on a non-finite loss passed it, and a floor reached earlier is where the pick is read.
        ran_to_the_end = not curve.diverged and len(lrs) == curve.settings.num_steps
        if ran_to_the_end and m == lowest == len(lrs) - 1 and curve.settings.rule == "min_div10":
            curve.warnings.append(
                "the smoothed loss was lowest at the last step, so the curve may not have reached its floor and "
                "min_div10 may only say end_lr / 10: raise trainer.lr_find.end_lr or num_steps, or use rule=steepest"
            )
        first = max(1, int(STEEPEST_SKIP * len(lrs)))
        if m - first >= 1:  # central differences over the whole curve, searched before the minimum
            slopes = np.gradient(losses, np.log10(lrs)) if len(lrs) > 1 else np.zeros(1)
            curve.steepest_index = first + int(np.argmin(slopes[first:m]))
            curve.candidates["steepest"] = float(lrs[curve.steepest_index])
        else:  # too few points before the minimum for a slope
            curve.candidates["steepest"] = curve.candidates["min_div10"]
    curve.pick = float(f"{curve.candidates[curve.settings.rule]:.3g}")
