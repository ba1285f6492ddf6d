"""What only a GPU can show: bf16 and fp16 training, a killed CUDA run that resumes to identical numbers
under `trainer.deterministic=true` (and decoder=upsample refused under it), torchrun with NCCL on every GPU,
and predict / generate on CUDA.

Every test here is marked `cuda` and skipped (with the reason) where `torch.cuda.is_available()` is false;
`scripts/gpu_check.sh` runs them on a GPU machine. They reuse the tiny on-disk data sets of the CPU tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TinyPets, cli_env, smoke_overrides_for
from test_faults import closed_port, epochs_logged, kill_after_first_checkpoint
from vae_data import image_folder, run_cli as run_module, tiny_overrides  # noqa: F401 (image_folder is a fixture)
from wandb_offline import offline_runs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)"),
]


def gpu_overrides(tiny_root: Path, work: Path, run_dir: Path, *extra: str) -> list[str]:
    base = [a for a in smoke_overrides_for(tiny_root, work) if not a.startswith("trainer.device=")]
    return [*base, "trainer.device=cuda", f"hydra.run.dir={run_dir}", *extra]


def run_cli(args: list[str], work: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s18exp", *args], cwd=work, env=cli_env(work / "wandb-home"),
                          capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_two_epochs_in_reduced_precision(tiny_pets: TinyPets, tmp_path: Path, precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    run_dir = tmp_path / "run"
    result = run_cli(gpu_overrides(tiny_pets.root, tmp_path, run_dir, f"trainer.precision={precision}", "trainer.max_epochs=2"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["precision"] == precision and summary["device"].startswith("cuda")
    assert [m["epoch"] for m in metrics(run_dir)] == [1, 2]
    assert all(np.isfinite(m["train/loss"]) and np.isfinite(m["val/loss"]) for m in metrics(run_dir))
    assert 0.0 <= summary["test/miou"] <= 1.0
    last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["scaler"]["scale"] > 0 if precision == "fp16" else last["scaler"] == {}


def deterministic_args(tiny_root: Path, work: Path, run_dir: Path) -> list[str]:
    """Three epochs of single-image steps with the strong augmentation, deterministic: long enough to be
    killed in the middle, and every random draw must be repeated exactly after the resume."""
    return gpu_overrides(
        tiny_root, work, run_dir, "trainer.deterministic=true", "trainer.precision=bf16" if torch.cuda.is_bf16_supported() else "trainer.precision=fp16",
        "trainer.max_epochs=3", "trainer.batch_size=1", "data.image_size=64", "model.width=8", "augment=strong",
    )


def test_killed_cuda_run_resumes_to_identical_metrics(tiny_pets: TinyPets, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert run_cli(deterministic_args(tiny_pets.root, tmp_path, reference), tmp_path).returncode == 0

    run_dir = tmp_path / "run"
    args = deterministic_args(tiny_pets.root, tmp_path, run_dir)
    kill_after_first_checkpoint(args, run_dir, tmp_path)
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in (run_dir / "s18exp.log").read_text()

    assert epochs_logged(run_dir) == [1, 2, 3]
    keys = lambda d: [{k: v for k, v in m.items() if k.startswith(("train/loss", "val/"))} for m in metrics(d)]
    assert keys(run_dir) == keys(reference)
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert {k: v for k, v in summary.items() if k.startswith("test/")} == {k: v for k, v in expected.items() if k.startswith("test/")}
    weights, expected_weights = (torch.load(d / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"] for d in (run_dir, reference))
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights)


def test_deterministic_refuses_bilinear_upsampling_before_any_work(tiny_pets: TinyPets, tmp_path: Path) -> None:
    """Bilinear up-sampling has no deterministic CUDA backward: under trainer.deterministic=true a
    decoder=upsample run stops with one line before training, and without it the same run trains."""
    run_dir = tmp_path / "run"
    result = run_cli(gpu_overrides(tiny_pets.root, tmp_path, run_dir, "decoder=upsample", "trainer.deterministic=true"), tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "decoder=upsample" in lines[0], result.stderr[-3000:]
    assert not (run_dir / "metrics.jsonl").exists()
    result = run_cli(gpu_overrides(tiny_pets.root, tmp_path, tmp_path / "free", "decoder=upsample"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL across GPUs needs at least 2 GPUs")
def test_torchrun_with_nccl_on_every_gpu(tiny_pets: TinyPets, tmp_path: Path) -> None:
    ranks = torch.cuda.device_count()
    run_dir = tmp_path / "run"
    args = gpu_overrides(tiny_pets.root, tmp_path, run_dir, "trainer.max_epochs=2", "loss=bce")
    args = [a if a != "trainer.device=cuda" else "trainer.device=auto" for a in args]  # each rank takes cuda:LOCAL_RANK
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_port", str(closed_port()), "-m", "s18exp", *args],
        cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Duplicate GPU" not in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == ranks and summary["status"] == "complete" and summary["device"] == "cuda:0"
    assert epochs_logged(run_dir) == [1, 2] and len(offline_runs(run_dir)) == 1


def train_cpu_checkpoint(tiny_pets: TinyPets, work: Path) -> Path:
    run_dir = work / "cpu-run"
    result = run_cli([*smoke_overrides_for(tiny_pets.root, work), "trainer.precision=fp32", f"hydra.run.dir={run_dir}"], work)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "best.pt"


def test_predict_on_cuda_matches_the_cpu(tiny_pets: TinyPets, tmp_path: Path) -> None:
    """A checkpoint trained on the CPU predicts the same masks on the GPU (fp32), up to a few pixels where
    two classes' logits are within rounding of each other."""
    ckpt = train_cpu_checkpoint(tiny_pets, tmp_path)
    images = tiny_pets.base / "images"
    outputs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = subprocess.run([sys.executable, "-m", "s18exp.predict", f"ckpt={ckpt}", f"input={images}", f"output={out}", f"device={device}"],
                                cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[device] = {p.name: np.asarray(Image.open(p)) for p in out.glob("*.png")}
    assert outputs["cpu"].keys() == outputs["cuda"].keys() and len(outputs["cpu"]) == len(tiny_pets.trainval) + len(tiny_pets.test)
    for name, mask in outputs["cpu"].items():
        assert mask.shape == outputs["cuda"][name].shape
        assert (mask == outputs["cuda"][name]).mean() > 0.99, name


def test_generate_on_cuda_matches_the_cpu(image_folder: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "vae"
    result = run_module("s18exp", ["task=vae", *tiny_overrides(image_folder, tmp_path), f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    arrays = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.npz"
        result = run_module(
            "s18exp.generate", [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "n=6", f"output={out}", f"device={device}", f"root={image_folder}"], tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
        with np.load(out) as npz:
            arrays[device] = {k: npz[k] for k in npz.files}
    for key in ("inputs", "true_labels", "given_labels", "class_names"):
        assert np.array_equal(arrays["cpu"][key], arrays["cuda"][key]), key
    difference = np.abs(arrays["cpu"]["outputs"].astype(int) - arrays["cuda"]["outputs"].astype(int))
    assert difference.max() <= 2  # fp32 on both; kernels differ in the last bits, pixels by a rounding step


def test_cross_entropy_under_deterministic_mode_on_cuda_repeats_and_matches_the_cpu() -> None:
    """CUDA's fused NLL mean is refused under deterministic algorithms; the project's cross_entropy then takes the
    per-pixel path, which runs, repeats bit for bit, and equals the CPU's value."""
    from s18exp.losses import cross_entropy

    torch.manual_seed(0)
    logits, target = torch.randn(4, 3, 64, 64), torch.randint(0, 3, (4, 64, 64))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = (cross_entropy(logits.cuda().requires_grad_(), target.cuda()) for _ in range(2))
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(first, second)
    assert torch.allclose(first.cpu(), cross_entropy(logits, target), atol=1e-5)
