"""The LR range test (s18exp/lr_find/): curve length, early stop, restored state, the pick, and the CLI.

Most tests run the range test in-process on synthetic problems of a few hundred numbers; two go through
`python -m s18exp.lr_find` and `python -m s18exp trainer.lr=auto` on the tiny on-disk pets folder.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyPets, cli_env, smoke_overrides_for
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn
from wandb_offline import offline_runs, read_run

from s18exp.config import validate
from s18exp.data import Batches, TensorSplit
from s18exp.errors import UserError
from s18exp.runtime import Runtime
from s18exp.lr_find.display import show
from s18exp.lr_find.range_test import Curve, Settings, choose, has_diverged, range_test, schedule
from s18exp.paths import CONFIG_DIR

CPU = Runtime(torch.device("cpu"), "fp32", channels_last=False)


def trainer_cfg(optimizer: str = "torch.optim.AdamW", grad_clip: float | None = None, **lr_find: object) -> DictConfig:
    settings = dict(start_lr=1e-5, end_lr=1e-2, num_steps=12, smooth=0.5, diverge_factor=4.0, rule="min_div10")
    settings.update(lr_find)
    return OmegaConf.create(
        {"optimizer": {"_target_": optimizer, "lr": 1e-3}, "grad_clip": grad_clip, "lr_find": settings}
    )


class Classify:
    """A task on random 8x8 images: cross-entropy of a small conv net, with a random flip from its own generator
    (a stand-in for the segmentation task's augmentation, so that restoring generators is tested)."""

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(0)

    def training_loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if torch.rand((), generator=self.generator) < 0.5:
            images = images.flip(-1)
        return nn.functional.cross_entropy(model(images), targets)


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(4, 2),  # dropout draws from the global torch RNG
    )


def image_batches(n: int = 24, batch_size: int = 8) -> Batches:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 8, 8, generator=g)
    targets = (images[:, 0].mean((1, 2)) > 0).long()
    return Batches(TensorSplit(images, targets, [str(i) for i in range(n)]), batch_size, shuffle=True, seed=0)


class Regression:
    """Least squares: loss = mean((x.w - y)^2), whose Hessian is 2 X^T X / n."""

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((model(x).squeeze(-1) - y) ** 2).mean()


def regression(n: int = 256, d: int = 8) -> tuple[nn.Module, Batches, torch.Tensor]:
    """A noiseless linear regression from w = 0, full batch: (model, batches, eigenvalues of X^T X / n)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g)
    model = nn.Linear(d, 1, bias=False)
    nn.init.zeros_(model.weight)
    batches = Batches(TensorSplit(x, y, [str(i) for i in range(n)]), n, shuffle=True, seed=0)
    return model, batches, torch.linalg.eigvalsh(x.T @ x / n)


# --- the curve ------------------------------------------------------------------------------------------


def test_schedule_is_exponential_from_start_to_end() -> None:
    lrs = schedule(Settings(1e-4, 1.0, 5, 0.0, 4.0, "steepest"))
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(1.0)
    assert [b / a for a, b in zip(lrs, lrs[1:])] == pytest.approx([10.0] * 4)


def test_curve_has_the_requested_points_without_divergence() -> None:
    # 12 steps over 3 batches: the batches are cycled; a gentle lr range never diverges.
    curve = range_test(conv_net(), Classify(), image_batches(), trainer_cfg(num_steps=12, diverge_factor=100.0), CPU)
    assert len(curve) == 12 and not curve.diverged
    assert curve.lrs == pytest.approx(schedule(curve.settings))
    assert all(math.isfinite(v) for v in curve.losses + curve.raw_losses)
    # bias-corrected EMA: the first smoothed value is the first loss, not (1 - smooth) times it
    assert curve.losses[0] == pytest.approx(curve.raw_losses[0])
    expected, average = [], 0.0
    for i, value in enumerate(curve.raw_losses):
        average = 0.5 * average + 0.5 * value
        expected.append(average / (1 - 0.5 ** (i + 1)))
    assert curve.losses == pytest.approx(expected)
    # each average sits at the lr it averages: the same weights over log(lr), so behind the step's own lr
    assert curve.centres[0] == pytest.approx(curve.lrs[0])
    assert all(a < b for a, b in zip(curve.centres, curve.centres[1:]))
    assert all(c < lr for c, lr in zip(curve.centres[1:], curve.lrs[1:]))
    weights = [0.5**age for age in range(12)]  # of the last step's average, by age in steps
    mean_age = sum(age * w for age, w in enumerate(weights)) / sum(weights)
    ratio = curve.lrs[1] / curve.lrs[0]
    assert curve.centres[-1] == pytest.approx(curve.lrs[-1] / ratio**mean_age)


def test_curve_stops_early_when_the_loss_diverges() -> None:
    model, batches, _ = regression()
    trainer = trainer_cfg("torch.optim.SGD", start_lr=1e-3, end_lr=1e3, num_steps=60, smooth=0.0, diverge_factor=4.0)
    curve = range_test(model, Regression(), batches, trainer, CPU)
    assert curve.diverged and 2 < len(curve) < 60
    assert curve.losses[-1] > 4.0 * min(curve.losses[:-1])  # the point that tripped the stop is recorded
    assert all(v <= 4.0 * min(curve.losses[: i + 1]) for i, v in enumerate(curve.losses[:-1]))


@pytest.mark.parametrize(
    ("current", "best", "diverged"),
    [(7.9, 2.0, False), (8.1, 2.0, True), (-1.5, -2.0, False), (3.9, -2.0, False), (4.1, -2.0, True), (-2.0, -2.0, False)],
)
def test_divergence_is_a_rise_of_factor_minus_one_times_the_best_magnitude(current: float, best: float, diverged: bool) -> None:
    # factor 4: above 4 x best for a positive best; for best = -2, a rise of more than 3 x 2 = 6, i.e. above 4
    assert has_diverged(current, best, 4.0) is diverged


class ShiftedRegression(Regression):
    """The least-squares loss minus a constant: the same training, with losses below zero (as a Gaussian
    log-likelihood can be)."""

    def __init__(self, shift: float) -> None:
        self.shift = shift

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().training_loss(model, x, y) - self.shift


def test_negative_losses_run_the_whole_range_until_a_real_divergence() -> None:
    gentle = trainer_cfg("torch.optim.SGD", start_lr=1e-4, end_lr=1e-1, num_steps=20, smooth=0.0, diverge_factor=4.0)
    model, batches, _ = regression()
    curve = range_test(model, ShiftedRegression(100.0), batches, gentle, CPU)
    assert min(curve.raw_losses) < 0 and not curve.diverged and len(curve) == 20  # `current > 4 * best` stopped at step 2

    steep = trainer_cfg("torch.optim.SGD", start_lr=1e-3, end_lr=1e3, num_steps=60, smooth=0.0, diverge_factor=4.0)
    model, batches, _ = regression()
    curve = range_test(model, ShiftedRegression(100.0), batches, steep, CPU)
    assert curve.diverged and 2 < len(curve) < 60
    best_before = min(curve.losses[:-1])
    assert best_before < 0 and curve.losses[-1] - best_before > 3.0 * abs(best_before)  # the stop, by hand
    assert all(v - min(curve.losses[: i + 1]) <= 3.0 * abs(min(curve.losses[: i + 1])) for i, v in enumerate(curve.losses[:-1]))


def test_state_is_restored_after_the_test() -> None:
    model, task, batches = conv_net(), Classify(), image_batches()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # one real step first, so that the optimiser has state (moments, step) and BN has non-initial buffers
    images, targets = next(iter(batches))
    task.training_loss(model, images, targets).backward()
    optimizer.step()
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    before_opt = optimizer.state_dict()
    before_opt = {"state": {k: {n: t.clone() for n, t in s.items()} for k, s in before_opt["state"].items()},
                  "groups": [dict(g) for g in before_opt["param_groups"]]}
    generator_state, rng = task.generator.get_state(), torch.get_rng_state()
    model.eval()

    curve = range_test(model, task, batches, trainer_cfg(end_lr=1.0, num_steps=10), CPU, optimizer=optimizer)

    assert len(curve) > 1
    after = model.state_dict()
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(after)
    for key, value in before_model.items():
        assert torch.equal(after[key], value), key
    assert not model.training  # its mode, too
    opt = optimizer.state_dict()
    assert [dict(g) for g in opt["param_groups"]] == before_opt["groups"]  # the lr is back as well
    for k, s in before_opt["state"].items():
        for name, tensor in s.items():
            assert torch.equal(opt["state"][k][name], tensor), (k, name)
    assert torch.equal(task.generator.get_state(), generator_state)
    assert torch.equal(torch.get_rng_state(), rng)


# --- the pick -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["steepest", "min_div10"])
def test_pick_lies_in_the_band_where_the_loss_falls(rule: str) -> None:
    """Gradient descent on least squares with Hessian 2H shrinks the error mode of eigenvalue l by |1 - 2 lr l|
    per step: above 1/l_max the largest mode grows (diverges); below 0.0025/l_min a step cuts the slowest mode's
    loss by under 1% (barely moves). The loss falls only between; the range test spans 6 decades around it."""
    model, batches, eigenvalues = regression()
    low, high = 0.0025 / eigenvalues.min().item(), 1 / eigenvalues.max().item()
    assert 1e-3 < low < high < 1  # the band: about two of the six decades
    trainer = trainer_cfg("torch.optim.SGD", start_lr=1e-5, end_lr=10.0, num_steps=60, smooth=0.9, rule=rule)
    curve = range_test(model, Regression(), batches, trainer, CPU)
    assert curve.diverged
    assert low < curve.pick < high, (rule, curve.pick, low, high, curve.candidates)


def synthetic_curve(losses: list[float], rule: str) -> Curve:
    settings = Settings(1e-4, 1.0, len(losses), 0.0, 4.0, rule)
    return Curve(schedule(settings), losses, losses, schedule(settings), settings, diverged=False, seconds=0.0)


def test_rules_on_a_hand_made_curve() -> None:
    # flat, a fall that is steepest between steps 5 and 6, a minimum at step 8, a rise
    losses = [1.0, 1.0, 0.99, 0.98, 0.95, 0.85, 0.55, 0.40, 0.35, 0.6, 1.2]
    steepest = synthetic_curve(losses, "steepest")
    choose(steepest)
    assert steepest.min_index == 8 and steepest.steepest_index in (5, 6)
    assert steepest.pick == pytest.approx(float(f"{steepest.lrs[steepest.steepest_index]:.3g}"))
    by_min = synthetic_curve(losses, "min_div10")
    choose(by_min)
    assert by_min.pick == pytest.approx(float(f"{by_min.lrs[8] / 10:.3g}"))
    # a noisy floor: the minimum is read where the floor begins (within 5% of the fall), not at its lowest wobble
    floor = synthetic_curve([1.0, 0.9, 0.6, 0.30, 0.201, 0.2, 0.202, 0.199, 0.2005, 0.3], "min_div10")
    choose(floor)
    assert floor.min_index == 4 and floor.pick == pytest.approx(float(f"{floor.lrs[4] / 10:.3g}"))
    rising = synthetic_curve([1.0, 1.1, 1.3, 2.0], "steepest")
    choose(rising)
    assert rising.pick == pytest.approx(1e-4)  # never fell: the start, with a warning


def test_the_picture_labels_both_axes() -> None:
    from s18exp.lr_find import display

    curve = synthetic_curve([1.0, 1.0, 0.99, 0.98, 0.95, 0.85, 0.55, 0.40, 0.35, 0.6, 1.2], "min_div10")
    choose(curve)
    grey = np.asarray(display.plot(curve, "LR range test: run-s0").convert("L"))
    plot_rows = slice(display._TOP, display._H - display._BOTTOM)
    # the y label: dark pixels left of the tick labels, spread over more rows than a tick label (it runs upwards)
    label = np.nonzero((grey[plot_rows, : display._LEFT - 45] < 128).any(axis=1))[0]
    assert len(label) > 40
    # the x label, under the tick labels
    assert (grey[display._H - 25 :, display._LEFT : display._W - display._RIGHT] < 128).any()


# --- config ----------------------------------------------------------------------------------------------


def composed(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_auto_is_a_valid_lr_and_interpolations_follow_the_pick() -> None:
    cfg = composed("trainer.lr=auto")
    validate(cfg)
    cfg.trainer.lr = 0.0123  # what run.py does with the pick
    assert cfg.trainer.optimizer.lr == 0.0123 and cfg.trainer.scheduler.max_lr == 0.0123


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.lr=fast", "trainer.lr"),
        ("trainer.lr_find.end_lr=1e-7", "trainer.lr_find.end_lr"),
        ("trainer.lr_find.num_steps=1", "trainer.lr_find.num_steps"),
        ("trainer.lr_find.smooth=1.0", "trainer.lr_find.smooth"),
        ("trainer.lr_find.diverge_factor=0.5", "trainer.lr_find.diverge_factor"),
        ("trainer.lr_find.rule=valley", "trainer.lr_find.rule"),
    ],
)
def test_bad_settings_name_the_key(override: str, key: str) -> None:
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        validate(composed(override))


# --- the commands, end to end ------------------------------------------------------------------------------


def run_module(module: str, args: list[str], work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=work, env=cli_env(work / "wandb-home"), capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_lr_find_command_writes_the_curve(tiny_pets: TinyPets, tmp_path: Path) -> None:
    args = [*smoke_overrides_for(tiny_pets.root, tmp_path), "trainer.lr_find.num_steps=6", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_module("s18exp.lr_find", ["experiment=strconv_ups_dice", *args], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    found = json.loads((run / "lr_find.json").read_text())
    assert found["steps"] == len(found["lr"]) == len(found["loss"]) == len(found["smoothed_loss"]) == len(found["smoothed_lr"])
    assert found["steps"] == 6 or found["diverged"]
    assert found["lr"][0] == pytest.approx(1e-6) and found["rule"] == "min_div10"
    assert found["settings"]["start_lr"] <= found["pick"] <= found["settings"]["end_lr"]
    with Image.open(run / "lr_find.png") as picture:
        assert picture.size == (840, 500)
    assert "LR range test" in result.stdout and f"trainer.lr={found['pick']:.3g}" in result.stdout
    assert not (run / "wandb").exists()  # the standalone look starts no W&B run
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
def test_auto_lr_trains_with_the_pick(tiny_pets: TinyPets, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*smoke_overrides_for(tiny_pets.root, tmp_path), "trainer.lr=auto", "trainer.lr_find.num_steps=6", f"hydra.run.dir={run}"]
    result = run_module("s18exp", args, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    pick = json.loads((run / "lr_find.json").read_text())["pick"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["lr_find/pick"] == pick
    assert (run / "lr_find.png").is_file()
    config = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert config["trainer"]["lr"] == pick
    assert config["trainer"]["optimizer"]["lr"] == pick and config["trainer"]["scheduler"]["max_lr"] == pick
    assert "FLOPs per image" in result.stdout  # the model's totals at the start of the run

    (folder,) = offline_runs(run)  # the offline W&B run: the pick in its config and summary, the curve logged
    offline = read_run(folder)
    assert offline.config["trainer"]["lr"] == pick or offline.config.get("trainer/lr") == pick
    assert offline.config["lr_find/pick"] == pick and offline.summary["lr_find/pick"] == pick
    assert offline.config["flops_per_image"] > 0 and offline.config["params"] > 0
    logged = set().union(*offline.history)
    assert any(k.startswith("lr_find/plot") for k in logged) and any(k.startswith("lr_find/curve") for k in logged)


@pytest.mark.slow
def test_auto_trains_exactly_like_its_pick_given_by_hand(tiny_pets: TinyPets, tmp_path: Path) -> None:
    """The range test leaves no trace: same initial weights, BN buffers, RNG streams and data order."""
    common = [*smoke_overrides_for(tiny_pets.root, tmp_path), "trainer.lr_find.num_steps=6", "wandb.mode=disabled"]
    auto = run_module("s18exp", [*common, "trainer.lr=auto", f"hydra.run.dir={tmp_path / 'auto'}"], tmp_path)
    assert auto.returncode == 0, auto.stderr[-3000:]
    pick = json.loads((tmp_path / "auto" / "summary.json").read_text())["lr_find/pick"]
    by_hand = run_module("s18exp", [*common, f"trainer.lr={pick}", f"hydra.run.dir={tmp_path / 'by-hand'}"], tmp_path)
    assert by_hand.returncode == 0, by_hand.stderr[-3000:]
    metrics = [
        [{k: v for k, v in json.loads(line).items() if "seconds" not in k and "per_second" not in k}
         for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("auto", "by-hand")
    ]
    assert metrics[0] == metrics[1]
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("auto", "by-hand")]
    assert summaries[0]["test/miou"] == summaries[1]["test/miou"]
    assert "lr_find/pick" not in summaries[1]


def test_the_last_step_warning_only_when_the_loss_was_lowest_at_the_last_step(caplog: pytest.LogCaptureFixture) -> None:
    still_falling = synthetic_curve([1.0, 0.9, 0.7, 0.5, 0.3, 0.1], "min_div10")
    choose(still_falling)
    with caplog.at_level("WARNING", logger="s18exp"):
        show(still_falling)
    assert [r.getMessage() for r in caplog.records if "lowest at the last step" in r.getMessage()]
    caplog.clear()
    # the same losses, but the test stopped at a non-finite loss after them: it passed its floor
    stopped = synthetic_curve(still_falling.losses, "min_div10")
    stopped.diverged = True
    # a floor reached earlier (within 5% of the fall), the lowest wobble at the end: the pick is read on the floor
    floor = synthetic_curve([1.0, 0.6, 0.2, 0.201, 0.2, 0.199], "min_div10")
    choose(stopped)
    choose(floor)
    with caplog.at_level("WARNING", logger="s18exp"):
        show(stopped)
        show(floor)
    assert not [r for r in caplog.records if "lowest at the last step" in r.getMessage()]


def test_the_pick_only_records_its_warnings_and_the_display_shows_them(caplog: pytest.LogCaptureFixture) -> None:
    rising = synthetic_curve([1.0, 1.1, 1.3, 2.0], "steepest")
    with caplog.at_level("WARNING", logger="s18exp"):
        choose(rising)
    assert not caplog.records
    assert len(rising.warnings) == 1 and "never fell below its first value" in rising.warnings[0]
    with caplog.at_level("WARNING", logger="s18exp"):
        show(rising)
    assert [r.getMessage() for r in caplog.records] == rising.warnings
