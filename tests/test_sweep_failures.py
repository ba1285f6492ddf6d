"""A sweep with failing jobs: every job runs, the sweep exits 1 naming the failed ones, the report lists them,
and each job's W&B run is finished, also when the job fails after its run started but before training.
(A sweep whose jobs all complete exits 0: tests/test_faults.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TinyPets, cli_env, smoke_overrides_for
from wandb_offline import offline_runs, read_run

pytestmark = pytest.mark.slow


def test_failed_jobs_do_not_stop_the_sweep_which_exits_1_naming_them(tiny_pets: TinyPets, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # eps=-1 makes the optimiser refuse to be built (a plain ValueError inside the run, after its W&B run
    # started); data.classes=nonsense is bad input that only the job itself finds (a value that config
    # validation would catch refuses the whole sweep before any job: tests/test_run_console.py); lr=1e30 makes
    # the loss NaN (a training failure).
    args = ["--multirun", *smoke_overrides_for(tiny_pets.root, tmp_path), "+trainer.optimizer.eps=-1.0,1e-8",
            "trainer.lr=1e30,1e-3", "data.classes=nonsense,trimap", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run([sys.executable, "-m", "s18exp", *args], cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"),
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 1, result.stderr[-3000:]
    jobs = {}
    for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        overrides = dict(o.lstrip("+").split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        jobs[(float(overrides["trainer.optimizer.eps"]), float(overrides["trainer.lr"]), overrides["data.classes"])] = job
    assert len(jobs) == 8  # every job ran, although the first failed
    good = jobs[(1e-8, 1e-3, "trimap")]
    assert json.loads((good / "summary.json").read_text())["status"] == "complete"
    failed = [job for key, job in jobs.items() if key != (1e-8, 1e-3, "trimap")]
    reasons = {job: json.loads((job / "summary.json").read_text()) for job in failed}
    assert all(summary["status"] == "failed" for summary in reasons.values())
    assert "data.classes='nonsense'" in reasons[jobs[(1e-8, 1e-3, "nonsense")]]["reason"]
    assert "loss is nan" in reasons[jobs[(1e-8, 1e30, "trimap")]]["reason"]
    assert "Invalid epsilon value" in reasons[jobs[(-1.0, 1e-3, "trimap")]]["reason"]

    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: 7 job(s) of the sweep failed: ")
    assert all(job.name in last for job in failed) and good.name not in last
    report = (sweep / "report.md").read_text()
    assert all(f"`{job.name}`" in report for job in failed)
    assert "Invalid epsilon value" in report and "loss is nan" in report
    assert all("\n" not in summary["reason"] for summary in reasons.values())  # one line each, in the report too

    # W&B: the job that failed after its run started finished it with exit code 1; the next job got its own run
    (broken_run,) = offline_runs(jobs[(-1.0, 1e-3, "trimap")])
    (good_run,) = offline_runs(good)
    assert read_run(broken_run).exit_code == 1
    assert read_run(good_run).exit_code == 0 and read_run(good_run).run_id != read_run(broken_run).run_id



def test_a_failed_job_under_the_joblib_launcher_lets_the_other_finish_and_the_sweep_exits_1(tiny_pets: TinyPets, tmp_path: Path) -> None:
    """Two jobs side by side in joblib's worker processes: data.classes=nonsense is refused by the run (bad
    input that only the job finds), data.classes=trimap trains."""
    sweep = tmp_path / "sweep"
    args = ["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *smoke_overrides_for(tiny_pets.root, tmp_path),
            "data.classes=nonsense,trimap", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run([sys.executable, "-m", "s18exp", *args], cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"),
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("Launching jobs") == 1 and "n_jobs=2" in result.stdout  # one batch of two worker processes
    jobs = {}
    for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        jobs[overrides["data.classes"]] = job
    failed, good = jobs["nonsense"], jobs["trimap"]
    assert json.loads((good / "summary.json").read_text())["status"] == "complete"
    reason = json.loads((failed / "summary.json").read_text())
    assert reason["status"] == "failed" and "data.classes='nonsense'" in reason["reason"]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: 1 job(s) of the sweep failed: ") and failed.name in last and good.name not in last
    assert "data.classes='nonsense'" in last
