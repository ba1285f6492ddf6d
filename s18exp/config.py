"""Checks of a composed config, run once right after composition and before any work."""

from __future__ import annotations

import math
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from s18exp.errors import UserError
from s18exp.options import AUTO, LR_FIND_RULES, TEST_WEIGHTS, WANDB_MODES
from s18exp.paths import CONFIG_DIR
from s18exp.runtime import PRECISIONS
from s18exp.size_schedule import check_size_schedule


def default_config(choices: Any = None) -> DictConfig:
    """The config that the config groups of `choices` (group -> option, Hydra's `runtime.choices`; this run's
    when None) compose to before the command line's values."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    if choices is None:
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    selection = [f"{group}={choice}" for group, choice in choices.items() if choice is not None and not group.startswith("hydra")]
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=selection)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=selection)


def default_of(key: str) -> Any:
    """The value `key` has in the config groups this run selected, before the command line's values (None
    when it has none): composed again, only when an error needs an example."""
    return OmegaConf.select(default_config(), key, default=None)


def _example(key: str, kind: type) -> str:
    """`key=<its default>` when the default is a valid value, else `key=1`."""
    value = default_of(key)
    valid = not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0 and (kind is float or isinstance(value, int))
    return f"{key}={value if valid else 1}"


def _positive(cfg: DictConfig, key: str, kind: type = int, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise UserError(f"{key}={value!r} must be a positive {kind.__name__}; e.g. {_example(key, kind)}")
    if not math.isfinite(value):
        raise UserError(f"{key}={value} must be a finite positive {kind.__name__}; e.g. {_example(key, kind)}")
    if value <= 0:
        raise UserError(f"{key}={value} must be positive; e.g. {_example(key, kind)}")


def _ema_decay(cfg: DictConfig) -> None:
    value = cfg.trainer.get("ema_decay")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UserError(f"trainer.ema_decay={value!r} must be a number between 0 and 1, or null for none; e.g. trainer.ema_decay=0.998")


def _choice(value: object, key: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of {'|'.join(choices)}; e.g. {key}={choices[0]}")


def _lr_find_settings(cfg: DictConfig) -> None:
    """UserError naming the key, value and fix for a bad `trainer.lr_find` value (the LR range test's, s18exp/lr_find/)."""
    s = cfg.trainer.get("lr_find")
    if s is None:
        if cfg.trainer.lr == AUTO:
            raise UserError("trainer.lr=auto needs the trainer.lr_find settings; restore them in conf/trainer/")
        return
    key = "trainer.lr_find"
    for name, example in (("start_lr", 1e-6), ("end_lr", 1.0), ("diverge_factor", 4)):
        value = s[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise UserError(f"{key}.{name}={value!r} must be a positive number; e.g. {key}.{name}={example}")
    if s.end_lr <= s.start_lr:
        raise UserError(f"{key}.end_lr={s.end_lr} must be above {key}.start_lr={s.start_lr}; e.g. {key}.end_lr=1.0")
    if isinstance(s.num_steps, bool) or not isinstance(s.num_steps, int) or s.num_steps < 2:
        raise UserError(f"{key}.num_steps={s.num_steps!r} must be an integer of at least 2; e.g. {key}.num_steps=100")
    if isinstance(s.smooth, bool) or not isinstance(s.smooth, (int, float)) or not 0 <= s.smooth < 1:
        raise UserError(f"{key}.smooth={s.smooth!r} must be in [0, 1) (0 = no smoothing); e.g. {key}.smooth=0.9")
    if s.diverge_factor <= 1:
        raise UserError(f"{key}.diverge_factor={s.diverge_factor} must be above 1; e.g. {key}.diverge_factor=4")
    if s.rule not in LR_FIND_RULES:
        raise UserError(f"{key}.rule={s.rule!r} is not one of {'|'.join(LR_FIND_RULES)}; e.g. {key}.rule={LR_FIND_RULES[0]}")


def validate(cfg: DictConfig, lr_find: bool = False) -> None:
    """Raise UserError naming the key, the value and the fix for the first bad value found; `lr_find`: the
    config is for the LR range test's command, which needs `trainer.lr_find` whatever `trainer.lr` says. The
    keys that only one task has are checked by that task (`Task.check_config`)."""
    _positive(cfg, "trainer.max_epochs")
    _positive(cfg, "trainer.batch_size")
    if cfg.trainer.lr != AUTO:  # auto: the LR range test picks it (s18exp/lr_find/)
        _positive(cfg, "trainer.lr", float)
    _lr_find_settings(cfg)
    _positive(cfg, "trainer.grad_clip", float, allow_none=True)
    _ema_decay(cfg)
    _positive(cfg, "data.image_size")
    for split in ("train", "val", "test"):
        _positive(cfg, f"data.limit_{split}", allow_none=True)
    _choice(cfg.trainer.precision, "trainer.precision", PRECISIONS)
    _choice(cfg.wandb.mode, "wandb.mode", WANDB_MODES)
    _choice(cfg.eval.weights, "eval.weights", TEST_WEIGHTS)
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
    task_class = get_class(cfg.task._target_)
    task_class.check_config(cfg)
    check_size_schedule(cfg, task_class.name)
    if lr_find and cfg.trainer.get("lr_find") is None:
        raise UserError("the config has no trainer.lr_find settings; restore them in conf/trainer/default.yaml")
