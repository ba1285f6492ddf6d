"""The LR range test: `python -m s18exp.lr_find [overrides]`, and `trainer.lr=auto` in every training run.

The test trains the freshly built model for at most `trainer.lr_find.num_steps` steps on the training split,
raising the learning rate exponentially from `start_lr` to `end_lr` (`lr_i = start * (end/start)**(i/(N-1))`),
and records the loss of every step. It is task-agnostic: the batch loss is the task's own
`training_loss(model, images, targets)` under the run's autocast, and the optimiser is built from
`trainer.optimizer` exactly as `loop.fit` builds it, so the curve describes the training that follows.

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
  and the rule may only say `end_lr / 10`: a warning says so.
- `steepest`: the lr where the smoothed loss falls fastest per decade of lr (the most negative
  d loss / d log10 lr), searched after the first tenth of the curve (the moving average holds few losses there)
  and before the minimum. It needs no upturn of the curve, and it is torch-lr-finder's suggestion, which the
  ERA V1 Session 18 assignment's solutions used; but where the loss falls along a straight line in log(lr), as a UNet's often does over
  two or three decades, the steepest point anywhere on that line is a matter of noise (measured on the pets
  data: 1e-4 where min_div10 says 6e-4).

Both candidates are shown in the table whatever the rule; when the loss never falls below its first value, the
pick is `start_lr` with a warning (lower `start_lr`). The pick is rounded to 3 significant digits, so that
`python -m s18exp trainer.lr=<printed pick>` reproduces an auto run.

Outputs in the run dir: `lr_find.json` (`lr` and `loss` of every step, the smoothed curve as `smoothed_lr`
and `smoothed_loss`, the pick, the rule, both candidates, the minimum and the settings) and `lr_find.png`
(loss against lr on a log axis, the pick marked). The standalone command starts no W&B run (it is a look
before training); in a `trainer.lr=auto` training run the picture, the curve and the pick go to that run's W&B.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageDraw
from rich.table import Table
from torch import nn

from s18exp import console
from s18exp.data import Batches, TensorSplit
from s18exp.distributed import broadcast_object
from s18exp.errors import UserError
from s18exp.atomic_files import atomic_save_image, atomic_write_json
from s18exp.runtime import Runtime, rng_state, set_rng_state
from s18exp.paths import CONFIG_DIR
from s18exp.config import AUTO, RULES, validate

JSON_FILE = "lr_find.json"
PNG_FILE = "lr_find.png"
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
    `optimizer`, one is built from `trainer.optimizer` as `loop.fit` builds it.
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
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if trainer.get("grad_clip") is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)
            scaler.step(optimizer)
            scaler.update()
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
    """Fill in the candidates of both rules and the pick of the configured rule (see the module docstring)."""
    if not curve.lrs:
        raise UserError("the LR range test recorded no finite loss; lower trainer.lr_find.start_lr")
    losses = np.asarray(curve.losses)
    lrs = np.asarray(curve.centres)
    lowest = int(np.argmin(losses))
    within = losses <= losses[lowest] + FLOOR_TOLERANCE * (losses[0] - losses[lowest])
    curve.min_index = m = int(np.argmax(within))  # the first point on the floor
    start_lr = curve.settings.start_lr
    if losses[lowest] >= losses[0]:
        console.warn(
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
            console.warn(
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


def find_lr(cfg: DictConfig, task: Any, model: nn.Module, train: TensorSplit, runtime: Runtime, run_dir: Path) -> Curve:
    """The range test of a composed config on its training split: run it, show it, write lr_find.{json,png}."""
    settings = settings_from(cfg.trainer)
    console.info(
        f"LR range test: {settings.num_steps} steps from {settings.start_lr:.3g} to {settings.end_lr:.3g}, "
        f"batch size {cfg.trainer.batch_size}, {len(train)} training items"
    )
    batches = Batches(train, cfg.trainer.batch_size, shuffle=True, seed=cfg.seed)
    curve = range_test(model, task, batches, cfg.trainer, runtime)
    show(curve)
    atomic_write_json(curve.to_json(), run_dir / JSON_FILE)
    atomic_save_image(plot(curve, title=f"LR range test: {cfg.run_name}"), run_dir / PNG_FILE)
    return curve


def resolve_auto(
    cfg: DictConfig, task: Any, model: nn.Module, train: TensorSplit, runtime: Runtime, run_dir: Path,
    resume: dict[str, Any] | None = None,
) -> Curve | None:
    """`trainer.lr=auto`: run the range test and set `cfg.trainer.lr` to its pick; the optimiser and the
    OneCycle schedule interpolate `${trainer.lr}`, so they take it. Call after the model is built and before
    training. A resumed run takes the lr from its checkpoint's config instead of testing again; under torchrun,
    rank 0 tests on the whole training split and the other ranks take its pick. Returns the curve (rank 0 of a
    fresh run) or None."""
    if cfg.trainer.lr != AUTO:
        return None
    if resume is not None and isinstance(resume.get("config", {}).get("trainer", {}).get("lr"), (int, float)):
        cfg.trainer.lr = resume["config"]["trainer"]["lr"]
        console.info(f"trainer.lr=auto: {cfg.trainer.lr:.3g}, the pick of the run being resumed")
        return None
    curve = find_lr(cfg, task, model, train, runtime, run_dir) if runtime.dist.is_main else None
    cfg.trainer.lr = broadcast_object(curve.pick if curve is not None else None, runtime.dist)
    return curve


def log_to(curve: Curve, tracker: Any, run_dir: Path) -> None:
    """Into an active W&B run: the picture, the curve as a line chart, and the pick in its summary (the run's
    config gets `trainer.lr` and `lr_find/pick` when it starts, see run.py)."""
    if getattr(tracker, "run", None) is None:
        return
    values: dict[str, Any] = {"lr_find/plot": tracker.image(str(run_dir / PNG_FILE))}
    try:
        import wandb

        rows = list(zip(curve.lrs, curve.raw_losses, curve.centres, curve.losses))
        table = wandb.Table(columns=["lr", "loss", "smoothed_lr", "smoothed_loss"], data=rows)
        values["lr_find/curve"] = wandb.plot.line(table, "smoothed_lr", "smoothed_loss", title="LR range test (smoothed loss)")
    except Exception as exc:  # the chart is a nicety; the picture and the pick still go
        console.warn(f"W&B line chart of the LR range test failed ({exc})")
    tracker.log(values)
    tracker.summarize({"lr_find/pick": curve.pick})


def _nearest(lrs: list[float], lr: float) -> int:
    return int(np.argmin(np.abs(np.log(np.asarray(lrs)) - math.log(lr))))


def show(curve: Curve) -> None:
    """A rich table of the smoothed curve's key points: the start, one point per decade, both candidates, the
    minimum and the last point; each at the lr its moving average describes, beside the loss of that lr's step."""
    rows: dict[int, list[str]] = {}

    def mark(index: int, label: str) -> None:
        rows.setdefault(index, []).append(label)

    mark(0, "start")
    for decade in range(math.floor(math.log10(curve.centres[0])), math.ceil(math.log10(curve.centres[-1])) + 1):
        if curve.centres[0] <= 10.0**decade <= curve.centres[-1]:
            mark(_nearest(curve.centres, 10.0**decade), "")
    if curve.steepest_index is not None:
        mark(curve.steepest_index, "steepest descent")
    mark(curve.min_index, "minimum")
    mark(_nearest(curve.centres, curve.pick), f"[bold green]pick {curve.pick:.3g} ({curve.settings.rule})[/]")
    mark(len(curve) - 1, "last")

    stop = f"diverged at lr {curve.lrs[-1]:.3g}" if curve.diverged else f"up to lr {curve.lrs[-1]:.3g}"
    table = Table(title=f"LR range test: {len(curve)} of {curve.settings.num_steps} steps, {stop}, {curve.seconds:.1f} s")
    for name, justify in (("lr", "right"), ("smoothed loss", "right"), ("loss of its step", "right"), ("", "left")):
        table.add_column(name, justify=justify)
    for index in sorted(rows):
        lr = curve.centres[index]
        table.add_row(
            f"{lr:.3g}", f"{curve.losses[index]:.4f}", f"{curve.raw_losses[_nearest(curve.lrs, lr)]:.4f}",
            ", ".join(r for r in rows[index] if r),
        )
    console.console.print(table)
    candidates = "  ".join(f"{rule} {lr:.3g}" for rule, lr in curve.candidates.items())
    console.log.info("LR range test points (lr, smoothed loss): %s", [(curve.centres[i], curve.losses[i]) for i in sorted(rows)])
    console.info(f"LR range test pick: trainer.lr={curve.pick:.3g} (rule {curve.settings.rule}; candidates {candidates})")


# --- the picture: loss against lr on a log axis, drawn with PIL ---------------------------------------------

_W, _H = 820, 500
_LEFT, _RIGHT, _TOP, _BOTTOM = 76, 24, 52, 56


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def plot(curve: Curve, title: str = "LR range test") -> Image.Image:
    """Smoothed loss (blue, at the lrs it averages) and each step's loss (grey) against lr on a log10 axis; the
    minimum circled, the pick as a red dashed line."""
    from s18exp.pictures import font

    image = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(image)
    small, big = font(12), font(15)
    x0, x1 = math.log10(curve.lrs[0]), math.log10(curve.lrs[-1])
    if x1 - x0 < 1e-9:
        x1 = x0 + 1
    losses = curve.losses
    # The smoothed curve whole, and the raw losses up to the minimum (past it they may explode: clipped).
    shown = losses + curve.raw_losses[: curve.min_index + 1]
    y_low, y_high = min(shown), max(shown)
    pad = 0.06 * (y_high - y_low or abs(y_high) or 1.0)
    y_low, y_high = y_low - pad, y_high + pad
    left, right, top, bottom = _LEFT, _W - _RIGHT, _TOP, _H - _BOTTOM

    def px(lr: float) -> float:
        return left + (math.log10(lr) - x0) / (x1 - x0) * (right - left)

    def py(loss: float) -> float:
        y = bottom - (loss - y_low) / (y_high - y_low) * (bottom - top)
        return min(max(y, top), bottom)

    draw.text((left, 8), title, fill="black", font=big)
    for decade in range(math.ceil(x0 - 1e-9), math.floor(x1 + 1e-9) + 1):
        x = px(10.0**decade)
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230))
        draw.line([(x, bottom), (x, bottom + 5)], fill="black")
        draw.text((x - 14, bottom + 8), f"1e{decade}", fill="black", font=small)
    for tick in _nice_ticks(y_low, y_high):
        y = py(tick)
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.line([(left - 5, y), (left, y)], fill="black")
        draw.text((6, y - 7), f"{tick:.4g}", fill="black", font=small)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2 - 80, _H - 22), "learning rate (log scale)", fill="black", font=small)
    legend = "grey: loss of each step; blue: its moving average, drawn at the lrs it averages; circle: minimum"
    draw.text((left, 30), legend, fill=(90, 90, 90), font=small)

    if len(curve) > 1:
        draw.line([(px(lr), py(v)) for lr, v in zip(curve.lrs, curve.raw_losses)], fill=(185, 185, 185), width=1)
        draw.line([(px(lr), py(v)) for lr, v in zip(curve.centres, losses)], fill=(30, 90, 200), width=3)
    m, lr_m = curve.min_index, curve.centres[curve.min_index]
    draw.ellipse([px(lr_m) - 4, py(losses[m]) - 4, px(lr_m) + 4, py(losses[m]) + 4], outline="black")
    x = px(min(max(curve.pick, curve.lrs[0]), curve.lrs[-1]))
    for y in range(top, bottom, 10):  # dashed
        draw.line([(x, y), (x, min(y + 6, bottom))], fill=(210, 30, 30), width=2)
    label = f"pick {curve.pick:.3g} ({curve.settings.rule})"
    draw.text((x + 6 if x < right - 170 else x - 170, top + 22), label, fill=(210, 30, 30), font=big)
    return image


# --- the command ------------------------------------------------------------------------------------------


def lr_find(cfg: DictConfig) -> Curve:
    """`python -m s18exp.lr_find`: build the composed config's task, data and model, run the test, write its files."""
    from hydra.core.hydra_config import HydraConfig

    from s18exp.runtime import resolve_device, resolve_precision, seed_everything
    from s18exp.tasks import build

    validate(cfg)
    if cfg.trainer.get("lr_find") is None:
        raise UserError("the config has no trainer.lr_find settings; restore them in conf/trainer/default.yaml")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    runtime = Runtime(device, resolve_precision(cfg.trainer.precision, device), cfg.trainer.channels_last)
    task, data, model = build(cfg)
    model = runtime.prepare_model(model)
    console.info(f"{cfg.run_name}: {device} {runtime.precision}, run dir {run_dir}")
    curve = find_lr(cfg, task, model, data.train, runtime, run_dir)
    console.info(f"wrote {run_dir / PNG_FILE} and {run_dir / JSON_FILE}; train with it: python -m s18exp ... trainer.lr={curve.pick:.3g}")
    return curve


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from s18exp.errors import find_user_error

    try:
        lr_find(cfg)
    except Exception as exc:
        error = find_user_error(exc)
        if error is None:
            raise
        console.error(str(error))
        sys.exit(2)


if __name__ == "__main__":
    from s18exp.keys import exit_on_unknown_keys

    exit_on_unknown_keys(sys.argv[1:])
    main()
