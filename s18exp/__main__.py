"""`python -m s18exp` and the `s18exp` console script: the Hydra entry point, nothing else."""

from __future__ import annotations

import sys
from datetime import datetime

import hydra
from omegaconf import DictConfig

from s18exp import distributed
from s18exp.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from s18exp import console
    from s18exp.errors import TrainingError, UserError
    from s18exp.run import run
    from s18exp.stopping import Interrupted

    try:
        run(cfg)
    except UserError as exc:
        console.error(str(exc))
        sys.exit(2)
    except Interrupted as exc:
        console.error(str(exc))
        sys.exit(exc.exit_code)
    except TrainingError as exc:
        console.error(str(exc))
        # In a sweep the other jobs go on; the failed one says why in its summary.json.
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(1)


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
    if distributed.launched_by_torchrun():
        _agree_on_run_dir()
    _hydra_main()


if __name__ == "__main__":
    main()
