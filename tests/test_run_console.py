"""What a run tells its user: a short header, epoch lines with the run's elapsed time and ETA, one closing
line; the command that continues an interrupted run, and the offer of it when the same command runs again;
no run dir left behind by a refused command."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TinyPets, cli_env, smoke_overrides_for
from omegaconf import OmegaConf

from s18exp import console
from s18exp.report.spec import TaskSpec
from s18exp.resuming import interrupted_twin, resume_command
from s18exp.run_settings import record, settings_hash, settings_of
from s18exp.runtime import shared_cpu_warning

EPOCH_CLOCK = re.compile(r"  run (\d+s|\d+m\d\ds), ETA (\d+s|\d+m\d\ds|\?)$")


def run_cli(args: list[str], work: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s18exp", *args], cwd=work, env=cli_env(work / "wandb-home"), capture_output=True, text=True, timeout=timeout,
    )


# --- the clock and the lines, without a run --------------------------------------------------------------


def test_durations_read_as_seconds_minutes_and_hours() -> None:
    assert [console.duration(s) for s in (0, 42, 60, 483, 3599, 3900, 7260)] == ["0s", "42s", "1m00s", "8m03s", "59m59s", "1h05m", "2h01m"]


def test_the_run_clock_extrapolates_the_pace_of_this_process_to_the_last_epoch() -> None:
    clock = console.RunClock(epochs_before=4, max_epochs=10)  # a run resumed after 4 epochs
    clock.start -= 30.0  # 30 s into this process, 1.5 epochs done here: 20 s an epoch, 4.5 epochs left
    assert clock.remaining(4.0) is None
    assert clock.remaining(5.5) == pytest.approx(30.0 / 1.5 * 4.5, rel=1e-3)
    assert clock.remaining(10) == 0.0
    assert clock.text(5.5) == "run 30s, ETA 1m30s"
    assert clock.text(4.0) == "run 30s, ETA ?"


def test_the_epoch_progress_shows_no_loss_until_there_is_one_and_the_run_clock() -> None:
    clock = console.RunClock(epochs_before=0, max_epochs=4)
    progress = console.EpochProgress(2, 4, 100, style="off", clock=clock)
    progress.advance(50)
    assert "loss" not in progress._plain_line() and progress._fields()["loss"] == ""
    progress.advance(10, loss=0.25)
    assert "loss 0.2500" in progress._plain_line()
    clock.start -= 16.0  # 1.6 epochs in 16 s: 10 s an epoch, 2.4 epochs left
    assert progress._plain_line().endswith("run 16s, ETA 24s")


@pytest.mark.parametrize(
    ("load", "threads", "warned"), [(0.3, 2, False), (0.9, 2, False), (1.0, 2, True), (1.5, 1, False), (2.0, 1, True), (3.7, 2, True)]
)
def test_a_busy_cpu_is_named_when_others_hold_a_core_the_run_needs(load: float, threads: int, warned: bool) -> None:
    warning = shared_cpu_warning(threads, load=load, cores=2)
    assert (warning is not None) == warned
    if warned:
        assert f"load average {load:.1f} on 2 cores" in warning


def test_the_headline_is_the_score_over_the_pictures_named_as_in_the_table() -> None:
    from hydra import compose, initialize_config_dir

    from s18exp.paths import CONFIG_DIR
    from s18exp.tasks import task_for

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        unet = task_for(compose(config_name="config"))
        vae = task_for(compose(config_name="config", overrides=["task=vae"]))
    assert unet.report_spec().headline() == ("test/miou", "test mIoU")
    assert vae.report_spec().headline() == ("test/label_follow_acc", "label follow (panel min)")
    # read back from a summary.json, as the report does
    assert TaskSpec.from_dict(json.loads(json.dumps(unet.report_spec().as_dict()))).headline() == ("test/miou", "test mIoU")


# --- a whole run -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_shows_a_header_clocked_epochs_and_ends_with_one_closing_line(tiny_pets: TinyPets, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [a for a in smoke_overrides_for(tiny_pets.root, tmp_path) if not a.startswith("trainer.max_epochs")]
    result = run_cli([*args, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip() and not line.startswith("warning: the CPU is busy")]
    assert not re.search(r"[├└]── \w+: ", result.stdout) and "trainer" not in result.stdout, "the config tree stays off the terminal"
    assert "resolved config:" in (run_dir / "s18exp.log").read_text() and "trainer:" in (run_dir / "s18exp.log").read_text()
    assert lines[0] == "unet mp_tr_dicece-s0 (encoder maxpool, decoder transpose, loss dice_ce, seed 0)"
    assert f"  run dir: {run_dir}" in lines and any(re.fullmatch(r"  data: \d+ train / \d+ val / 8 test items, 2 epochs", line) for line in lines)
    epochs = [line for line in lines if re.match(r"epoch \d/2  train/loss", line)]
    assert len(epochs) == 2 and all(EPOCH_CLOCK.search(line) for line in epochs), epochs
    assert epochs[-1].endswith("ETA 0s")
    summary = json.loads((run_dir / "summary.json").read_text())
    closing = re.fullmatch(r"done in (\d+s|\d+m\d\ds): test mIoU (\d\.\d{3}), run dir (.+)", lines[-1])
    assert closing, lines[-1]
    assert float(closing.group(2)) == pytest.approx(summary["test/miou"], abs=5e-4) and closing.group(3) == str(run_dir)


def wait_for(path_pattern: str, work: Path, proc: subprocess.Popen, timeout: float = 180) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(work.glob(path_pattern))
        if found:
            return found[0]
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"nothing matched {path_pattern} after {timeout} s")


def as_argv(command: str) -> list[str]:
    """A printed `python -m s18exp ...` command as this interpreter runs it."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "s18exp"], command
    return [sys.executable, *words[1:]]


@pytest.mark.slow
def test_an_interrupted_run_names_its_command_and_a_rerun_offers_it(tiny_pets: TinyPets, tmp_path: Path) -> None:
    args = smoke_overrides_for(tiny_pets.root, tmp_path) + [
        "trainer.max_epochs=3", "trainer.batch_size=1", "data.image_size=64", "model.width=8", "trainer.precision=fp32",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "s18exp", *args], cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    last = wait_for("outputs/*/*/checkpoints/last.pt", tmp_path, proc)
    stopped_dir = last.parent.parent.relative_to(tmp_path)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in stderr
    expected = resume_command(args, "hydra.run.dir", stopped_dir)
    assert stdout.splitlines()[-1] == f"to continue it: {expected}"
    assert shlex.split(expected)[3:] == [*args, f"hydra.run.dir={stopped_dir}"]

    time.sleep(1.1)  # the rerun's timestamped dir is another one
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    offer = again.stdout.splitlines()[0]
    assert offer.startswith(f"{stopped_dir} holds an interrupted run of these settings") and offer.endswith(expected)
    fresh = [p.parent for p in tmp_path.glob("outputs/*/*/summary.json") if p.parent.name != stopped_dir.name]
    assert len(fresh) == 1 and json.loads((fresh[0] / "summary.json").read_text())["status"] == "complete"
    assert json.loads((tmp_path / stopped_dir / "summary.json").read_text())["status"] == "interrupted"

    resumed = subprocess.run(as_argv(expected), cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert json.loads((tmp_path / stopped_dir / "summary.json").read_text())["status"] == "complete"


# --- the resume command and the search for an interrupted twin, without a run --------------------------------


def test_the_resume_command_keeps_the_arguments_and_replaces_the_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["data.root=/my data", "hydra.run.dir=old", "trainer.lr=1e-3"]
    command = resume_command(argv, "hydra.run.dir", tmp_path / "outputs" / "d" / "r")
    assert command == "python -m s18exp 'data.root=/my data' trainer.lr=1e-3 hydra.run.dir=outputs/d/r"
    assert resume_command([], "hydra.sweep.dir", Path("/elsewhere/sweep")) == "python -m s18exp hydra.sweep.dir=/elsewhere/sweep"


def fake_run(outputs: Path, name: str, cfg, status: str) -> Path:
    run_dir = outputs / "2030-01-01" / name
    run_dir.mkdir(parents=True)
    record(cfg, run_dir)
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "epochs_completed": 2}))
    return run_dir


def test_the_offer_names_only_an_interrupted_run_of_the_same_settings(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"run_name": "combo-s0", "trainer": {"lr": 0.001, "scheduler": {"max_lr": 0.001}}, "paths": {"cache_dir": "a"}})
    other = OmegaConf.merge(cfg, {"trainer": {"lr": 0.01}})
    moved = OmegaConf.merge(cfg, {"paths": {"cache_dir": "b"}})  # a place on disk is not a setting
    outputs = tmp_path / "outputs"
    assert interrupted_twin(cfg, outputs) is None
    fake_run(outputs, "10-00-00_combo-s0", cfg, "complete")
    fake_run(outputs, "10-00-01_combo-s0", other, "interrupted")
    fake_run(outputs, "10-00-02_combo-s1", cfg, "interrupted")  # another run name
    assert interrupted_twin(cfg, outputs) is None
    twin = fake_run(outputs, "10-00-03_combo-s0", cfg, "interrupted")
    assert interrupted_twin(cfg, outputs) == (twin, 2)
    assert interrupted_twin(moved, outputs) == (twin, 2)
    assert settings_hash(settings_of(moved)) == json.loads((twin / "settings.json").read_text())["hash"]


# --- refused commands leave nothing behind --------------------------------------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "fragment"),
    [("model.width=abc", "model.width='abc' must be a positive int"), ("trainer.lr=-0.001", "trainer.lr=-0.001 must be positive"),
     ("data.root=MISSING", "not found under")],
)
def test_a_refused_run_leaves_no_run_dir(tiny_pets: TinyPets, tmp_path: Path, override: str, fragment: str) -> None:
    key, value = override.split("=")
    value = str(tmp_path / "no-data") if value == "MISSING" else value
    args = [a for a in smoke_overrides_for(tiny_pets.root, tmp_path) if not a.startswith(f"{key}=")] + [f"{key}={value}"]
    result = run_cli(args, tmp_path)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_sweep_with_a_bad_job_is_refused_before_any_job(tiny_pets: TinyPets, tmp_path: Path) -> None:
    result = run_cli(["--multirun", *smoke_overrides_for(tiny_pets.root, tmp_path), "trainer.lr=0.001,-1"], tmp_path)
    assert_one_line_error(result, "job 1 (", "trainer.lr=-1 must be positive")
    assert not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_a_misspelt_group_option_is_one_line_with_the_closest_option(tmp_path: Path) -> None:
    result = run_cli(["encoder=strid", "wandb.mode=disabled"], tmp_path, timeout=120)
    assert_one_line_error(result, "encoder=strid is not an option of encoder; did you mean encoder=strided?", "maxpool, strided")
    assert not (tmp_path / "outputs").exists()
