"""Hydra callbacks of s18exp (registered in conf/hydra/default.yaml)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict


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


def _refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _task_config(config: DictConfig) -> DictConfig:
    """The job's own config: Hydra's full config less its `hydra` node."""
    task = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    with open_dict(task):
        task.pop("hydra", None)
    return task


class ConfigCheck(Callback):
    """Stops with one line, before Hydra creates the run dir (or any job dir of a sweep), when a value of the
    composed config is bad (s18exp.config.validate: the line names the key, the value and the fix), so that a
    refused command leaves no dir behind. Sweeps of Hydra's basic sweeper are checked job by job up front: one
    bad job refuses the sweep before any job runs. A config that does not resolve here, and a search's trials,
    are left to the run, which validates itself again."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # what validation's examples read; Hydra sets it again for the job
        _validate(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not str(config.hydra.sweeper._target_).endswith(".BasicSweeper"):
            return
        for number, (_, job) in enumerate(_sweep_jobs(config)):
            _validate(job, f"job {number} ({' '.join(job.hydra.overrides.task)}): ")


class ResumeOffer(Callback):
    """A single run in a new timestamped dir (no `hydra.run.dir=` given) whose settings match an interrupted
    run under the same `outputs/` folder: one line naming that run and the command that continues it, then
    the run starts afresh as asked (s18exp/resuming.py)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        from s18exp import console
        from s18exp.resuming import interrupted_twin, resume_command

        if any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra):
            return
        HydraConfig.instance().set_config(config)
        try:
            task = _task_config(config)
            if str(OmegaConf.select(task, "trainer.resume", default="auto")) != "auto":
                return
            found = interrupted_twin(task, Path(str(config.hydra.run.dir)).parent.parent)
        except Exception:
            return  # a config that does not resolve: the run itself reports it
        if found is not None:
            run_dir, epochs = found
            # On the terminal only: Hydra's logging is not the run's yet, and would repeat the line there.
            console.console.print(
                f"{run_dir} holds an interrupted run of these settings (stopped after epoch {epochs}); this command "
                f"starts afresh; to continue that run instead: {resume_command(sys.argv[1:], 'hydra.run.dir', run_dir)}",
                markup=False,
            )


def _validate(config: DictConfig, prefix: str = "") -> None:
    from s18exp.config import validate
    from s18exp.errors import UserError

    try:
        task = _task_config(config)
        OmegaConf.to_container(task, resolve=True)
    except Exception:
        return  # a config that does not resolve: the run itself reports it
    try:
        validate(task)
    except UserError as exc:
        _refuse(prefix + str(exc))


class RunDirCheck(Callback):
    """Stops with one line, before Hydra writes anything into them, when a run dir (or any job dir of a sweep)
    holds a run made with other settings than the command's (s18exp/run_settings.py): a rerun continues or
    skips a run of the same settings, never mixes two. Sweeps of Hydra's basic sweeper are checked job by job
    up front; a search checks its study's settings itself, and each trial's run checks its dir again."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from s18exp.run_settings import RunDirTaken, check_run_dir

        try:
            check_run_dir(_task_config(config), Path(str(config.hydra.run.dir)), choices=config.hydra.runtime.choices)
        except RunDirTaken as exc:
            _refuse(str(exc))
        except Exception:
            return  # a config that does not resolve: the run itself reports it

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from s18exp.run_settings import RunDirTaken, check_run_dir

        if not Path(str(config.hydra.sweep.dir)).is_dir() or not str(config.hydra.sweeper._target_).endswith(".BasicSweeper"):
            return
        try:
            for job_dir, job in _sweep_jobs(config):
                try:
                    task = _task_config(job)
                    OmegaConf.to_container(task, resolve=True)
                except Exception:
                    continue  # the job reports its own config error
                check_run_dir(task, job_dir, "hydra.sweep.dir", choices=job.hydra.runtime.choices)
        except RunDirTaken as exc:
            _refuse(str(exc))


def _sweep_jobs(config: DictConfig) -> Iterator[tuple[Path, DictConfig]]:
    """(job dir, job config) of every job of a basic sweep, numbered as Hydra's basic sweeper and launchers
    number them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create(config_loader=loader).parse_overrides([*params, *config.hydra.overrides.task])
    jobs = [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    master = HydraConfig.instance().cfg
    try:
        for number, job in enumerate(jobs):
            job_config = loader.load_sweep_config(master_config=config, sweep_overrides=list(job))
            with open_dict(job_config):
                job_config.hydra.job.id = number
                job_config.hydra.job.num = number
            HydraConfig.instance().set_config(job_config)  # what ${hydra:...} in the job's names reads
            yield Path(str(job_config.hydra.sweep.dir)) / str(job_config.hydra.sweep.subdir), job_config
    finally:
        HydraConfig.instance().cfg = master


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


def summary_files(sweep_dir: Path) -> dict[Path, tuple[int, int]]:
    """Every job's summary.json under the sweep dir, with (inode, mtime): an atomic write changes both."""
    found = {}
    for file in sweep_dir.rglob("summary.json"):
        if "wandb" in file.relative_to(sweep_dir).parts:
            continue
        stat = file.stat()
        found[file] = (stat.st_ino, stat.st_mtime_ns)
    return found


def failed_jobs(sweep_dir: Path, before: dict[Path, tuple[int, int]]) -> list[tuple[str, str]]:
    """(job dir, reason) of each job whose summary.json this sweep wrote with a status other than complete
    (a job skipped as already complete writes nothing). Works for every launcher: jobs in this process, in
    joblib workers or on Slurm nodes all leave their summary.json in the sweep dir."""
    failed = []
    for file, stamp in sorted(summary_files(sweep_dir).items()):
        if before.get(file) == stamp:
            continue
        try:
            summary = json.loads(file.read_text())
        except (OSError, ValueError):
            summary = {"status": "unreadable", "reason": "summary.json could not be read"}
        if not isinstance(summary, dict) or summary.get("status") != "complete":
            reason = summary.get("reason") if isinstance(summary, dict) else None
            failed.append((str(file.parent.relative_to(sweep_dir)), " ".join(str(reason or "no reason recorded").split())))
    return failed


def failed_trials(sweep_dir: Path) -> dict[int, str]:
    """trial number -> reason, for every failed trial of every study in `<sweep dir>/optuna.db` (none when absent)."""
    db = sweep_dir / "optuna.db"
    if not db.is_file():
        return {}
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    failed = {}
    for name in optuna.study.get_all_study_names(storage):
        for trial in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            failed[trial.number] = " ".join(str(trial.user_attrs.get("fail_reason") or "no reason recorded").split())
    return failed


class SweepOutcome(Callback):
    """Ends a sweep whose jobs did not all complete, or a search whose trials did not all complete, with exit
    status 1 and one line naming the failed jobs or trials (each job's summary.json, or the study, holds the
    whole reason; the report lists them). Every job has run by then: a failed job does not stop the others
    (s18exp.__main__), and a search goes on past a failed trial. Only what this command ran counts: a job
    skipped as complete writes nothing, and a search's trials that failed in an earlier call are not named again.

    Registered before the report callback in conf/hydra/default.yaml: Hydra calls `on_multirun_end` in the
    reverse order, so the report is written before the sweep exits."""

    def __init__(self) -> None:
        self.before: dict[Path, tuple[int, int]] = {}
        self.failed_before: dict[int, str] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.before = summary_files(sweep_dir) if sweep_dir.is_dir() else {}
        self.failed_before = failed_trials(sweep_dir) if config.hydra.sweeper.get("objective") else {}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        where = f"{sweep_dir / 'report.md'}" if (sweep_dir / "report.md").is_file() else None
        if config.hydra.sweeper.get("objective"):
            failed = [(f"trial {n}", reason) for n, reason in sorted(failed_trials(sweep_dir).items()) if n not in self.failed_before]
            what, where = "trial(s) of the search", where or "the study's report (python -m s18exp.report SWEEP_DIR)"
        else:
            failed = failed_jobs(sweep_dir, self.before) if sweep_dir.is_dir() else []
            what, where = "job(s) of the sweep", where or "each job's summary.json"
        if failed:
            names = "; ".join(f"{job} ({reason[:120]})" for job, reason in failed)
            print(f"error: {len(failed)} {what} failed: {names}; see {where}", file=sys.stderr)
            sys.exit(1)
