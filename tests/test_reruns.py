"""Reruns in a run or sweep dir never mix two runs: a rerun with other settings stops with one line before
anything is written, a rerun with the same settings skips complete jobs or continues them; one search per
sweep dir at a time, and a study file whose unfinished trial holds a value outside the search space runs
nothing; sweeps and searches are refused under torchrun; a deterministic run repeats; `num_threads=auto` is
not what an earlier job of the same sweep set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import TinyPets, cli_env, smoke_overrides_for
from test_search import STUDY, load, run_dirs, search_args

pytestmark = pytest.mark.slow

TEST_KEYS = ("test/miou", "test/dice", "test/pixel_acc", "test/iou_pet", "test/iou_background", "test/iou_border", "test/loss")


def run_cli(args: list[str], work: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s18exp", *args], cwd=work, env={**cli_env(work / "wandb-home"), **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def epochs_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- single run dirs ----------------------------------------------------------------------------------


def test_rerun_with_another_lr_is_refused_and_replaces_only_when_asked(tiny_pets: TinyPets, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    base = [*smoke_overrides_for(tiny_pets.root, tmp_path), f"hydra.run.dir={run_dir}"]
    first = run_cli([*base, "trainer.lr=0.001"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = tree(run_dir)
    assert {"summary.json", ".hydra/config.yaml", "checkpoints/last.pt", "checkpoints/best.pt"} <= before.keys()

    refused = run_cli([*base, "trainer.lr=0.002"], tmp_path)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    (line,) = error_lines(refused)
    assert line.startswith("error: ") and "trainer.lr: 0.001 there, 0.002 now" in line and "trainer.resume=never" in line
    assert tree(run_dir) == before  # not a byte written, Hydra's files included

    replaced = run_cli([*base, "trainer.lr=0.002", "trainer.resume=never"], tmp_path)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert "skipping" not in replaced.stdout
    assert summary(run_dir)["status"] == "complete" and epochs_logged(run_dir) == [1]
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() != before["checkpoints/last.pt"]
    assert "lr: 0.002" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert json.loads((run_dir / "settings.json").read_text())["settings"]["trainer.lr"] == 0.002


def test_complete_run_without_a_schedule_continues_to_more_epochs(tiny_pets: TinyPets, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    base = [*smoke_overrides_for(tiny_pets.root, tmp_path), f"hydra.run.dir={run_dir}", "trainer.scheduler=null"]
    assert run_cli([*base, "trainer.max_epochs=1"], tmp_path).returncode == 0
    assert summary(run_dir)["epochs_completed"] == 1
    result = run_cli([*base, "trainer.max_epochs=2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping" not in result.stdout
    assert summary(run_dir)["status"] == "complete" and summary(run_dir)["epochs_completed"] == 2
    assert epochs_logged(run_dir) == [1, 2]  # epoch 1 kept, epoch 2 trained on top of it
    assert "resuming from" in (run_dir / "s18exp.log").read_text()


# --- sweeps ------------------------------------------------------------------------------------------------


def test_sweep_rerun_with_another_lr_stops_before_any_job_and_the_same_one_skips(tiny_pets: TinyPets, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["--multirun", *smoke_overrides_for(tiny_pets.root, tmp_path), "seed=0,1", f"hydra.sweep.dir={sweep}"]
    first = run_cli([*args, "trainer.lr=0.001"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(jobs) == 2
    before = tree(sweep)

    refused = run_cli([*args, "trainer.lr=0.02"], tmp_path)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    (line,) = error_lines(refused)
    assert "trainer.lr: 0.001 there, 0.02 now" in line and "hydra.sweep.dir" in line
    assert "Launching" not in refused.stdout and "epoch" not in refused.stdout
    assert tree(sweep) == before

    same = run_cli([*args, "trainer.lr=0.001"], tmp_path)
    assert same.returncode == 0, same.stderr[-3000:]
    assert same.stdout.count("is complete; skipping") == 2
    assert all((job / "summary.json").read_bytes() == before[f"{job.name}/summary.json"] for job in jobs)
    assert all((job / "checkpoints" / "last.pt").read_bytes() == before[f"{job.name}/checkpoints/last.pt"] for job in jobs)


def test_auto_threads_in_a_sequential_sweep_are_not_the_previous_jobs(tiny_pets: TinyPets, tmp_path: Path) -> None:
    """Job 0 sets one thread; job 1 (num_threads=auto, run alone) gets the process's starting count, here
    OMP_NUM_THREADS=2, not the 1 that job 0 left behind."""
    sweep = tmp_path / "sweep"
    args = ["--multirun", *smoke_overrides_for(tiny_pets.root, tmp_path), "data.limit_train=4", "data.limit_val=2", "data.limit_test=2",
            "trainer.num_threads=1,auto", f"hydra.sweep.dir={sweep}"]
    result = run_cli(args, tmp_path, env={"OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    by_job = {int(p.parent.name.split("_")[0]): json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert (by_job[0]["torch_threads"], by_job[1]["torch_threads"]) == (1, 2)


# --- searches ----------------------------------------------------------------------------------------------


def test_a_second_search_on_one_sweep_dir_is_refused(tiny_pets: TinyPets, tmp_path: Path) -> None:
    from hydra_plugins.s18exp_optuna_sweeper.optuna_sweeper import hold_search_lock

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    lock = hold_search_lock(sweep)
    try:
        result = run_cli(search_args(tiny_pets.root, tmp_path, sweep, "hydra.sweeper.n_trials=1"), tmp_path)
    finally:
        lock.close()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = error_lines(result)
    assert line.startswith("error: another search is running in ") and "hydra.sweep.dir" in line
    assert not run_dirs(sweep) and "Launching" not in result.stdout
    hold_search_lock(sweep).close()  # the lock is free again once its holder lets go


def test_an_unfinished_trial_with_a_value_outside_the_space_runs_nothing(tiny_pets: TinyPets, tmp_path: Path) -> None:
    """optuna.db as an edited file leaves it: trial 0 running, its trainer.lr (a float interval in the
    search space) a resolver call that would write a marker when the optimiser is built."""
    from optuna.distributions import CategoricalDistribution

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    marker = tmp_path / "pwned"
    crafted = (
        "${oc.create:{_target_: pathlib.Path.write_text, "
        f"_args_: [{{_target_: pathlib.Path, _args_: [{marker}]}}, pwned]}}}}"
    )
    params = {"trainer.lr": crafted, "trainer.weight_decay": 1e-4, "augment.scale_min": 0.9, "loss": "dice", "model.width": 4}
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{sweep / 'optuna.db'}", direction="maximize")
    trial = study.ask({key: CategoricalDistribution([value]) for key, value in params.items()})
    assert trial.params["trainer.lr"] == crafted

    result = run_cli(search_args(tiny_pets.root, tmp_path, sweep, "hydra.sweeper.n_trials=2"), tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = error_lines(result)
    assert line.startswith("error: trial 0 in ") and "trainer.lr=" in line and "is not a value of the search space" in line
    assert not marker.exists()
    assert not run_dirs(sweep) and "Launching" not in result.stdout
    assert [t.state for t in load(sweep).trials] == [optuna.trial.TrialState.RUNNING]


# --- torchrun ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("asks", [["--multirun", "seed=0,1"], ["hparams_search=pets_optuna"]])
def test_sweeps_and_searches_are_refused_under_torchrun(tiny_pets: TinyPets, tmp_path: Path, asks: list[str]) -> None:
    """WORLD_SIZE=2 is what torchrun sets for each rank; the refusal comes before any rank would join a group."""
    sweep = tmp_path / "sweep"
    result = run_cli([*asks, *smoke_overrides_for(tiny_pets.root, tmp_path), f"hydra.sweep.dir={sweep}"], tmp_path,
                     env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, timeout=60)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = error_lines(result)
    assert line.startswith("error: --multirun and hparams_search cannot run under torchrun")
    assert not sweep.exists() and not (tmp_path / "multirun").exists()


# --- trainer.deterministic ----------------------------------------------------------------------------------


def test_deterministic_cpu_run_repeats_and_a_gpu_upsample_run_is_refused_first(tiny_pets: TinyPets, tmp_path: Path) -> None:
    base = [*smoke_overrides_for(tiny_pets.root, tmp_path), "trainer.deterministic=true", "trainer.precision=fp32"]
    scores = []
    for name in ("a", "b"):
        result = run_cli([*base, f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        scores.append({key: summary(tmp_path / name)[key] for key in TEST_KEYS})
    assert scores[0] == scores[1]

    # no GPU here: the refusal must come before CUDA is touched, which would fail otherwise
    run_dir = tmp_path / "gpu"
    gpu = [a for a in base if not a.startswith("trainer.device=")]
    result = run_cli([*gpu, "trainer.device=cuda", "decoder=upsample", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = error_lines(result)
    assert "decoder=upsample" in line and "trainer.deterministic=false" in line
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


def test_a_setting_newer_than_the_run_counts_only_when_it_leaves_its_default() -> None:
    """A run dir recorded before a setting existed is the same run as a command that leaves the new setting at
    its default; a command that sets it is not. Keys both sides have compare as they are."""
    from s18exp.run_settings import differences

    before = {"trainer.lr": 0.001, "model.width": 8}
    defaults = {"trainer.size_schedule.start_size": None, "trainer.size_schedule.ramp_end": 0.7}
    def default_of(key: str) -> object:
        return defaults.get(key, object())

    now = {**before, **defaults}
    assert differences(before, now, default_of=default_of) == []
    assert differences(before, {**now, "trainer.size_schedule.start_size": 64}, default_of=default_of) == [
        "trainer.size_schedule.start_size: absent there, 64 now"
    ]
    assert differences(before, now) == [
        "trainer.size_schedule.ramp_end: absent there, 0.7 now", "trainer.size_schedule.start_size: absent there, null now"
    ]
    assert differences({**before, "model.width": 16}, now, default_of=default_of) == ["model.width: 16 there, 8 now"]
