"""A Hydra callback: every multirun ends by writing the report of its sweep dir (and printing the table).

Registered in conf/hydra/default.yaml under `hydra.callbacks.report`; turn it off for one sweep with
`hydra.callbacks.report.enabled=false`. It never fails a sweep: a report error is a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    def __init__(self, enabled: bool = True, wandb: bool = False) -> None:
        self.enabled = enabled
        self.wandb = wandb

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        try:
            from s18exp.report.build import make_report

            sweep_dir = Path(str(config.hydra.sweep.dir))
            make_report(sweep_dir, wandb=self.wandb)
        except Exception as exc:  # the sweep's runs are done and on disk; a report failure must not hide that
            log.warning("the sweep report could not be written: %s: %s", type(exc).__name__, exc)
            print(f"warning: the sweep report could not be written ({type(exc).__name__}: {exc}); "
                  "run `python -m s18exp.report SWEEP_DIR` by hand")
