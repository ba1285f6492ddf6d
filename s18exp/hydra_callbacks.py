"""Hydra callbacks of s18exp (registered in conf/hydra/default.yaml)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def unwritable_reason(folder: str | Path) -> str | None:
    """Why `folder` could not be created or written, or None when it can (nothing is created to find out)."""
    path = Path(folder).expanduser().absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


class OutputDirCheck(Callback):
    """Stops with one line, before Hydra creates anything, when the run or sweep dir cannot be written."""

    def _check(self, key: str, folder: str) -> None:
        reason = unwritable_reason(folder)
        if reason:
            print(f"error: cannot write the output dir {folder}: {reason}; set {key} to a writable folder", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)
