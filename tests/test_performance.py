"""The fast path's switches: `trainer.compile` (same outputs as eager, clean checkpoint keys), the memory format
that `trainer.channels_last` really selects, and the non-finite check that waits on the device.

The speed itself is measured by scripts/bench.py, not asserted here (timings on a shared machine are noise).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from torch import nn

from s18exp.data import Batches
from s18exp.loop import LoopContext, compiled, fit
from s18exp.stopping import FirstNonFinite
from s18exp.runtime import Runtime, unwrap
from s18exp.paths import CONFIG_DIR
from s18exp.tracking import Tracker

REPO = Path(__file__).resolve().parent.parent


def unet_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=["model.width=4", "model.depth=2", "data.image_size=32", "wandb.mode=disabled", *overrides],
        )


def tiny_unet(cfg, runtime: Runtime) -> tuple[object, nn.Module]:
    task = get_class(cfg.task._target_)(cfg)
    torch.manual_seed(0)
    return task, runtime.prepare_model(task.build_model())


def first_conv_output(model: nn.Module, task, runtime: Runtime) -> torch.Tensor:
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    handle = conv.register_forward_hook(lambda _m, _i, out: seen.append(out))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    masks = torch.randint(0, 3, (2, 32, 32), dtype=torch.uint8)
    images, masks = runtime.to_device(images, masks)
    with runtime.autocast():
        task.training_loss(model, images, masks)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_setting_selects_the_memory_format_of_the_activations(channels_last: bool):
    """`trainer.channels_last=false` must mean NCHW all through (the plain baseline), true NHWC."""
    runtime = Runtime(torch.device("cpu"), "fp32", channels_last)
    task, model = tiny_unet(unet_config(), runtime)
    out = first_conv_output(model, task, runtime)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert out.is_contiguous() != channels_last


def test_first_non_finite_loss_is_recorded_on_the_device_and_read_once():
    watch = FirstNonFinite(torch.device("cpu"))
    for step, value in enumerate([1.0, 2.0, math.nan, math.inf, 3.0]):
        watch.update(torch.tensor(value), step)
    assert watch.read()[0] == 2 and math.isnan(watch.read()[1])
    clean = FirstNonFinite(torch.device("cpu"))
    clean.update(torch.tensor(0.5), 0)
    assert clean.read() is None


def test_unwrap_strips_torch_compile_and_keeps_state_dict_keys_clean():
    model = nn.Sequential(nn.Linear(3, 2))
    wrapped = torch.compile(model)  # wrapping compiles nothing until called
    assert any(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    assert unwrap(wrapped) is model
    assert list(unwrap(wrapped).state_dict()) == ["0.weight", "0.bias"]
    cfg = unet_config()
    assert compiled(model, cfg.trainer) is model  # trainer.compile defaults to false


@pytest.mark.slow
def test_compiled_training_matches_eager_and_its_checkpoint_loads_into_a_plain_model(tiny_pets, tmp_path):
    """One epoch of `fit` with trainer.compile=true against eager, same seed and data: the same losses and
    weights within float tolerance, and last.pt loads strictly into a freshly built model.

    torch.compile on a CPU takes tens of seconds for a model of any size (43 s with a cold inductor cache on the
    shared 2-core machine under load, 8 s with a warm one), so the UNet is the smallest there is."""
    torch.set_num_threads(1)
    results = {}
    for mode in ("eager", "compiled"):
        cfg = unet_config(
            f"data.root={tiny_pets.root}", "data.download=false", f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer.batch_size=4", "trainer.max_epochs=1", "trainer.progress=off", f"trainer.compile={mode == 'compiled'}",
            "data.limit_train=8", "data.limit_val=4",  # whole batches: no recompilation for a smaller last batch
            "model.depth=1",  # compile time grows with the number of layers
        )
        runtime = Runtime(torch.device("cpu"), "fp32", channels_last=True)
        task, model = tiny_unet(cfg, runtime)
        data = task.build_data()
        run_dir = tmp_path / mode
        (run_dir / "checkpoints").mkdir(parents=True)
        tracker = Tracker(mode="disabled", project="p", entity=None, run_dir=run_dir, name="n", group="g", job_type="unet", tags=[], config={})
        torch.manual_seed(0)
        fit(model, task, Batches(data.train, 4, shuffle=True), Batches(data.val, 4), LoopContext(cfg.trainer, runtime, run_dir, tracker, {}))
        results[mode] = (run_dir, model)

    eager_dir, eager_model = results["eager"]
    compiled_dir, _ = results["compiled"]
    first_line = lambda d: json.loads((d / "metrics.jsonl").read_text().splitlines()[0])
    eager_line, compiled_line = first_line(eager_dir), first_line(compiled_dir)
    assert compiled_line["train/loss"] == pytest.approx(eager_line["train/loss"], rel=1e-3)
    assert compiled_line["val/loss"] == pytest.approx(eager_line["val/loss"], rel=1e-3)

    state = torch.load(compiled_dir / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert not any(k.startswith("_orig_mod.") for k in state)
    _, fresh = tiny_unet(cfg, Runtime(torch.device("cpu"), "fp32", channels_last=False))
    fresh.load_state_dict(state, strict=True)
    for key, value in eager_model.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=1e-3, atol=1e-4)


def test_bench_script_describes_itself():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "--json" in result.stdout and "--predict-only" in result.stdout


def test_bench_calls_a_load_above_half_a_core_per_thread_busy(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench", bench)  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.busy([1.01, 0.2, 0.1], threads=2) and not bench.busy([1.0, 3.0, 3.0], threads=2)
    assert bench.busy([0.6, 0.0, 0.0], threads=1) and not bench.busy([], threads=2)
