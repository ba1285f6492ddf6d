"""`trainer.ema_decay`: the moving average of the weights that the loop keeps, validates and saves.

Checked against an average computed here from the weights after each update, recorded as training goes; a
run stopped part-way and resumed must end with the same averaged and trained weights as one left alone, and
under two ranks the logged validation must be the score of the weights that were saved."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

import s18exp.updates
from conftest import cli_env, smoke_overrides_for
from s18exp.checkpoint import load_checkpoint, read_checkpoint
from s18exp.data import Batches
from s18exp.loop import LoopContext, fit
from s18exp.paths import CONFIG_DIR
from s18exp.runtime import Runtime, unwrap
from s18exp.tasks.segmentation import SegmentationTask
from s18exp.tracking import Tracker
from test_faults import assert_same_training, closed_port, epochs_logged, overrides, run_cli, start, wait_for_first_checkpoint

DECAY = 0.6


def tiny_config(data_root: Path, cache: Path, *extra: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model.width=4", "model.depth=2", "data.image_size=32", "wandb.mode=disabled", f"data.root={data_root}",
            "data.download=false", f"paths.cache_dir={cache}", "trainer.batch_size=4", "trainer.max_epochs=2",
            "trainer.progress=off", "data.limit_train=12", "data.limit_val=4", "trainer.lr=0.01", *extra,
        ])


def train_recording_updates(
    cfg: DictConfig, run_dir: Path, monkeypatch: pytest.MonkeyPatch, skipped_steps: tuple[int, ...] = (),
) -> tuple[SegmentationTask, nn.Module, Runtime, list[dict[str, torch.Tensor]]]:
    """`fit` on the tiny pets, with the weights and BatchNorm statistics copied after every update that
    happened; the steps numbered in `skipped_steps` (from 0) report an update skipped, as the fp16 scaler does
    after an overflow, and leave the weights as they were."""
    runtime = Runtime(torch.device("cpu"), "fp32", channels_last=False)
    task = SegmentationTask(cfg)
    torch.manual_seed(0)
    model = runtime.prepare_model(task.build_model())
    after_updates: list[dict[str, torch.Tensor]] = []
    real_step = s18exp.updates.optimizer_step
    steps = iter(range(1000))

    def recording_step(*args: Any, **kwargs: Any) -> bool:
        if next(steps) in skipped_steps:
            return False
        updated = real_step(*args, **kwargs)
        after_updates.append({k: v.detach().clone() for k, v in unwrap(model).state_dict().items()})
        return updated

    monkeypatch.setattr(s18exp.updates, "optimizer_step", recording_step)
    (run_dir / "checkpoints").mkdir(parents=True)
    tracker = Tracker(mode="disabled", project="p", entity=None, run_dir=run_dir, name="n", group="g", job_type="unet", tags=[], config={})
    data = task.build_data()
    saved = {"config": OmegaConf.to_container(cfg, resolve=True), "class_names": list(task.class_names)}
    fit(model, task, Batches(data.train, 4, shuffle=True), Batches(data.val, 4), LoopContext(cfg.trainer, runtime, run_dir, tracker, saved))
    return task, model, runtime, after_updates


def moving_average(after_updates: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """The average the option promises: the first update's weights, then decay x average + (1 - decay) x
    weights for floating-point tensors, integer buffers (BatchNorm's batch count) as trained."""
    expected = dict(after_updates[0])
    for weights in after_updates[1:]:
        for key, value in weights.items():
            expected[key] = decay * expected[key] + (1 - decay) * value if value.is_floating_point() else value
    return expected


def test_checkpoint_holds_the_moving_average_and_validation_scores_it(tiny_pets, tmp_path, monkeypatch) -> None:
    cfg = tiny_config(tiny_pets.root, tmp_path / "cache", f"trainer.ema_decay={DECAY}")
    task, model, runtime, after_updates = train_recording_updates(cfg, tmp_path / "run", monkeypatch)
    assert len(after_updates) == 6  # 12 images in batches of 4, two epochs

    expected = moving_average(after_updates, DECAY)
    saved = read_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert saved["average_updates"] == 6
    assert saved["model"].keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(saved["model"][key], value, rtol=1e-5, atol=1e-6)
    for key, value in unwrap(model).state_dict().items():
        assert torch.equal(saved["trained_model"][key], value)
    assert any(not torch.equal(saved["model"][k], saved["trained_model"][k]) for k in expected)

    # What predict and score load is the average; the epoch's validation line is its score, not the trained weights'.
    _, loaded, _ = load_checkpoint(tmp_path / "run/checkpoints/last.pt", torch.device("cpu"))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, saved["model"][key])
    val = Batches(task.build_data().val, 4)
    averaged = task.evaluate(loaded, val, runtime)
    trained = task.evaluate(model, val, runtime)
    logged = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[-1])
    assert logged["val/loss"] == pytest.approx(averaged["loss"], rel=1e-6)
    assert logged["val/loss"] != pytest.approx(trained["loss"], rel=1e-6)


def test_updates_that_the_scaler_skipped_are_not_averaged(tiny_pets, tmp_path, monkeypatch) -> None:
    cfg = tiny_config(tiny_pets.root, tmp_path / "cache", f"trainer.ema_decay={DECAY}")
    _, _, _, after_updates = train_recording_updates(cfg, tmp_path / "run", monkeypatch, skipped_steps=(1, 4))
    assert len(after_updates) == 4
    saved = read_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert saved["average_updates"] == 4
    for key, value in moving_average(after_updates, DECAY).items():
        torch.testing.assert_close(saved["model"][key], value, rtol=1e-5, atol=1e-6)


def test_without_a_decay_the_checkpoint_holds_the_trained_weights_only(tiny_pets, tmp_path, monkeypatch) -> None:
    cfg = tiny_config(tiny_pets.root, tmp_path / "cache")
    _, model, _, after_updates = train_recording_updates(cfg, tmp_path / "run", monkeypatch)
    saved = read_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert "trained_model" not in saved and "average_updates" not in saved
    for key, value in after_updates[-1].items():
        assert torch.equal(saved["model"][key], value)
        assert torch.equal(unwrap(model).state_dict()[key], value)


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_resumes_to_the_same_average(tiny_pets, tmp_path) -> None:
    """SIGTERM mid-epoch, then a rerun: the same losses, validation, test scores, averaged weights (`model`),
    trained weights and number of averaged updates as an uninterrupted run."""
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    result = run_cli(overrides(tiny_pets.root, tmp_path, reference_dir, "trainer.ema_decay=0.9"), tmp_path)
    assert result.returncode == 0, result.stderr

    args = overrides(tiny_pets.root, tmp_path, run_dir, "trainer.ema_decay=0.9")
    proc = start(args, tmp_path)
    wait_for_first_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    stopped = read_checkpoint(run_dir / "checkpoints/last.pt")
    assert stopped["train_state"]["next_step"] > 0, "the stop was meant to fall inside an epoch"
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr

    assert_same_training(run_dir, reference_dir)
    val_lines = lambda d: [{k: v for k, v in json.loads(line).items() if k.startswith("val/")} for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert val_lines(run_dir) == val_lines(reference_dir)
    resumed = read_checkpoint(run_dir / "checkpoints/last.pt")
    uninterrupted = read_checkpoint(reference_dir / "checkpoints/last.pt")
    assert resumed["average_updates"] == uninterrupted["average_updates"] > 0
    assert all(torch.equal(resumed["trained_model"][k], v) for k, v in uninterrupted["trained_model"].items())


@pytest.mark.slow
def test_two_ranks_validate_the_averaged_weights_they_save(tiny_pets, tmp_path) -> None:
    """Each rank's BatchNorm statistics follow its own batches; the logged validation must still be the score
    of the averaged weights in last.pt, evaluated here in one process."""
    run_dir = tmp_path / "run"
    # BCE: a mean over pixels, so that the loss summed over the ranks' shards equals one process's.
    args = smoke_overrides_for(tiny_pets.root, tmp_path) + [
        f"hydra.run.dir={run_dir}", "trainer.max_epochs=2", "trainer.precision=fp32", "loss=bce", "trainer.ema_decay=0.5",
        "trainer.eval_batch_size=1",  # two validation images: one batch for each rank
        "trainer.lr=0.05", "trainer.batch_size=2",  # BatchNorm statistics far enough apart for the scores to show it
    ]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(closed_port()), "-m", "s18exp", *args],
        cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert epochs_logged(run_dir) == [1, 2]
    task, model, _ = load_checkpoint(run_dir / "checkpoints/last.pt", torch.device("cpu"), data_root=str(tiny_pets.root))
    runtime = Runtime(torch.device("cpu"), "fp32", channels_last=True)
    scores = task.evaluate(runtime.prepare_model(model), Batches(task.build_data().val, 4), runtime)
    logged = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for key, value in scores.items():
        assert logged[f"val/{key}"] == pytest.approx(value, rel=1e-6, abs=1e-7), key
