"""Loading checkpoints (s18exp/checkpoint.py): a checkpoint from elsewhere runs no code in `predict`,
`generate` or a resumed run; what a run saves loads back with its RNG states as CPU tensors; a resume
refuses a changed model or number of ranks with one line, and moves between a scaled (fp16) and an unscaled
precision; a NaN validation score never holds best.pt over a number."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from conftest import TinyPets, cli_env, smoke_overrides_for
from s18exp import generate, predict
from s18exp.checkpoint import (
    TrainState, check_resumable, check_targets, load_checkpoint, project_targets, read_checkpoint, restore, run_weights_file,
)
from s18exp.distributed import Dist
from s18exp.errors import UserError
from s18exp.updates import Updates
from s18exp.runtime import Runtime, rng_state, set_rng_state
from s18exp.paths import CONFIG_DIR
from s18exp.tasks.segmentation import SegmentationTask
from s18exp.tasks.vae import VAETask


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["data.image_size=32", "model.width=4", "model.depth=2", *overrides])


class WritesAFile:
    """Unpickling this object would create `path` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def plain_checkpoint(cfg, **extra) -> dict:
    torch.manual_seed(0)
    model = SegmentationTask(cfg).build_model()
    return {"config": OmegaConf.to_container(cfg, resolve=True), "model": model.state_dict(), "class_names": ["pet", "background", "border"], **extra}


def pickle_bomb(path: Path, marker: Path) -> Path:
    torch.save({**plain_checkpoint(compose_config()), "payload": WritesAFile(marker)}, path)
    return path


def system_target(path: Path, marker: Path, where: str) -> Path:
    """A checkpoint of plain values whose config asks hydra to call os.system at `where` (task or model)."""
    state = plain_checkpoint(compose_config())
    state["config"][where] = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    torch.save(state, path)
    return path


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


# --- what is allowed ----------------------------------------------------------------------------------


def test_project_targets_are_the_conf_tree_options() -> None:
    targets = project_targets()
    assert {"s18exp.tasks.segmentation.SegmentationTask", "s18exp.models.unet.UNet", "s18exp.tasks.vae.VAETask",
            "s18exp.losses.DiceCELoss", "s18exp.data.pets.PetsData", "torch.optim.AdamW"} <= targets
    assert not any(t.startswith(("os.", "builtins.", "subprocess.")) for t in targets)


@pytest.mark.parametrize("target", ["torch.optim.SGD", "torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.lr_scheduler.OneCycleLR"])
def test_torch_optimisers_and_schedulers_are_allowed(target: str) -> None:
    check_targets({"trainer": {"optimizer": {"_target_": target}}}, Path("x.pt"))


@pytest.mark.parametrize("target", ["os.system", "torch.load", "torch.optim.Optimizer.zero_grad", "torch.optim.lr_scheduler.warnings.warn", "builtins.eval"])
def test_other_targets_are_refused_at_any_depth(target: str) -> None:
    with pytest.raises(UserError, match=f"_target_='{target}'"):
        check_targets({"a": [{"b": {"_target_": target}}]}, Path("x.pt"))


def test_an_old_format_checkpoint_is_refused_not_loaded_unsafely(tmp_path: Path) -> None:
    # what checkpoints held before: NumPy's RNG state as an ndarray
    state = plain_checkpoint(compose_config(), rng=[{"numpy": np.random.get_state()}])
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(UserError, match="retrain") as info:
        read_checkpoint(tmp_path / "old.pt")
    assert "\n" not in str(info.value)


# --- a malicious checkpoint runs nothing ------------------------------------------------------------------


def test_predict_refuses_a_pickle_that_would_write_a_file(tiny_pets: TinyPets, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    ckpt = pickle_bomb(tmp_path / "evil.pt", marker)
    image = tiny_pets.image_file(tiny_pets.test[0])
    assert predict.main([f"ckpt={ckpt}", f"input={image}", f"output={tmp_path / 'out'}"]) == 2
    assert "retrain" in one_error_line(capsys.readouterr().err)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["task", "model"])
def test_predict_refuses_a_config_target_of_os_system(tiny_pets: TinyPets, tmp_path: Path, capsys, where: str) -> None:
    marker = tmp_path / "pwned"
    ckpt = system_target(tmp_path / "evil.pt", marker, where)
    image = tiny_pets.image_file(tiny_pets.test[0])
    assert predict.main([f"ckpt={ckpt}", f"input={image}", f"output={tmp_path / 'out'}"]) == 2
    assert "_target_='os.system'" in one_error_line(capsys.readouterr().err)
    assert not marker.exists()


def test_generate_refuses_both_kinds(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    for ckpt, fragment in ((pickle_bomb(tmp_path / "a.pt", marker), "retrain"), (system_target(tmp_path / "b.pt", marker, "task"), "os.system")):
        assert generate.main([f"ckpt={ckpt}", "n=1", f"output={tmp_path / 'out.npz'}"]) == 2
        assert fragment in one_error_line(capsys.readouterr().err)
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


def run_cli(args: list[str], work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s18exp", *args], cwd=work, env=cli_env(work / "wandb-home"), capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_resume_refuses_both_kinds_before_training(tiny_pets: TinyPets, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for i, ckpt in enumerate((pickle_bomb(tmp_path / "a.pt", marker), system_target(tmp_path / "b.pt", marker, "model"))):
        run_dir = tmp_path / f"run{i}"
        result = run_cli([*smoke_overrides_for(tiny_pets.root, tmp_path), f"trainer.resume={ckpt}", f"hydra.run.dir={run_dir}"], tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        one_error_line(result.stderr)
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists()
    assert not marker.exists()


# --- what a run saves loads back as plain CPU state -------------------------------------------------------


def test_rng_states_round_trip_as_cpu_tensors(tmp_path: Path) -> None:
    """The saved RNG states are CPU tensors and plain values (a weights_only load accepts them), and
    restoring them continues every generator where it was."""
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    saved = rng_state()
    expected = (torch.rand(4), np.random.rand(4), random.random())
    torch.save(plain_checkpoint(compose_config(), rng=[saved]), tmp_path / "last.pt")
    loaded = read_checkpoint(tmp_path / "last.pt")["rng"][0]
    for name in ("torch", "numpy"):
        tensors = [loaded[name]] if name == "torch" else [v for v in loaded[name] if isinstance(v, torch.Tensor)]
        assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert loaded["torch"].dtype == torch.uint8
    set_rng_state(loaded)
    again = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def written_on_a_gpu(path: Path) -> Path:
    """The same checkpoint as if torch.save had been given CUDA tensors: each storage's recorded location,
    `cpu` in the pickle's persistent ids, becomes `cuda:0` (a plain torch.load of it fails without a GPU)."""
    copy = path.with_name(f"gpu-{path.name}")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            target.writestr(info, data)
    return copy


def test_a_checkpoint_written_on_a_gpu_loads_with_cpu_rng_states(tmp_path: Path) -> None:
    """RNG states saved from a GPU run come back as CPU ByteTensors (what torch.set_rng_state and
    torch.cuda.set_rng_state_all accept), weights on the CPU for load_state_dict to move."""
    torch.manual_seed(5)
    saved = rng_state()
    expected = torch.rand(3)
    original = tmp_path / "last.pt"
    torch.save(plain_checkpoint(compose_config(), rng=[saved]), original)
    gpu_file = written_on_a_gpu(original)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu_file, weights_only=True)  # the file really says cuda:0
    loaded = read_checkpoint(gpu_file)
    assert loaded["rng"][0]["torch"].device.type == "cpu" and loaded["rng"][0]["torch"].dtype == torch.uint8
    assert all(t.device.type == "cpu" for t in loaded["model"].values())
    set_rng_state(loaded["rng"][0])
    assert torch.equal(torch.rand(3), expected)


def test_load_checkpoint_builds_the_task_and_model_on_the_device(tmp_path: Path) -> None:
    state = plain_checkpoint(compose_config())
    torch.save(state, tmp_path / "best.pt")
    task, model, cfg = load_checkpoint(tmp_path / "best.pt", torch.device("cpu"))
    assert isinstance(task, SegmentationTask) and cfg.model.width == 4 and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state["model"].items())


def test_a_checkpoint_from_before_model_block_loads_and_resumes_as_the_plain_block(tmp_path: Path) -> None:
    state = plain_checkpoint(compose_config(), optimizer={}, scaler={}, train_state={}, rng=[{}])
    del state["config"]["model"]["block"]
    torch.save(state, tmp_path / "best.pt")
    _, model, _ = load_checkpoint(tmp_path / "best.pt", torch.device("cpu"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state["model"].items())
    now = compose_config()
    check_resumable(state, now, SegmentationTask(now).build_model(), 1, Path("last.pt"))
    residual = compose_config("model.block=residual")
    with pytest.raises(UserError, match="the model differs from the one in last.pt"):
        check_resumable(state, residual, SegmentationTask(residual).build_model(), 1, Path("last.pt"))


def test_load_checkpoint_refuses_another_task_or_other_classes(tmp_path: Path, capsys) -> None:
    torch.save(plain_checkpoint(compose_config()), tmp_path / "unet.pt")
    with pytest.raises(UserError, match="is a task=unet checkpoint; this command needs one of task=vae"):
        load_checkpoint(tmp_path / "unet.pt", torch.device("cpu"), VAETask)
    assert generate.main([f"ckpt={tmp_path / 'unet.pt'}", "n=1", f"output={tmp_path / 'out.npz'}"]) == 2
    assert "needs one of task=vae" in one_error_line(capsys.readouterr().err)
    torch.save(plain_checkpoint(compose_config(), class_names=["background", "pet"]), tmp_path / "edited.pt")
    with pytest.raises(UserError, match=r"the checkpoint's classes \['background', 'pet'\] differ from data.classes=trimap"):
        load_checkpoint(tmp_path / "edited.pt", torch.device("cpu"), SegmentationTask)


# --- resume refuses a different training ------------------------------------------------------------------


def test_resume_refuses_a_changed_world_size_or_model_shape() -> None:
    saved_cfg = compose_config()
    checkpoint = plain_checkpoint(saved_cfg)
    model = SegmentationTask(saved_cfg).build_model()
    with pytest.raises(UserError, match=r"last.pt holds weights but no training state \(optimizer, scaler, train_state, rng\)"):
        check_resumable(checkpoint, saved_cfg, model, 1, Path("last.pt"))
    checkpoint.update(optimizer={}, scaler={}, train_state={}, rng=[{}])
    check_resumable(checkpoint, saved_cfg, model, 1, Path("last.pt"))
    with pytest.raises(UserError, match=r"this run has 2 rank\(s\) but last.pt was written by 1; resume with torchrun --nproc_per_node=1"):
        check_resumable(checkpoint, saved_cfg, model, 2, Path("last.pt"))
    wider = compose_config("model.width=8")
    wider_model = SegmentationTask(wider).build_model()
    with pytest.raises(UserError, match="the model differs from the one in last.pt") as info:
        check_resumable(checkpoint, wider, wider_model, 1, Path("last.pt"))
    wider_shapes = {k: tuple(v.shape) for k, v in wider_model.state_dict().items()}
    differing = [k for k, v in checkpoint["model"].items() if tuple(v.shape) != wider_shapes[k]]
    first = differing[0]
    assert f"({len(differing)} parameter(s) differ; {first} is {tuple(checkpoint['model'][first].shape)} there and {wider_shapes[first]} here)" in str(info.value)
    deeper = compose_config("model.depth=3")
    with pytest.raises(UserError, match="parameter\\(s\\) differ"):
        check_resumable(checkpoint, deeper, SegmentationTask(deeper).build_model(), 1, Path("last.pt"))


def test_resume_refuses_a_changed_weight_average() -> None:
    saved_cfg = compose_config("trainer.ema_decay=0.99")
    model = SegmentationTask(saved_cfg).build_model()
    training_state = dict(optimizer={}, scaler={}, train_state={}, rng=[{}])
    checkpoint = plain_checkpoint(saved_cfg, **training_state)
    with pytest.raises(UserError, match=r"last.pt holds weights but no training state \(trained_model, average_updates\)"):
        check_resumable(checkpoint, saved_cfg, model, 1, Path("last.pt"))
    checkpoint.update(trained_model=checkpoint["model"], average_updates=3)
    check_resumable(checkpoint, saved_cfg, model, 1, Path("last.pt"))
    with pytest.raises(UserError, match=r"trainer.ema_decay=0.9 differs from 0.99 in last.pt; resume with trainer.ema_decay=0.99 or"):
        check_resumable(checkpoint, compose_config("trainer.ema_decay=0.9"), model, 1, Path("last.pt"))
    with pytest.raises(UserError, match=r"trainer.ema_decay=null differs from 0.99 in last.pt; resume with trainer.ema_decay=0.99 or"):
        check_resumable(checkpoint, compose_config(), model, 1, Path("last.pt"))
    # The other way round, the fix the message suggests must be a value the command line takes.
    plain = plain_checkpoint(compose_config(), **training_state)
    with pytest.raises(UserError, match=r"trainer.ema_decay=0.99 differs from null in last.pt; resume with trainer.ema_decay=null or") as info:
        check_resumable(plain, saved_cfg, model, 1, Path("last.pt"))
    suggested = str(info.value).split("resume with ")[1].split()[0]
    check_resumable(plain, compose_config(suggested), model, 1, Path("last.pt"))


@pytest.mark.slow
def test_resume_with_a_wider_model_is_one_line_before_training(tiny_pets: TinyPets, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert run_cli([*smoke_overrides_for(tiny_pets.root, tmp_path), f"hydra.run.dir={first}"], tmp_path).returncode == 0
    second = tmp_path / "second"
    overrides = [a for a in smoke_overrides_for(tiny_pets.root, tmp_path) if not a.startswith("model.width=")]
    result = run_cli([*overrides, "model.width=8", f"trainer.resume={first}", f"hydra.run.dir={second}"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the model differs from the one in" in one_error_line(result.stderr)
    assert not (second / "checkpoints").exists()
    assert json.loads((first / "summary.json").read_text())["status"] == "complete"


# --- resume across precisions, and which epoch is best --------------------------------------------------


def saved_training(scaler: torch.amp.GradScaler) -> tuple[dict, dict[str, torch.Tensor]]:
    """A last.pt's training state, as `checkpoint.Checkpoints` writes it, of a tiny model trained with `scaler`."""
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(epochs_completed=1, best_epoch=1, best_value=0.5)
    resume = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": None,
              "scaler": scaler.state_dict(), "rng": [rng_state()], "train_state": asdict(state)}
    return resume, model.state_dict()


def restored_into(resume: dict, fp16: bool) -> tuple[Updates, nn.Module, TrainState]:
    model = nn.Linear(3, 2)
    trainer = OmegaConf.create({"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1}, "scheduler": None, "grad_clip": None, "ema_decay": None})
    updates = Updates(model, trainer, 1, Runtime(torch.device("cpu"), "fp16" if fp16 else "fp32", channels_last=False))
    return updates, model, restore(resume, updates, Dist())


def test_resume_moves_between_a_scaled_and_an_unscaled_precision() -> None:
    """A bf16, fp32 or CPU run saves an empty scaler state; an fp16 run (where precision=auto resolves to fp16
    on another machine) resumed from it starts a fresh scale, and an fp16 checkpoint resumes under bf16 too."""
    unscaled, weights = saved_training(torch.amp.GradScaler("cpu", enabled=False))
    assert unscaled["scaler"] == {}
    updates, model, state = restored_into(unscaled, fp16=True)
    assert updates.scaler.is_enabled() and updates.scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale() == 2.0**16
    assert state.epochs_completed == 1 and all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())

    scaled, _ = saved_training(torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True))
    updates, _, state = restored_into(scaled, fp16=False)
    assert not updates.scaler.is_enabled() and updates.scaler.state_dict() == {} and state.best_epoch == 1
    updates, _, _ = restored_into(scaled, fp16=True)
    assert updates.scaler.get_scale() == 1024.0  # fp16 to fp16 keeps its scale


@pytest.mark.parametrize(("mode", "number", "better", "worse"), [("max", 0.5, 0.7, 0.3), ("min", 0.5, 0.3, 0.7)])
def test_a_nan_validation_score_is_never_best_over_a_number(mode: str, number: float, better: float, worse: float) -> None:
    state = TrainState()
    assert state.complete_epoch(1, math.nan, 1.0, mode) and state.best_epoch == 1  # nothing better yet
    assert state.complete_epoch(2, number, 1.0, mode) and (state.best_epoch, state.best_value) == (2, number)
    assert not state.complete_epoch(3, math.nan, 1.0, mode) and (state.best_epoch, state.best_value) == (2, number)
    assert not state.complete_epoch(4, worse, 1.0, mode) and state.best_epoch == 2
    assert state.complete_epoch(5, better, 1.0, mode) and state.best_epoch == 5


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ('{"test_weights": "last", "status": "complete"}', "last.pt"),
        ('{"test_weights": "best", "status": "complete"}', "best.pt"),
        ('{"status": "interrupted"}', "best.pt"),  # an unfinished run: its best so far
        ('{"test_weights": "../../elsewhere"}', "best.pt"),  # only the two names a run writes
        ("not json", "best.pt"),
        ('["a list"]', "best.pt"),
        (None, "best.pt"),  # no summary at all
    ],
)
def test_a_run_dir_means_the_checkpoint_its_summary_names(tmp_path: Path, summary: str | None, expected: str) -> None:
    if summary is not None:
        (tmp_path / "summary.json").write_text(summary)
    assert run_weights_file(tmp_path) == tmp_path / "checkpoints" / expected
