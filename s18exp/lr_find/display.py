"""What the LR range test shows and leaves: the table and warnings on the terminal, its files in the run dir,
and its picture, curve and pick in W&B.

Files in the run dir: `lr_find.json` (`lr` and `loss` of every step, the smoothed curve as `smoothed_lr` and
`smoothed_loss`, the pick, the rule, both candidates, the minimum and the settings) and `lr_find.png` (loss
against lr on a log axis, the pick marked). The standalone command starts no W&B run (it is a look before
training); in a `trainer.lr=auto` training run the picture, the curve and the pick go to that run's W&B.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from rich.table import Table

from s18exp import console
from s18exp.atomic_files import atomic_save_image, atomic_write_json
from s18exp.lr_find.range_test import Curve
from s18exp.pictures import font

JSON_FILE = "lr_find.json"
PNG_FILE = "lr_find.png"


def _nearest(lrs: list[float], lr: float) -> int:
    return int(np.argmin(np.abs(np.log(np.asarray(lrs)) - math.log(lr))))


def show(curve: Curve) -> None:
    """The curve's warnings, then a rich table of the smoothed curve's key points: the start, one point per
    decade, both candidates, the minimum and the last point; each at the lr its moving average describes,
    beside the loss of that lr's step."""
    for warning in curve.warnings:
        console.warn(warning)
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


def write(curve: Curve, run_dir: Path, title: str) -> None:
    """`lr_find.json` and `lr_find.png` in the run dir."""
    atomic_write_json(curve.to_json(), run_dir / JSON_FILE)
    atomic_save_image(plot(curve, title=title), run_dir / PNG_FILE)


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


# --- the picture: loss against lr on a log axis, drawn with PIL ---------------------------------------------

_W, _H = 840, 500
_LEFT, _RIGHT, _TOP, _BOTTOM = 96, 24, 52, 56
Y_LABEL = "training loss"


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
    """Smoothed loss (blue, at the lrs it averages) and each step's loss (grey) against lr on a log10 axis, both
    axes labelled; the minimum circled, the pick as a red dashed line, and both in the title after `title`."""
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

    lowest = losses[curve.min_index]
    draw.text((left, 8), f"{title}: pick trainer.lr={curve.pick:.3g}, lowest smoothed loss {lowest:.4g}", fill="black", font=big)
    label_box = small.getbbox(Y_LABEL)
    label = Image.new("RGB", (label_box[2] + 2, label_box[3] + 2), "white")
    ImageDraw.Draw(label).text((1, 1), Y_LABEL, fill="black", font=small)
    label = label.rotate(90, expand=True)
    image.paste(label, (left - 70, round((top + bottom - label.height) / 2)))
    for decade in range(math.ceil(x0 - 1e-9), math.floor(x1 + 1e-9) + 1):
        x = px(10.0**decade)
        draw.line([(x, top), (x, bottom)], fill=(230, 230, 230))
        draw.line([(x, bottom), (x, bottom + 5)], fill="black")
        draw.text((x - 14, bottom + 8), f"1e{decade}", fill="black", font=small)
    for tick in _nice_ticks(y_low, y_high):
        y = py(tick)
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.line([(left - 5, y), (left, y)], fill="black")
        draw.text((left - 8, y), f"{tick:.4g}", fill="black", font=small, anchor="rm")
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
