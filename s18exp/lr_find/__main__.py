"""`python -m s18exp.lr_find [overrides]`: the LR range test of a composed config, a look before training.

It builds the config's task, data and model as a training run would, runs the test on the training split and
writes `lr_find.json` and `lr_find.png` to the run dir; it starts no W&B run and trains nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from s18exp import cli, console
from s18exp.config import validate
from s18exp.lr_find.auto import find_lr
from s18exp.lr_find.display import JSON_FILE, PNG_FILE
from s18exp.lr_find.range_test import Curve
from s18exp.paths import CONFIG_DIR
from s18exp.runtime import Runtime, resolve_device, resolve_precision, seed_everything
from s18exp.tasks import build


def lr_find(cfg: DictConfig) -> Curve:
    """Build the composed config's task, data and model, run the test, write its files."""
    validate(cfg, lr_find=True)
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
    cli.exit_on_user_error(lambda: lr_find(cfg))


if __name__ == "__main__":
    from s18exp.keys import exit_on_unknown_keys

    exit_on_unknown_keys(sys.argv[1:])
    main()
