"""`python -m s18exp` and the `s18exp` console script: the Hydra entry point, nothing else."""

from __future__ import annotations

import math
import sys
from datetime import datetime
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from s18exp import distributed
from s18exp.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Runs one job. Under a search (a sweeper with an `objective`, conf/hparams_search/) returns that
    summary value for the sweeper to optimise, and raises instead of exiting when the run fails, so that
    the search records the trial as failed and goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from s18exp import console
    from s18exp.errors import TrainingError, UserError
    from s18exp.run import run
    from s18exp.stopping import Interrupted

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    objective = OmegaConf.select(hydra_cfg, "sweeper.objective", default=None) if multirun else None
    try:
        summary = run(cfg)
    except UserError as exc:
        console.error(str(exc))
        if objective:
            raise
        sys.exit(2)
    except Interrupted as exc:
        # Also ends a search: its trial stays unfinished in the study, and a rerun continues it.
        console.error(str(exc))
        sys.exit(exc.exit_code)
    except TrainingError as exc:
        console.error(str(exc))
        if objective:
            raise
        # In a sweep the other jobs go on; the failed one says why in its summary.json.
        if not multirun:
            sys.exit(1)
        return None
    return objective_value(summary, objective) if objective else None


def objective_value(summary: dict[str, Any], key: str) -> float:
    """The number a search optimises, from a complete run's summary; an error when there is none."""
    from s18exp.errors import TrainingError, UserError

    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        numbers = sorted(k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise UserError(f"hydra.sweeper.objective={key} is not a number in summary.json; set it to one of {', '.join(numbers)}")
    if not math.isfinite(value):
        raise TrainingError(f"{key} is {value}; the trial counts as failed")
    return float(value)


def _agree_on_run_dir() -> None:
    """Under torchrun each rank composes its own config: rank 0's clock names the run dir for all of them,
    and only rank 0 writes Hydra's files and log."""
    dist = distributed.init()
    stamp = distributed.broadcast_object(datetime.now().strftime("%Y-%m-%d/%H-%M-%S"), dist)
    if not any(arg.startswith("hydra.run.dir=") for arg in sys.argv[1:]):
        sys.argv.append(f"hydra.run.dir=outputs/{stamp}_${{run_name}}")
    if not dist.is_main:
        sys.argv += ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[]"]


def main() -> None:
    from s18exp.keys import exit_on_unknown_keys

    exit_on_unknown_keys(sys.argv[1:])
    if distributed.launched_by_torchrun():
        _agree_on_run_dir()
    _hydra_main()


if __name__ == "__main__":
    main()
