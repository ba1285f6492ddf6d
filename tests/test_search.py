"""Hyper-parameter search with Optuna (`hparams_search=pets_optuna`), end to end through `python -m s18exp`
in a subprocess on the tiny pets folder: the study and its run dirs, continuing it, its report, and its
failures. The search space is the config's, with model.width narrowed to tiny widths from the command line.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import TinyPets, cli_env, smoke_overrides_for
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from wandb_offline import offline_runs, read_run

from s18exp.paths import CONFIG_DIR
from s18exp.report.__main__ import main as report_main

pytestmark = pytest.mark.slow

STUDY = "pets_unet"  # conf/hparams_search/pets_optuna.yaml
OBJECTIVE = "best_val/miou"
# Trial 1 as a sweep killed while training it leaves it: running in the study, with these parameters.
UNFINISHED_PARAMS = {
    "trainer.lr": 0.002, "trainer.weight_decay": 1e-4, "augment.scale_min": 0.9, "loss": "dice", "model.width": 4,
}


@pytest.mark.parametrize(
    ("overrides", "study", "objective"),
    [(["hparams_search=pets_optuna"], "pets_unet", "best_val/miou"), (["task=vae", "hparams_search=vae_optuna"], "vae_mnist", "best_val/elbo")],
)
def test_search_configs_search_keys_of_their_task(overrides: list[str], study: str, objective: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
        plain = compose("config", return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith(".OptunaSweeper") and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert (sweeper.study_name, sweeper.objective) == (study, objective)
    for key in sweeper.params:
        assert key in cfg.hydra.runtime.choices or OmegaConf.select(cfg, key) is not None, key
    assert plain.hydra.sweeper._target_.endswith(".BasicSweeper") and plain.hydra.mode is None


def search_args(tiny_root: Path, work: Path, sweep: Path, *extra: str) -> list[str]:
    base = [a for a in smoke_overrides_for(tiny_root, work) if not a.startswith("model.width=")]
    return [
        "hparams_search=pets_optuna", *base, "model.width=choice(4,8)",
        "data.limit_train=8", "data.limit_val=4", "data.limit_test=4", f"hydra.sweep.dir={sweep}", *extra,
    ]


def run_cli(args: list[str], work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s18exp", *args],
        cwd=work, env=cli_env(work / "wandb-home"), capture_output=True, text=True, timeout=300,
    )


def load(sweep: Path) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{sweep / 'optuna.db'}")


def run_dirs(sweep: Path) -> list[Path]:
    return sorted((p.parent for p in sweep.glob("*/.hydra")), key=lambda p: int(p.name.split("_")[0]))


def leave_unfinished_trial(sweep: Path, params: dict[str, Any]) -> None:
    study = load(sweep)
    study.enqueue_trial(params)
    assert study.ask(fixed_distributions=study.trials[0].distributions).number == 1


@pytest.fixture(scope="module")
def study_sweep(tiny_pets: TinyPets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-trial study made in two calls: the first runs trial 0 and stops (n_trials=1); trial 1 is then left
    unfinished as a killed sweep leaves it; the second call (n_trials=3) finishes trial 1 and runs trial 2."""
    work = tmp_path_factory.mktemp("search")
    sweep = work / "sweep"
    first = run_cli(search_args(tiny_pets.root, work, sweep, "hydra.sweeper.n_trials=1"), work)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    (trial0,) = run_dirs(sweep)
    stamp = (trial0 / "metrics.jsonl").stat().st_mtime_ns
    leave_unfinished_trial(sweep, UNFINISHED_PARAMS)
    second = run_cli(search_args(tiny_pets.root, work, sweep, "hydra.sweeper.n_trials=3"), work)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return {"work": work, "sweep": sweep, "first": first, "second": second, "trial0": trial0, "stamp": stamp}


def test_study_has_three_trials_each_in_its_job_numbered_run_dir(study_sweep: dict[str, Any]) -> None:
    sweep = study_sweep["sweep"]
    assert (sweep / "optuna.db").is_file()
    dirs = run_dirs(sweep)
    assert [d.name.split("_")[0] for d in dirs] == ["0", "1", "2"]
    trials = load(sweep).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial, run_dir in zip(trials, dirs):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "complete" and trial.value == summary[OBJECTIVE]
        assert trial.user_attrs["run_dir"] == run_dir.name
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        assert config.trainer.lr == trial.params["trainer.lr"] and config.loss.name == trial.params["loss"]
    # One W&B run per trial, all in the sweep's group.
    runs = [read_run(folder) for d in dirs for folder in offline_runs(d)]
    assert len(runs) == 3 and len({r.run_id for r in runs}) == 3
    assert {r.group for r in runs} == {sweep.name}


def test_rerun_finishes_the_unfinished_trial_and_trains_only_the_missing_ones(study_sweep: dict[str, Any]) -> None:
    second = study_sweep["second"].stdout
    assert "1 trial(s) finished, 1 left running by an earlier call (continued now), 1 to start" in second
    launched = [line.split("#", 1)[1].split(" :")[0] for line in second.splitlines() if "\t#" in line]
    assert launched == ["1", "2"]
    assert (study_sweep["trial0"] / "metrics.jsonl").stat().st_mtime_ns == study_sweep["stamp"]
    trial1 = load(study_sweep["sweep"]).trials[1]
    assert trial1.params == UNFINISHED_PARAMS
    assert trial1.user_attrs["run_dir"] == "1_mp_tr_dice-s0"


def test_report_names_the_best_trial_and_its_command_reproduces_that_config(study_sweep: dict[str, Any]) -> None:
    sweep = study_sweep["sweep"]
    (sweep / "report.md").unlink()
    assert report_main([str(sweep)]) == 0  # the report CLI finds the study by itself
    report = (sweep / "report.md").read_text()
    best = load(sweep).best_trial
    assert f"Best trial: {best.number}, {OBJECTIVE} = {best.value:.6g}" in report
    assert (sweep / f"report-search-{STUDY}-objective.png").is_file()
    assert "Parameter importances" in report
    (command,) = [line.strip() for line in report.splitlines() if line.startswith("    python -m s18exp ")]
    overrides = shlex.split(command)[3:]
    assert not any(o.startswith("hparams_search") for o in overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        composed = compose("config", overrides=overrides)
    trained = OmegaConf.load(sweep / best.user_attrs["run_dir"] / ".hydra" / "config.yaml")
    assert OmegaConf.to_container(composed) == OmegaConf.to_container(trained)


def test_rerun_with_other_fixed_settings_is_refused(study_sweep: dict[str, Any], tiny_pets: TinyPets) -> None:
    work, sweep = study_sweep["work"], study_sweep["sweep"]
    result = run_cli(search_args(tiny_pets.root, work, sweep, "trainer.batch_size=2"), work)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: study pets_unet in "), result.stderr[-3000:]
    assert "trainer.batch_size=2" in lines[0] and "hydra.sweep.dir" in lines[0]
    assert len(run_dirs(sweep)) == 3


def test_typo_in_search_space_stops_before_any_trial(tiny_pets: TinyPets, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(search_args(tiny_pets.root, tmp_path, sweep, "trainer.lrr=tag(log,interval(1e-4,1e-3))"), tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert "trainer.lrr" in lines[0] and "did you mean trainer.lr?" in lines[0]
    assert not run_dirs(sweep)
    assert not (sweep / "optuna.db").exists()


def test_failing_trial_is_recorded_failed_and_the_search_goes_on(tiny_pets: TinyPets, tmp_path: Path) -> None:
    """Two trials side by side in one batch of the joblib launcher: trial 0 gets an image size that the UNet's
    depth cannot divide (a UserError in the run), trial 1 one that trains. The values are enqueued, so that
    the test does not depend on the sampler's draws."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{sweep / 'optuna.db'}", direction="maximize")
    for size in (30, 32):
        study.enqueue_trial({"data.image_size": size})
    args = search_args(
        tiny_pets.root, tmp_path, sweep, "data.image_size=choice(30,32)", "hydra.sweeper.n_trials=2",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    )
    result = run_cli(args, tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # like a sweep: a failure is not a success
    assert "error: 1 trial(s) of the search failed: trial 0 (data.image_size=30 is not divisible" in result.stderr
    assert result.stdout.count("Launching jobs") == 1  # one batch of two
    failed, complete = load(sweep).trials
    assert failed.state == optuna.trial.TrialState.FAIL and failed.value is None
    assert "data.image_size=30" in failed.user_attrs["fail_reason"]
    assert complete.state == optuna.trial.TrialState.COMPLETE and complete.params["data.image_size"] == 32
    report = (sweep / "report.md").read_text()
    assert "Failed trials (1)" in report and f"Best trial: {complete.number}," in report


def test_report_of_a_study_orders_trials_and_explains_the_missing(tmp_path: Path) -> None:
    """The search section alone, from a study made with Optuna's API (no run dirs): complete trials best
    first, then failed and unfinished ones by number, with the failure's reason."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {"trainer.lr": FloatDistribution(1e-4, 1e-2, log=True), "loss": CategoricalDistribution(["dice", "bce"])}
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="minimize")
    study.set_user_attr("objective", "best_val/elbo")
    outcomes = [(120.5, None), (None, "data.image_size=30 is not divisible"), (99.25, None), (None, None)]
    params_of_trials = [{"trainer.lr": lr, "loss": loss} for lr, loss in [(1e-3, "dice"), (2e-3, "bce"), (3e-3, "bce"), (4e-3, "dice")]]
    for params, (value, reason) in zip(params_of_trials, outcomes):
        study.enqueue_trial(params)
        trial = study.ask(space)
        trial.set_user_attr("overrides", ["hparams_search=vae_optuna", "task=vae", *(f"{k}={v}" for k, v in params.items())])
        if reason:
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif value is not None:
            study.tell(trial, value)

    report_main([str(tmp_path)])  # exits 1: no run dir is complete; the report is written all the same
    report = (tmp_path / "report.md").read_text()
    cells = [[cell.strip() for cell in line.split("|")[1:3]] for line in report.splitlines() if line.startswith("| ")]
    trials = [(number, state) for number, state in cells if state in ("complete", "failed", "unfinished")]
    assert trials == [("2", "complete"), ("0", "complete"), ("1", "failed"), ("3", "unfinished")]
    assert "Best trial: 2, best_val/elbo = 99.25" in report
    assert "    python -m s18exp task=vae trainer.lr=0.003 loss=bce" in report
    assert "trial 1: data.image_size=30 is not divisible" in report
    assert "1 unfinished" in report and "finishes the unfinished ones" in report
    assert "| parameter | importance |" in report  # two complete trials whose parameters and values differ
