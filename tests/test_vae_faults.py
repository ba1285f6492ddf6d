"""Faults and torchrun for the VAE with its guide term on (`model.condition=both task.guide_weight=20`): a run
SIGKILLed after its first checkpoint and rerun ends bit for bit where an uninterrupted run does, guide
included; and a 2-rank gloo run trains the guide under DDP, writes its files once, and scores its test
split as one process scores the same checkpoint on the whole split. Every run is fp32 on the CPU with
one thread, on the tiny image folder of vae_data.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import cli_env
from s18exp.data import Batches
from s18exp.runtime import Runtime
from s18exp.tasks.vae import VAETask
from test_faults import closed_port, epochs_logged, kill_after_first_checkpoint, run_cli, start
from vae_data import image_folder, one_thread, tiny_overrides  # noqa: F401 (fixtures)
from wandb_offline import offline_runs

pytestmark = pytest.mark.slow

# Per-epoch values that must repeat exactly; the others are timings.
REPEATED_METRICS = ("train/loss", "val/elbo", "val/recon", "val/kl", "lr")


def guided_overrides(data_root: Path, work: Path, run_dir: Path, *extra: str) -> list[str]:
    """The tiny VAE with the guide on (a guide of width 4, to keep steps short), fp32."""
    return [
        "task=vae", *tiny_overrides(data_root, work), "model.condition=both", "task.guide_weight=20",
        "model.guide_width=4", "trainer.precision=fp32", f"hydra.run.dir={run_dir}", *extra,
    ]


def interruptible_overrides(data_root: Path, work: Path, run_dir: Path) -> list[str]:
    """3 epochs of 2-image steps (14 per epoch): epoch 2 is still running when epoch 1's checkpoint appears."""
    return guided_overrides(data_root, work, run_dir, "trainer.max_epochs=3", "trainer.batch_size=2")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def model_state(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)["model"]


def guide_keys(weights: dict[str, torch.Tensor]) -> list[str]:
    return [key for key in weights if key.startswith("guides.")]


def assert_same_training(run_dir: Path, reference_dir: Path) -> None:
    """Same epochs once each, the same per-epoch values, the same test and judge scores and the same final
    weights (the guide's parameters and BatchNorm statistics among them), bit for bit."""
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference_dir))
    assert summary["status"] == expected["status"] == "complete"
    assert summary["epochs_completed"] == expected["epochs_completed"] == 3
    assert epochs_logged(run_dir) == [1, 2, 3]
    repeated = lambda d: [{key: m[key] for key in REPEATED_METRICS} for m in metrics(d)]
    assert repeated(run_dir) == repeated(reference_dir)
    scores = lambda s: {k: v for k, v in s.items() if k.startswith(("test/", "judge/"))}
    assert "test/label_follow_acc" in scores(expected)
    assert scores(summary) == scores(expected)
    weights, expected_weights = model_state(run_dir), model_state(reference_dir)
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights)


def test_sigkill_after_first_checkpoint_then_rerun_matches_uninterrupted_run(image_folder: Path, tmp_path: Path):
    # The uninterrupted reference runs in its own folder beside the killed run, to share the two cores.
    reference_work = tmp_path / "reference"
    reference_work.mkdir()
    reference_dir = reference_work / "run"
    reference = start(interruptible_overrides(image_folder, reference_work, reference_dir), reference_work)

    try:
        run_dir = tmp_path / "run"
        args = interruptible_overrides(image_folder, tmp_path, run_dir)
        kill_after_first_checkpoint(args, run_dir, tmp_path)
        killed = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        # Killed before the last epoch's checkpoint: the rerun has epochs to train, with the restored guide and RNG.
        assert 1 <= killed["train_state"]["epochs_completed"] < 3
        assert guide_keys(killed["model"])

        result = run_cli(args, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "resuming from" in (run_dir / "s18exp.log").read_text()
        _, stderr = reference.communicate(timeout=240)
        assert reference.returncode == 0, stderr[-3000:]
    finally:
        reference.kill()  # a no-op once it has ended; stops it when an assertion above failed first
    assert_same_training(run_dir, reference_dir)
    # The guide went on learning after the resume: its weights moved from those of the killed run.
    final = model_state(run_dir)
    assert any(not torch.equal(final[k], killed["model"][k]) for k in guide_keys(killed["model"]) if k.endswith("weight"))


def test_two_rank_gloo_run_with_the_guide_writes_once_and_scores_as_one_process(image_folder: Path, tmp_path: Path, one_thread):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(closed_port()),
         "-m", "s18exp", *guided_overrides(image_folder, tmp_path, run_dir)],
        cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "complete"
    assert epochs_logged(run_dir) == [1]
    assert len(offline_runs(run_dir)) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert guide_keys(last["model"])
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())

    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    task = VAETask(OmegaConf.create(best["config"]), best["class_names"])
    model = task.build_model()
    model.load_state_dict(best["model"])
    # AdamW keeps state only for parameters that got a gradient: under DDP every one did, the guide's included.
    assert len(last["optimizer"]["state"]) == len(list(model.parameters()))

    # Each item's z noise is picked by its index in the split, so one process scoring the whole split in a
    # single batch gives the run's scores, the random recon term included.
    runtime = Runtime(torch.device("cpu"), "fp32", channels_last=True)
    whole = task.test(runtime.prepare_model(model), Batches(task.build_data().test, 500), runtime).scores
    for key in ("elbo", "recon", "kl"):
        assert summary[f"test/{key}"] == pytest.approx(whole[key], rel=1e-6), key
