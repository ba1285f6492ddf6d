"""`python -m s18exp` and the `s18exp` console script: the Hydra entry point, nothing else."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from s18exp.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from s18exp import console
    from s18exp.errors import UserError
    from s18exp.run import run

    try:
        run(cfg)
    except UserError as exc:
        console.error(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()
