"""Faults injected and their outcomes asserted: SIGKILL and SIGTERM mid-run, a non-finite loss, an
unreachable W&B host, an unwritable output dir, an interrupted sweep rerun; plus 2-rank gloo runs (one with
fewer validation items than ranks) and the launcher configs. Every run here is fp32 on the CPU with one
thread, so that an interrupted and resumed run can be compared bit for bit with an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import cli_env, smoke_overrides_for
from s18exp import test_items
from s18exp.paths import CONFIG_DIR
from wandb_offline import offline_runs, read_run

pytestmark = pytest.mark.slow

TEST_KEYS = ("test/miou", "test/dice", "test/pixel_acc", "test/iou_pet", "test/iou_background", "test/iou_border", "test/loss")


def overrides(tiny_root: Path, work: Path, run_dir: Path, *extra: str) -> list[str]:
    """A run long enough to be stopped in the middle of an epoch: 3 epochs of single-image steps, with the
    strong augmentation, whose random zoom, rotation and colours a resumed run must draw again exactly."""
    base = smoke_overrides_for(tiny_root, work)
    return base + [
        "trainer.max_epochs=3", "trainer.batch_size=1", "trainer.precision=fp32", "data.image_size=64",
        "model.width=8", "augment=strong", f"hydra.run.dir={run_dir}", *extra,
    ]


def start(args: list[str], work: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "s18exp", *args], cwd=work, env=cli_env(work / "wandb-home"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )


def run_cli(args: list[str], work: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s18exp", *args], cwd=work, env=cli_env(work / "wandb-home"),
        capture_output=True, text=True, timeout=timeout,
    )


def wait_for_first_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Returns once epoch 1's last.pt is on disk, i.e. early in epoch 2."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "checkpoints" / "last.pt").exists():
            return
        assert proc.poll() is None, f"run ended early: {proc.communicate()}"
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint in {run_dir} after {timeout} s")


def kill_after_first_checkpoint(args: list[str], run_dir: Path, work: Path) -> None:
    """Start a run, SIGKILL it once its first checkpoint exists, and check that it left no summary."""
    proc = start(args, work)
    wait_for_first_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run_dir / "summary.json").exists()


def epochs_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def reference(tiny_pets, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted run of the same settings, and its summary."""
    work = tmp_path_factory.mktemp("reference")
    run_dir = work / "run"
    result = run_cli(overrides(tiny_pets.root, work, run_dir), work)
    assert result.returncode == 0, result.stderr
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def assert_same_training(run_dir: Path, reference_dir: Path) -> None:
    """Same epochs once each, same per-epoch losses and the same test metrics, bit for bit."""
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((reference_dir / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["epochs_completed"] == expected["epochs_completed"] == 3
    assert epochs_logged(run_dir) == [1, 2, 3]
    losses = lambda d: [json.loads(line)["train/loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert losses(run_dir) == losses(reference_dir)
    assert {k: summary[k] for k in TEST_KEYS} == {k: expected[k] for k in TEST_KEYS}
    weights = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)["model"]
    expected_weights = torch.load(reference_dir / "checkpoints/last.pt", weights_only=False)["model"]
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights)


def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted_run(tiny_pets, tmp_path, reference):
    run_dir = tmp_path / "run"
    args = overrides(tiny_pets.root, tmp_path, run_dir)
    kill_after_first_checkpoint(args, run_dir, tmp_path)
    for name in ("last.pt", "best.pt"):  # whatever the kill interrupted, the real names hold whole checkpoints
        assert torch.load(run_dir / "checkpoints" / name, weights_only=False)["train_state"]["epochs_completed"] >= 1

    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not list((run_dir / "checkpoints").glob(".*")), "a killed writer's temporary file was left"
    assert "resuming from" in (run_dir / "s18exp.log").read_text()
    assert_same_training(run_dir, reference[0])
    # The resumed job continued the same W&B run: two offline folders (the killed one may hold no records,
    # since W&B buffers them), one run id, and the resumed part logged the remaining epochs.
    folders = offline_runs(run_dir)
    assert len(folders) == 2 and len({folder.name.rsplit("-", 1)[1] for folder in folders}) == 1
    resumed = read_run(folders[-1])
    assert resumed.run_id == folders[0].name.rsplit("-", 1)[1] and resumed.exit_code == 0
    assert [row["epoch"] for row in resumed.history if "epoch" in row][-1] == 3


def test_sigterm_saves_marks_interrupted_and_resumes_exactly(tiny_pets, tmp_path, reference):
    run_dir = tmp_path / "run"
    args = overrides(tiny_pets.root, tmp_path, run_dir)
    proc = start(args, tmp_path)
    wait_for_first_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)["train_state"]
    assert state["epochs_completed"] >= 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == state["epochs_completed"]
    (folder,) = offline_runs(run_dir)
    recorded = read_run(folder)
    assert recorded.exit_code == 128 + signal.SIGTERM and recorded.summary["status"] == "interrupted"

    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_training(run_dir, reference[0])


def test_nan_from_huge_learning_rate_stops_with_epoch_and_step(tiny_pets, tmp_path):
    run_dir = tmp_path / "run"
    args = smoke_overrides_for(tiny_pets.root, tmp_path) + [
        f"hydra.run.dir={run_dir}", "trainer.lr=1e30", "trainer.scheduler=null", "trainer.max_epochs=2",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "epoch 1, step 2" in message and "trainer.lr" in message and "Traceback" not in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "epoch 1, step 2" in summary["reason"]
    (folder,) = offline_runs(run_dir)
    assert read_run(folder).exit_code == 1


def test_nan_after_a_good_epoch_keeps_the_last_good_checkpoint(tiny_pets, tmp_path):
    """A loss that turns NaN from the 12th step on (epoch 2 of 9-step epochs); one bad batch may be skipped."""
    run_dir = tmp_path / "run"
    args = smoke_overrides_for(tiny_pets.root, tmp_path) + [
        f"hydra.run.dir={run_dir}", "trainer.max_epochs=3", "trainer.batch_size=2", "trainer.skip_nonfinite=1",
        "loss=bce", "loss.criterion._target_=nan_loss.NaNFromStep", "+loss.criterion.step=12",
    ]
    env_tests = str(Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-m", "s18exp", *args], cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={**cli_env(tmp_path / "wandb-home"), "PYTHONPATH": env_tests},
    )
    assert result.returncode == 1, result.stderr
    assert "skipped a batch with a non-finite loss at epoch 2, step 3" in result.stdout
    assert "loss is nan at epoch 2, step 4" in result.stderr
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)
    assert last["train_state"]["epochs_completed"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert epochs_logged(run_dir) == [1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_wandb_falls_back_to_offline_within_bounded_time(tiny_pets, tmp_path):
    run_dir = tmp_path / "run"
    env = cli_env(tmp_path / "wandb-home")
    env.pop("WANDB_MODE")
    env.update(WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}", WANDB_API_KEY="x" * 40)
    args = smoke_overrides_for(tiny_pets.root, tmp_path) + [f"hydra.run.dir={run_dir}", "wandb.mode=online", "wandb.init_timeout=10"]
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "s18exp", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 150
    assert "W&B online could not start" in result.stdout and "going on with an offline run" in result.stdout
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    (folder,) = offline_runs(run_dir)
    assert len(read_run(folder).history) >= 1


def test_unwritable_output_dir_is_one_line_before_anything(tiny_pets, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        multirun = ["--multirun"] if key == "hydra.sweep.dir" else []
        result = run_cli([*multirun, *smoke_overrides_for(tiny_pets.root, tmp_path), f"{key}={blocker}/run"], tmp_path)
        assert result.returncode == 2
        assert result.stderr.strip() == f"error: cannot write the output dir {blocker}/run: {blocker} is a file, not a folder; set {key} to a writable folder"


def test_rerun_of_interrupted_sweep_skips_complete_jobs(tiny_pets, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["--multirun", *smoke_overrides_for(tiny_pets.root, tmp_path), "seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert run_cli(args, tmp_path).returncode == 0
    done, broken = sorted(sweep.glob("*_mp_tr_dicece-s*"))
    kept = (done / "summary.json").read_text()
    (broken / "summary.json").unlink()
    stamp = (done / "checkpoints/last.pt").stat().st_mtime_ns

    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is complete; skipping" in result.stdout
    assert (done / "summary.json").read_text() == kept
    assert (done / "checkpoints/last.pt").stat().st_mtime_ns == stamp
    assert json.loads((broken / "summary.json").read_text())["status"] == "complete"


def test_two_rank_gloo_run_writes_once_and_matches_single_process_eval(tiny_pets, tmp_path):
    run_dir = tmp_path / "run"
    # BCE: a mean over pixels, so that the loss summed over the ranks' shards equals one process's; a Dice
    # loss is a ratio per batch, which a different batching changes (the confusion-matrix scores do not).
    args = smoke_overrides_for(tiny_pets.root, tmp_path) + [f"hydra.run.dir={run_dir}", "trainer.max_epochs=2", "trainer.precision=fp32", "loss=bce"]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(closed_port()), "-m", "s18exp", *args],
        cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "complete"
    assert epochs_logged(run_dir) == [1, 2]
    assert len(offline_runs(run_dir)) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from s18exp.data import Batches
    from s18exp.runtime import Runtime

    best = torch.load(run_dir / "checkpoints/best.pt", weights_only=False)
    cfg = OmegaConf.create(best["config"])
    task = get_class(cfg.task._target_)(cfg)
    model = task.build_model()
    model.load_state_dict(best["model"])
    runtime = Runtime(torch.device("cpu"), "fp32", channels_last=True)
    tested = task.test(runtime.prepare_model(model), Batches(task.build_data().test, 4), runtime)
    for key, value in tested.scores.items():
        assert summary[f"test/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # each rank counted its own images into test_items.npz: together, every image once, as one process counts them
    written = test_items.load(run_dir / test_items.TEST_ITEMS)
    assert list(written["names"]) == list(tested.items["names"])
    np.testing.assert_array_equal(written["confusion"], tested.items["confusion"])


def test_two_ranks_with_fewer_validation_items_than_ranks_finish(tiny_pets, tmp_path):
    """data.limit_val=1 under two ranks: rank 1's validation shard is empty (no batch at all), which must not
    leave rank 0 waiting for it; the logged score is that of the one item, as one process computes it."""
    run_dir = tmp_path / "run"
    args = smoke_overrides_for(tiny_pets.root, tmp_path) + [
        f"hydra.run.dir={run_dir}", "trainer.max_epochs=2", "trainer.precision=fp32", "loss=bce", "data.limit_val=1",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(closed_port()), "-m", "s18exp", *args],
        cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "complete"
    assert epochs_logged(run_dir) == [1, 2]

    from s18exp.checkpoint import load_checkpoint
    from s18exp.data import Batches
    from s18exp.runtime import Runtime

    task, model, _ = load_checkpoint(run_dir / "checkpoints/last.pt", torch.device("cpu"), data_root=str(tiny_pets.root))
    val = task.build_data().val
    assert len(val) == 1
    runtime = Runtime(torch.device("cpu"), "fp32", channels_last=True)
    scores = task.evaluate(runtime.prepare_model(model), Batches(val, 4), runtime)
    logged = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for key, value in scores.items():
        assert logged[f"val/{key}"] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def compose_hydra(*extra: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(extra), return_hydra_config=True)


def test_launcher_configs_compose():
    joblib = compose_hydra("hydra/launcher=joblib").hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher")
    slurm = compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert slurm.partition == "gpu" and slurm.tasks_per_node == 1 and slurm.timeout_min == 240
    assert compose_hydra("hydra/launcher=submitit_slurm").hydra.launcher._target_.endswith("SlurmLauncher")


def test_joblib_sweep_runs_jobs_in_parallel_processes_with_shared_out_threads(tiny_pets, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *smoke_overrides_for(tiny_pets.root, tmp_path),
            "experiment=mp_tr_bce,strconv_ups_dice", f"hydra.sweep.dir={sweep}"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert [s["combo"] for s in summaries] == ["mp_tr_bce", "strconv_ups_dice"]
    expected_threads = max(1, (os.cpu_count() or 1) // min(2, os.cpu_count() or 1))
    assert all(s["torch_threads"] == expected_threads for s in summaries)
    names = {read_run(folder).name for run_dir in sweep.glob("*_*") for folder in offline_runs(run_dir)}
    assert names == {"mp_tr_bce-s0", "strconv_ups_dice-s0"}


def test_resume_from_another_run_dir_and_refusal_of_a_changed_schedule(tiny_pets, tmp_path):
    first = tmp_path / "first"
    base = smoke_overrides_for(tiny_pets.root, tmp_path) + ["trainer.max_epochs=2", "trainer.precision=fp32"]
    assert run_cli(base + [f"hydra.run.dir={first}"], tmp_path).returncode == 0

    second = tmp_path / "second"
    result = run_cli(base + [f"hydra.run.dir={second}", f"trainer.resume={first}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert epochs_logged(second) == [1, 2]
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (second, first))
    assert {k: summary[k] for k in TEST_KEYS} == {k: expected[k] for k in TEST_KEYS}
    # a finished run resumed elsewhere trains nothing, yet has a last.pt to test
    result = run_cli(base + [f"hydra.run.dir={tmp_path / 'last'}", f"trainer.resume={first}", "eval.weights=last"], tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "last" / "summary.json").read_text())
    assert (summary["status"], summary["test_weights"], summary["test_epoch"]) == ("complete", "last", 2)

    result = run_cli(base + [f"hydra.run.dir={tmp_path / 'third'}", f"trainer.resume={first}", "trainer.max_epochs=3"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: trainer.max_epochs=3 differs from 2 in {first}/checkpoints/last.pt; "
        "resume with trainer.max_epochs=2 or trainer.resume=never"
    )
    assert not (tmp_path / "third" / "checkpoints").exists()
