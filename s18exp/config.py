"""Checks of a composed config, run once right after composition and before any work."""

from __future__ import annotations

from omegaconf import DictConfig

from s18exp.errors import UserError
from s18exp.loop import PRECISIONS
from s18exp.lr_find import validate_settings
from s18exp.tracking import MODES


def _positive(cfg: DictConfig, key: str, kind: type = int, allow_none: bool = False) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise UserError(f"{key}={value!r} must be a positive {kind.__name__}; e.g. {key}=8")
    if value <= 0:
        raise UserError(f"{key}={value} must be positive; give a value above 0")


def _choice(value: object, key: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of {'|'.join(choices)}; e.g. {key}={choices[0]}")


def validate(cfg: DictConfig) -> None:
    """Raise UserError naming the key, the value and the fix for the first bad value found."""
    _positive(cfg, "trainer.max_epochs")
    _positive(cfg, "trainer.batch_size")
    if cfg.trainer.lr != "auto":  # auto: the LR range test picks it (s18exp/lr_find.py)
        _positive(cfg, "trainer.lr", float)
    validate_settings(cfg)
    _positive(cfg, "trainer.grad_clip", float, allow_none=True)
    _positive(cfg, "data.image_size")
    for split in ("train", "val", "test"):
        _positive(cfg, f"data.limit_{split}", allow_none=True)
    _choice(cfg.trainer.precision, "trainer.precision", PRECISIONS)
    _choice(cfg.wandb.mode, "wandb.mode", MODES)
    if "depth" in cfg.model:
        _positive(cfg, "model.depth")
        _positive(cfg, "model.width")
        step = 2**cfg.model.depth
        if cfg.data.image_size % step:
            fit = max(step, round(cfg.data.image_size / step) * step)
            raise UserError(
                f"data.image_size={cfg.data.image_size} is not divisible by 2**model.depth={step}; "
                f"use data.image_size={fit} or a smaller model.depth"
            )
