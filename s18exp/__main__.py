"""`python -m s18exp` and the `s18exp` console script: the Hydra entry point, nothing else."""

from __future__ import annotations

import logging
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from s18exp.openmp import wait_passively_unless_set

wait_passively_unless_set()  # before anything loads torch and its OpenMP runtime (s18exp/openmp.py)

import hydra
from omegaconf import DictConfig, OmegaConf

from s18exp import distributed
from s18exp.paths import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Runs one job. A single run that fails exits 2 (bad input) or 1 (training failed). In a sweep a failed
    job records why in its summary.json and the sweep goes on to the next job; at the end the sweep exits 1
    naming the failed jobs (s18exp.hydra_callbacks.SweepOutcome). Under a search (a sweeper with an
    `objective`, conf/hparams_search/) returns that summary value for the sweeper to optimise, and raises
    instead when the run fails, so that the search records the trial as failed and goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from s18exp import console
    from s18exp.errors import TrainingError, UserError, one_line
    from s18exp.run import run
    from s18exp.summary import summary_stamp
    from s18exp.resuming import resume_command
    from s18exp.run_settings import RunDirTaken, holds_a_run, remove_unstarted
    from s18exp.stopping import Interrupted

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    objective = OmegaConf.select(hydra_cfg, "sweeper.objective", default=None) if multirun else None
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if multirun and distributed.launched_by_torchrun():  # a config that sets hydra.mode=MULTIRUN itself
        console.error(MULTIRUN_UNDER_TORCHRUN)
        sys.exit(2)
    before = summary_stamp(run_dir)
    unused_dir = not multirun and not holds_a_run(run_dir)
    try:
        summary = run(cfg)
    except Interrupted as exc:
        # Also ends a sweep or a search: its trial stays unfinished in the study, and a rerun continues it.
        console.error(str(exc))
        if distributed.init().is_main:
            key, folder = ("hydra.sweep.dir", hydra_cfg.sweep.dir) if multirun else ("hydra.run.dir", run_dir)
            console.info(f"to continue it: {resume_command(sys.argv[1:], key, Path(folder))}", markup=False)
        sys.exit(exc.exit_code)
    except (UserError, TrainingError) as exc:
        console.error(str(exc))
        if unused_dir and isinstance(exc, UserError) and distributed.init().is_main:
            remove_unstarted(run_dir, f"{hydra_cfg.job.name}.log")  # refused before training: leave no stray dir
        if multirun and not isinstance(exc, RunDirTaken):  # a refused job leaves the run it found as it was
            job_failed(run_dir, cfg, one_line(exc), before)
        if objective:
            raise
        if not multirun:
            sys.exit(2 if isinstance(exc, UserError) else 1)
        return None
    except Exception as exc:
        # An unforeseen error (a bug, the GPU out of memory): a single run shows its traceback; in a sweep the
        # other jobs still go on, the traceback goes to this job's log file.
        if not multirun:
            raise
        console.error(f"{type(exc).__name__}: {one_line(exc)} (the traceback is in {run_dir}'s log file)")
        logging.getLogger("s18exp").error("the job failed", exc_info=exc)
        job_failed(run_dir, cfg, f"{type(exc).__name__}: {one_line(exc)}", before)
        if objective:
            raise
        return None
    return objective_value(summary, objective) if objective else None


def job_failed(run_dir: Path, cfg: DictConfig, reason: str, stamp_before: object) -> None:
    """A sweep job failed: unless `run` already wrote its summary.json, write one that says why, so that the
    sweep's exit status and report name the job (s18exp.hydra_callbacks.SweepOutcome); the others go on."""
    from s18exp.summary import record_failure, summary_stamp

    if distributed.init().is_main and summary_stamp(run_dir) == stamp_before:
        record_failure(run_dir, cfg, reason)


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


def asks_for_multirun(argv: list[str]) -> bool:
    """Whether a command line starts a sweep or a search (`--multirun`, `-m`, `hparams_search=...`, `hydra.mode=MULTIRUN`)."""
    return any(
        arg in ("--multirun", "-m")
        or (arg.startswith("hparams_search=") and arg != "hparams_search=null")
        or arg == "hydra.mode=MULTIRUN"
        for arg in argv
    )


MULTIRUN_UNDER_TORCHRUN = (
    "--multirun and hparams_search cannot run under torchrun: every rank would start its own sweep; run the sweep "
    "without torchrun (its jobs use the GPUs one at a time), or run each job under torchrun on its own"
)


def main() -> None:
    from s18exp.keys import exit_on_unknown_keys

    exit_on_unknown_keys(sys.argv[1:])
    if distributed.launched_by_torchrun():
        if asks_for_multirun(sys.argv[1:]):
            print(f"error: {MULTIRUN_UNDER_TORCHRUN}", file=sys.stderr)
            sys.exit(2)
        _agree_on_run_dir()
    finished = False
    try:
        _hydra_main()
        finished = True
    finally:
        distributed.shutdown(wait_for_ranks=finished)


if __name__ == "__main__":
    main()
