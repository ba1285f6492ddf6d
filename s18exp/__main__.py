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
    except Exception as exc:
        # hydra.utils.instantiate wraps what a constructor raises in an InstantiationException: unwrap it.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None:
            raise
        console.error(str(cause))
        sys.exit(2)


if __name__ == "__main__":
    main()
