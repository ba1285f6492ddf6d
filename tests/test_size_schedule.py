"""`trainer.size_schedule` (s18exp/size_schedule.py): the sides per epoch against hand-computed cases and a float
ramp computed here, the batch sizes and steps of `batch_scale`, the checks of a bad schedule (one line, before any
work), and through the command: metrics.jsonl and W&B record each epoch's side and batch, the OneCycle schedule
ends at the last step actually taken, and a run stopped in the middle of the ramp resumes to the same weights
and metrics as one left alone (fp32 on the CPU, bit for bit)."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from conftest import TinyPets, smoke_overrides_for
from s18exp.config import validate
from s18exp.errors import UserError
from s18exp.paths import CONFIG_DIR
from s18exp.checkpoint import check_resumable
from s18exp.run_settings import differences, settings_of
from s18exp.size_schedule import batch_sizes_per_epoch, epoch_plan, plan_for, sizes_per_epoch
from test_faults import epochs_logged, overrides, run_cli, start, wait_for_first_checkpoint
from wandb_offline import offline_runs, read_run

SCHEDULE = "trainer.size_schedule"


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["wandb.mode=disabled", *overrides])


# --- the sides, batch sizes and steps ----------------------------------------------------------------------


def test_sixty_epochs_from_64_to_128_px_by_seven_tenths_hand_computed() -> None:
    """Epoch e sits at p = (e - 1) / 59 and its side is 64 + 64 p / 0.7 rounded to 16: it reaches 72 (rounds to 80)
    at p = 0.0875, e - 1 >= 5.16, so epoch 7; 88 at p = 0.2625 (epoch 17); 104 at p = 0.4375 (epoch 27); 120 at
    p = 0.6125 (epoch 38)."""
    sizes = sizes_per_epoch(128, 60, 16, 64, 0.0, 0.7)
    assert sizes == [64] * 6 + [80] * 10 + [96] * 10 + [112] * 11 + [128] * 23


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # p = (e - 1) / 8 over a ramp from 0 to 1: sides 64 + 8 (e - 1), the halves 72, 88, 104, 120 rounding up
        ((128, 9, 16, 64, 0.0, 1.0), [64, 80, 80, 96, 96, 112, 112, 128, 128]),
        # p = (e - 1) / 9 over 0.2..0.6: 67.6 -> 64, 85.3 -> 80, 103.1 -> 96, 120.9 -> 128, then p >= 0.6
        ((128, 10, 16, 64, 0.2, 0.6), [64, 64, 64, 80, 96, 128, 128, 128, 128, 128]),
        ((128, 5, 16, 64, 0.5, 0.5), [64, 64, 128, 128, 128]),  # a step at half-way: p = 0.5 is at the new side
        ((128, 1, 16, 64, 0.0, 0.7), [128]),  # one epoch: the last, at data.image_size
        ((64, 3, 4, 32, 0.0, 1.0), [32, 48, 64]),
        ((192, 4, 32, 64, 0.0, 0.0), [192] * 4),  # a ramp that ends at once: every epoch at full size
    ],
)
def test_sides_per_epoch_hand_computed(args: tuple, expected: list[int]) -> None:
    assert sizes_per_epoch(*args) == expected


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 60, 130])
@pytest.mark.parametrize(("image_size", "multiple", "start"), [(128, 16, 64), (192, 16, 96), (192, 32, 64), (64, 4, 8), (128, 16, 128)])
@pytest.mark.parametrize("ramp", [(0.0, 0.7), (0.2, 0.6), (0.5, 0.5), (0.0, 1.0), (1.0, 1.0), (0.3, 0.95)])
def test_sides_are_multiples_never_fall_and_end_at_the_image_size(epochs: int, image_size: int, multiple: int, start: int, ramp: tuple) -> None:
    """Each side is within half a multiple of the linear ramp computed here in floats, a multiple of 2**depth,
    within [start, image_size], never below the epoch before, and the last epoch is at image_size."""
    sizes = sizes_per_epoch(image_size, epochs, multiple, start, *ramp)
    assert len(sizes) == epochs and sizes[-1] == image_size
    assert all(s % multiple == 0 and start <= s <= image_size for s in sizes)
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))
    low, high = ramp
    for epoch, side in enumerate(sizes, start=1):
        position = (epoch - 1) / (epochs - 1) if epochs > 1 else 1.0
        share = 1.0 if position >= high else 0.0 if position <= low else (position - low) / (high - low)
        assert abs(side - (start + (image_size - start) * share)) <= multiple / 2 + 1e-9, (epoch, side)


def test_batch_scale_grows_the_batch_with_the_square_of_the_shrink() -> None:
    """8 x (128 / side)**2: 32 at 64 px, 20.48 -> 20 at 80, 14.2 -> 14 at 96, 8 at 128; off: 8 throughout."""
    sizes = [64, 80, 96, 128]
    assert batch_sizes_per_epoch(sizes, 128, 8, batch_scale=True) == [32, 20, 14, 8]
    assert batch_sizes_per_epoch(sizes, 128, 8, batch_scale=False) == [8] * 4


def test_plan_counts_the_steps_each_batch_size_makes() -> None:
    """18 items in batches of 8, 4 and 2: 3 + 5 + 9 = 17 steps; the share done counts the steps before."""
    plan = epoch_plan(18, [8, 4, 2], [16, 24, 32])
    assert plan.steps == (3, 5, 9) and plan.total_steps == 17
    assert [plan.share_done(1, 0), plan.share_done(2, 0), plan.share_done(3, 8)] == [0.0, 3 / 17, 16 / 17]
    assert plan.record(2) == {"train/size": 24, "train/batch_size": 4}
    assert epoch_plan(18, [8], [None]).record(1) == {"train/batch_size": 8}


def test_without_a_schedule_every_epoch_is_at_the_image_size_and_batch_size() -> None:
    cfg = compose_config("trainer.max_epochs=4", "trainer.batch_size=5")
    plan = plan_for(cfg, 243)
    assert plan.sizes == (128,) * 4 and plan.batch_sizes == (5,) * 4 and plan.total_steps == 4 * math.ceil(243 / 5)
    scheduled = plan_for(compose_config("trainer.max_epochs=3", f"{SCHEDULE}.start_size=64", f"{SCHEDULE}.ramp_end=1.0", f"{SCHEDULE}.batch_scale=true"), 243)
    assert scheduled.sizes == (64, 96, 128) and scheduled.batch_sizes == (32, 14, 8)
    assert scheduled.steps == (math.ceil(243 / 32), math.ceil(243 / 14), math.ceil(243 / 8))


# --- a bad schedule ---------------------------------------------------------------------------------------


def test_valid_schedules_pass_validation() -> None:
    validate(compose_config(f"{SCHEDULE}.start_size=64"))
    validate(compose_config(f"{SCHEDULE}.start_size=128", f"{SCHEDULE}.ramp_start=0.5", f"{SCHEDULE}.ramp_end=0.5"))
    validate(compose_config("experiment=pets_best", f"{SCHEDULE}.start_size=96", f"{SCHEDULE}.batch_scale=true"))
    validate(compose_config(f"{SCHEDULE}=null"))
    validate(compose_config("task=vae"))


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ([f"{SCHEDULE}.start_size=100"], [f"{SCHEDULE}.start_size=100", "2**model.depth=16", f"use {SCHEDULE}.start_size=96"]),
        ([f"{SCHEDULE}.start_size=256"], [f"{SCHEDULE}.start_size=256", "data.image_size=128", f"use {SCHEDULE}.start_size=128"]),
        ([f"{SCHEDULE}.start_size=0"], [f"{SCHEDULE}.start_size=0", f"use {SCHEDULE}.start_size=16"]),
        ([f"{SCHEDULE}.start_size=64.5"], [f"{SCHEDULE}.start_size=64.5", "whole number"]),
        ([f"{SCHEDULE}.start_size=64", f"{SCHEDULE}.ramp_start=-0.1"], [f"{SCHEDULE}.ramp_start=-0.1", "[0, 1]"]),
        ([f"{SCHEDULE}.start_size=64", f"{SCHEDULE}.ramp_end=1.5"], [f"{SCHEDULE}.ramp_end=1.5", "[0, 1]"]),
        ([f"{SCHEDULE}.start_size=64", f"{SCHEDULE}.ramp_start=0.8", f"{SCHEDULE}.ramp_end=0.5"],
         [f"{SCHEDULE}.ramp_start=0.8", f"{SCHEDULE}.ramp_end=0.5", f"use {SCHEDULE}.ramp_end=0.8"]),
        ([f"{SCHEDULE}.start_size=64", f"{SCHEDULE}.batch_scale=yes"], [f"{SCHEDULE}.batch_scale='yes'", "true or false"]),
        (["task=vae", f"{SCHEDULE}.start_size=16"], [f"{SCHEDULE}.start_size=16", "task=unet", f"{SCHEDULE}.start_size=null"]),
        (["augment.crop_size=64", f"{SCHEDULE}.start_size=64"], [f"{SCHEDULE}.start_size=64", "augment.crop_size=64", "augment.crop_size=null"]),
    ],
)
def test_bad_schedule_is_a_one_line_error_naming_key_value_and_fix(overrides: list[str], fragments: list[str]) -> None:
    with pytest.raises(UserError) as info:
        validate(compose_config(*overrides))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("start", [100, 256, 0])
def test_the_suggested_start_size_validates(start: int) -> None:
    with pytest.raises(UserError) as info:
        validate(compose_config(f"{SCHEDULE}.start_size={start}"))
    suggested = str(info.value).split(f"use {SCHEDULE}.start_size=")[1].split(",")[0]
    validate(compose_config(f"{SCHEDULE}.start_size={suggested}"))


def test_a_key_the_schedule_does_not_take_is_named() -> None:
    cfg = compose_config(f"{SCHEDULE}.start_size=64")
    with open_dict(cfg):
        cfg.trainer.size_schedule.end_size = 128
    with pytest.raises(UserError, match=rf"^{SCHEDULE}\.end_size is not a setting; {SCHEDULE} takes start_size, ramp_start, ramp_end, batch_scale"):
        validate(cfg)


def test_bad_schedule_on_the_command_line_is_one_line_before_any_work(tiny_pets: TinyPets, tmp_path: Path) -> None:
    """Exit status 2, one line on stderr, and no run dir: the config is checked before Hydra creates it."""
    run_dir = tmp_path / "run"
    args = smoke_overrides_for(tiny_pets.root, tmp_path) + [f"{SCHEDULE}.start_size=18", f"hydra.run.dir={run_dir}"]
    result = run_cli(args, tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: {SCHEDULE}.start_size=18 must divide by 2**model.depth=4")
    assert not run_dir.exists()
    assert not (tmp_path / "cache").exists()  # no data was decoded


def test_a_resume_with_another_schedule_is_refused() -> None:
    """The sides and the steps of a resumed run must be those it started with; without a schedule on either side
    nothing is refused, and trainer.max_epochs may then change in a run dir without an lr schedule only."""
    def checkpoint(*extra: str) -> dict:
        cfg = compose_config("model.width=4", "model.depth=2", *extra)
        return {"config": OmegaConf.to_container(cfg, resolve=True), "optimizer": {}, "scaler": {}, "train_state": {}, "rng": [None]}

    now = compose_config("model.width=4", "model.depth=2", f"{SCHEDULE}.start_size=64")
    model = torch.nn.Linear(1, 1)
    saved = checkpoint(f"{SCHEDULE}.start_size=64")
    saved["model"] = model.state_dict()
    check_resumable(saved, now, model, 1, Path("last.pt"))
    other = checkpoint(f"{SCHEDULE}.start_size=64", f"{SCHEDULE}.batch_scale=true") | {"model": model.state_dict()}
    with pytest.raises(UserError, match=rf"^{SCHEDULE} \(start_size=64, ramp_start=0.0, ramp_end=0.7, batch_scale=false\) differs from the one in last.pt \(start_size=64, ramp_start=0.0, ramp_end=0.7, batch_scale=true\)"):
        check_resumable(other, now, model, 1, Path("last.pt"))
    unscheduled = checkpoint() | {"model": model.state_dict()}
    check_resumable(unscheduled, compose_config("model.width=4", "model.depth=2", f"{SCHEDULE}=null"), model, 1, Path("last.pt"))

    constant = ("trainer.scheduler=null",)
    longer = settings_of(compose_config(*constant, "trainer.max_epochs=90"))
    assert differences(settings_of(compose_config(*constant)), longer) == []
    scheduled = (*constant, f"{SCHEDULE}.start_size=64")
    assert differences(settings_of(compose_config(*scheduled)), settings_of(compose_config(*scheduled, "trainer.max_epochs=90"))) == [
        "trainer.max_epochs: 60 there, 90 now"
    ]


# --- through the command ------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_scheduled_run_records_each_epoch_and_its_lr_cycle_ends_at_the_last_step(tiny_pets: TinyPets, tmp_path: Path) -> None:
    """3 epochs from 16 to 32 px on the 18 training items of the tiny data set (20 trainval, a tenth held out), batch
    2 scaled by (32 / side)**2: batches 8, 3.6 -> 4 and 2, so 3 + 5 + 9 = 17 steps, OneCycle's total_steps; stepping
    it once more than that would raise."""
    run_dir = tmp_path / "run"
    args = smoke_overrides_for(tiny_pets.root, tmp_path) + [
        "trainer.max_epochs=3", "trainer.batch_size=2", f"{SCHEDULE}.start_size=16", f"{SCHEDULE}.ramp_end=1.0",
        f"{SCHEDULE}.batch_scale=true", f"hydra.run.dir={run_dir}",
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = read_metrics(run_dir)
    assert [(line["train/size"], line["train/batch_size"]) for line in lines] == [(16, 8), (24, 4), (32, 2)]
    assert [line["train_images_per_second"] * line["epoch_seconds"] for line in lines] == pytest.approx([18, 18, 18])
    scheduler = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)["scheduler"]
    assert scheduler["total_steps"] == scheduler["last_epoch"] == 17
    (folder,) = offline_runs(run_dir)
    history = [row for row in read_run(folder).history if "epoch" in row]
    assert [(row["train/size"], row["train/batch_size"]) for row in history] == [(16, 8), (24, 4), (32, 2)]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"


def comparable(line: dict) -> dict:
    """A metrics.jsonl line less its timings."""
    return {k: v for k, v in line.items() if k not in ("epoch_seconds", "train_images_per_second")}


@pytest.mark.slow
@pytest.mark.parametrize(("stop_signal", "batch_scale"), [(signal.SIGKILL, "false"), (signal.SIGTERM, "true")])
def test_stopped_in_the_middle_of_the_ramp_resumes_to_the_same_weights(
    tiny_pets: TinyPets, tmp_path: Path, stop_signal: signal.Signals, batch_scale: str
) -> None:
    """Sides 32, 48, 64 over 3 epochs of the strong augmentation. Stopped once epoch 1's checkpoint is written:
    SIGKILL resumes from the end of epoch 1; SIGTERM saves where the step it interrupts ends, in epoch 2 unless it
    lands before that epoch starts, and the resumed run skips the steps done at that epoch's batch size (2 with
    batch_scale). The resumed run ends with the weights, metrics and test scores of a run left alone, bit for bit."""
    schedule = (f"{SCHEDULE}.start_size=32", f"{SCHEDULE}.ramp_end=1.0", f"{SCHEDULE}.batch_scale={batch_scale}")
    reference_dir = tmp_path / "reference"
    result = run_cli(overrides(tiny_pets.root, tmp_path, reference_dir, *schedule), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    run_dir = tmp_path / "run"
    args = overrides(tiny_pets.root, tmp_path, run_dir, *schedule)
    proc = start(args, tmp_path)
    wait_for_first_checkpoint(run_dir, proc)
    proc.send_signal(stop_signal)
    proc.communicate(timeout=60)
    stopped = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)["train_state"]
    assert stopped["epochs_completed"] < 3  # stopped before the ramp's end

    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in (run_dir / "s18exp.log").read_text()
    assert epochs_logged(run_dir) == [1, 2, 3]
    assert [comparable(line) for line in read_metrics(run_dir)] == [comparable(line) for line in read_metrics(reference_dir)]
    assert [line["train/size"] for line in read_metrics(run_dir)] == [32, 48, 64]
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference_dir))
    assert {k: v for k, v in summary.items() if k.startswith("test/")} == {k: v for k, v in expected.items() if k.startswith("test/")}
    weights, expected_weights = (torch.load(d / "checkpoints/last.pt", weights_only=False)["model"] for d in (run_dir, reference_dir))
    assert weights.keys() == expected_weights.keys() and all(torch.equal(weights[k], expected_weights[k]) for k in weights)
