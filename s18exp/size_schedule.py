"""Progressive resizing (`trainer.size_schedule`): the side of the training views and the batch size of every epoch.

Training starts on small views of the images, decoded once at `data.image_size`, and raises their side to that size
over the schedule, as FFCV's and fast.ai's progressive resizing do; validation, `best.pt`, the test split and
`predict` stay at `data.image_size`. `sizes_per_epoch` is the one source of the sides, `EpochPlan` of the batch
sizes and step counts that follow from them: the OneCycle schedule's `total_steps` and the loop's share of training
done both come from it, so the learning rate ends its cycle exactly at the last step.

The sides are computed in exact fractions, the ramp's ends taken as the decimals written in the config, so that
a side halfway between two multiples of 2**model.depth rounds up on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from omegaconf import DictConfig, OmegaConf

from s18exp.errors import UserError

KEY = "trainer.size_schedule"
SETTINGS = ("start_size", "ramp_start", "ramp_end", "batch_scale")
RAMP_EXAMPLES = {"ramp_start": 0.0, "ramp_end": 0.7}  # the values a message about a bad one suggests


@dataclass(frozen=True)
class SizeSchedule:
    """`trainer.size_schedule` when it is on (its `start_size` is set)."""

    start_size: int
    ramp_start: float
    ramp_end: float
    batch_scale: bool


def size_schedule(cfg: DictConfig) -> SizeSchedule | None:
    """The config's schedule, None when it is off (`trainer.size_schedule` or its `start_size` null, or absent, as
    in the configs of older runs). Values are checked by `check_size_schedule`."""
    node = OmegaConf.select(cfg, KEY, default=None)
    if node is None or node.get("start_size") is None:
        return None
    return SizeSchedule(*(node.get(name) for name in SETTINGS))


def schedule_text(schedule: SizeSchedule | None) -> str:
    """A schedule as its settings, for messages: `start_size=64, ramp_start=0.0, ramp_end=0.7, batch_scale=false`,
    or `off`."""
    if schedule is None:
        return "off"
    return ", ".join(f"{name}={str(getattr(schedule, name)).lower()}" for name in SETTINGS)


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _decimal(value: float) -> Fraction:
    """A ramp end as the decimal the config wrote (0.7 is 7/10, not the binary float just below it)."""
    return Fraction(repr(float(value)))


def sizes_per_epoch(
    image_size: int, max_epochs: int, multiple: int, start_size: int, ramp_start: float, ramp_end: float
) -> list[int]:
    """The side of the training views in each epoch, first to last.

    Epoch e (1-based) of E sits at position p = (e - 1) / (E - 1) of training: 0 for the first epoch, 1 for the last
    (a single epoch is at 1). The side is `start_size` while p <= ramp_start, `image_size` from p >= ramp_end on, and
    in between rises linearly from one to the other, rounded to the nearest multiple of `multiple` (halves up).
    Since `start_size` and `image_size` are multiples and ramp_end <= 1, the sides never fall, stay in
    [start_size, image_size], and the last epoch is at `image_size`; ramp_start = ramp_end is a step at that point.
    """
    start, end = _decimal(ramp_start), _decimal(ramp_end)
    sizes = []
    for epoch in range(1, max_epochs + 1):
        position = Fraction(epoch - 1, max_epochs - 1) if max_epochs > 1 else Fraction(1)
        if position >= end:
            done = Fraction(1)
        elif position <= start:
            done = Fraction(0)
        else:
            done = (position - start) / (end - start)
        side = start_size + (image_size - start_size) * done
        sizes.append(multiple * _round_half_up(side / multiple))
    return sizes


def batch_sizes_per_epoch(sizes: list[int], image_size: int, batch_size: int, batch_scale: bool) -> list[int]:
    """The batch size of each epoch: `batch_size`, or with `batch_scale` batch_size x (image_size / side)**2
    rounded (halves up), so that a step holds about as many pixels, and costs about as much, at every side."""
    if not batch_scale:
        return [batch_size] * len(sizes)
    return [max(1, _round_half_up(Fraction(batch_size * image_size**2, side**2))) for side in sizes]


@dataclass(frozen=True)
class EpochPlan:
    """Per epoch (index epoch - 1): the side of the training views (None: the images' own), the batch size, and the
    optimiser steps they make on this rank's share of the training split."""

    sizes: tuple[int | None, ...]
    batch_sizes: tuple[int, ...]
    steps: tuple[int, ...]

    @property
    def total_steps(self) -> int:
        """The steps of the whole run: the lr schedule's length."""
        return sum(self.steps)

    def share_done(self, epoch: int, step: int) -> float:
        """The share of the run's steps taken before step `step` (0-based) of epoch `epoch` (1-based)."""
        return (sum(self.steps[: epoch - 1]) + step) / self.total_steps

    def record(self, epoch: int) -> dict[str, int]:
        """metrics.jsonl's and W&B's entries for the epoch: `train/size` (when known) and `train/batch_size`."""
        size = self.sizes[epoch - 1]
        return {**({} if size is None else {"train/size": size}), "train/batch_size": self.batch_sizes[epoch - 1]}


def epoch_plan(items: int, batch_sizes: list[int], sizes: list[int | None]) -> EpochPlan:
    """The plan of epochs of `items` training items each (this rank's share) at these batch sizes and sides; the last
    batch of an epoch may be smaller."""
    return EpochPlan(tuple(sizes), tuple(batch_sizes), tuple(-(-items // b) for b in batch_sizes))


def plan_for(cfg: DictConfig, items: int) -> EpochPlan:
    """The config's plan for a training split of which this rank takes `items` per epoch: without a schedule, every
    epoch at `data.image_size` and `trainer.batch_size`."""
    epochs, image_size, batch_size = int(cfg.trainer.max_epochs), int(cfg.data.image_size), int(cfg.trainer.batch_size)
    schedule = size_schedule(cfg)
    if schedule is None:
        return epoch_plan(items, [batch_size] * epochs, [image_size] * epochs)
    multiple = 2 ** int(cfg.model.depth)
    sizes = sizes_per_epoch(image_size, epochs, multiple, schedule.start_size, schedule.ramp_start, schedule.ramp_end)
    return epoch_plan(items, batch_sizes_per_epoch(sizes, image_size, batch_size, schedule.batch_scale), sizes)


def check_size_schedule(cfg: DictConfig, task_name: str) -> None:
    """A UserError naming the key, the value and the fix for a bad `trainer.size_schedule` of a config whose task is
    `task_name`; nothing when the schedule is off."""
    node = OmegaConf.select(cfg, KEY, default=None)
    if node is None:
        return
    if not OmegaConf.is_dict(node):
        raise UserError(f"{KEY}={node!r} must be a group of settings ({', '.join(SETTINGS)}) or null; e.g. {KEY}.start_size=64")
    unknown = sorted(set(node) - set(SETTINGS))
    missing = [name for name in SETTINGS if name not in node]
    if unknown or missing:
        name = (unknown or missing)[0]
        problem = "is not a setting" if unknown else "is missing"
        raise UserError(f"{KEY}.{name} {problem}; {KEY} takes {', '.join(SETTINGS)} (conf/trainer/default.yaml)")
    if node.start_size is None:
        return
    _check_start_size(cfg, node.start_size, task_name)
    for name in ("ramp_start", "ramp_end"):
        value = node[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise UserError(
                f"{KEY}.{name}={value!r} is outside [0, 1]; give a share of training (0 = the first epoch, 1 = the last), "
                f"e.g. {KEY}.{name}={RAMP_EXAMPLES[name]}"
            )
    if node.ramp_start > node.ramp_end:
        raise UserError(
            f"{KEY}.ramp_start={node.ramp_start} is after {KEY}.ramp_end={node.ramp_end}; the side starts rising at ramp_start "
            f"and reaches data.image_size at ramp_end: use {KEY}.ramp_end={node.ramp_start}, or a ramp_start of at most {node.ramp_end}"
        )
    if not isinstance(node.batch_scale, bool):
        raise UserError(f"{KEY}.batch_scale={node.batch_scale!r} must be true or false; e.g. {KEY}.batch_scale=false")


def _check_start_size(cfg: DictConfig, value: Any, task_name: str) -> None:
    if task_name != "unet":
        raise UserError(
            f"{KEY}.start_size={value} is for task=unet; task={task_name} trains at data.image_size: set {KEY}.start_size=null"
        )
    image_size, multiple = int(cfg.data.image_size), 2 ** int(cfg.model.depth)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{KEY}.start_size={value!r} is not a whole number of pixels; e.g. {KEY}.start_size={max(multiple, image_size // 2)}")
    if value < 1 or value % multiple or value > image_size:
        fit = min(image_size, max(multiple, _round_half_up(Fraction(value, multiple)) * multiple))
        raise UserError(
            f"{KEY}.start_size={value} must divide by 2**model.depth={multiple} and be at most data.image_size={image_size}; "
            f"use {KEY}.start_size={fit}, or null for every epoch at data.image_size"
        )
    crop = OmegaConf.select(cfg, "augment.crop_size")
    if crop is not None:
        raise UserError(
            f"{KEY}.start_size={value} with augment.crop_size={crop}: both shrink the training views; use one of them "
            f"({KEY}.start_size=null or augment.crop_size=null)"
        )

