"""The Weights & Biases run of one job: created in the run dir, finished when the job ends.

`wandb.mode=auto` logs online when an API key is configured (WANDB_API_KEY or ~/.netrc) and offline
otherwise; offline runs are real W&B runs in `<run dir>/wandb/`, uploaded later with `wandb sync`.
A W&B failure never stops training: the tracker falls back to offline, then to nothing.
`run_tracker` builds a training run's W&B run from its config (`wandb.*`) and task.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from s18exp import console


def logged_in() -> bool:
    """True when an API key for W&B is in the environment or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (OSError, netrc.NetrcParseError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
    return host in hosts


def resolve_mode(mode: str) -> str:
    """`auto` -> online or offline by `logged_in()`; the other modes unchanged."""
    if mode == "auto":
        return "online" if logged_in() else "offline"
    return mode


class Tracker:
    """One W&B run per job; every method is a no-op when W&B is disabled or has failed."""

    def __init__(
        self,
        *,
        mode: str,
        project: str,
        entity: str | None,
        run_dir: Path,
        name: str,
        group: str,
        job_type: str,
        tags: list[str],
        config: dict[str, Any],
        init_timeout: float = 30,
        run_id: str | None = None,
    ) -> None:
        self.run = None
        self.mode = resolve_mode(mode)
        if self.mode == "disabled":
            return
        import wandb

        self._wandb = wandb
        kwargs = dict(
            project=project, entity=entity, dir=str(run_dir), name=name, group=group,
            job_type=job_type, tags=tags, config=config,
        )
        if run_id:
            kwargs.update(id=run_id, resume="allow")
        try:
            self.run = wandb.init(mode=self.mode, settings=self._settings(init_timeout), **kwargs)
        except Exception as exc:
            if self.mode != "online":
                console.warn(f"W&B could not start ({exc}); going on without it")
                return
            console.warn(f"W&B online could not start ({type(exc).__name__}); going on with an offline run")
            self.mode = "offline"
            try:
                self.run = wandb.init(mode="offline", settings=self._settings(init_timeout), **kwargs)
            except Exception as exc2:
                console.warn(f"W&B could not start offline either ({exc2}); going on without it")
                return
        if self.mode == "offline":
            console.info(f"W&B run saved offline; upload it later with: wandb sync {self.run.dir.rsplit('/files', 1)[0]}")

    @property
    def run_id(self) -> str | None:
        """The W&B run's id (kept in checkpoints, so that a resumed job continues the same W&B run)."""
        return self.run.id if self.run is not None else None

    def _settings(self, init_timeout: float) -> Any:
        return self._wandb.Settings(init_timeout=init_timeout, console="off", silent=True)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            console.warn(f"W&B {what} failed ({exc}); training goes on")

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._call("log", lambda: self.run.log(metrics, step=step))

    def update_config(self, values: dict[str, Any]) -> None:
        self._call("config", lambda: self.run.config.update(values, allow_val_change=True))

    def summarize(self, metrics: dict[str, Any]) -> None:
        self._call("summary", lambda: self.run.summary.update(metrics))

    def image(self, *args: Any, **kwargs: Any) -> Any:
        """A `wandb.Image` built from the arguments (None when W&B is off)."""
        return self._wandb.Image(*args, **kwargs) if self.run is not None else None

    def log_artifact(self, path: Path, name: str, kind: str = "model") -> None:
        def upload() -> None:
            artifact = self._wandb.Artifact(name, type=kind)
            artifact.add_file(str(path))
            self.run.log_artifact(artifact)

        self._call("artifact", upload)

    def finish(self, exit_code: int = 0) -> None:
        self._call("finish", lambda: self.run.finish(exit_code=exit_code))
        self.run = None


def wandb_group(cfg: DictConfig) -> str:
    """The W&B group: set explicitly, else the sweep dir's name in a multirun, else the run's own name."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg.wandb.group:
        return cfg.wandb.group
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir).name
    return cfg.run_name


class DescribedTask(Protocol):
    """What the W&B run takes from a task (s18exp.tasks.Task): its identity and the fields that make its combo."""

    combo_keys: tuple[str, ...]

    def describe(self) -> dict[str, Any]: ...


def run_tracker(cfg: DictConfig, run_dir: Path, task: DescribedTask, config: dict[str, Any], run_id: str | None, main: bool) -> Tracker:
    """The W&B run of a training job, per `wandb.*` (disabled on every rank but the `main` one): named after the
    run, in its group, the task as its job type and the task's combo as its tags, holding `config`; `run_id`
    (a resumed checkpoint's) continues that W&B run."""
    identity = task.describe()
    return Tracker(
        mode=cfg.wandb.mode if main else "disabled",
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        run_dir=run_dir,
        name=cfg.run_name,
        group=wandb_group(cfg),
        job_type=identity["task"],
        tags=[str(identity[key]) for key in task.combo_keys],
        config=config,
        init_timeout=cfg.wandb.init_timeout,
        run_id=run_id,
    )
