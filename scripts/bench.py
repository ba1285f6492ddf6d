"""`python scripts/bench.py [--quick] [--device cuda] [--json FILE]`: how fast the defaults are, against a plain baseline, in one process.

Every comparison runs in this one process, its two sides alternating window by window (fast, plain, fast,
plain, ...) after warm-up; images/s are medians over the windows, and a speed-up is the median over rounds of
the ratio of the two windows of a round, so that a machine shared with other work slows both sides alike. The
load average is recorded at the start, after each section and at the end: compare only quiet runs (load about
the number of threads the benchmark itself uses). On a GPU each timed window is bracketed by
`torch.cuda.synchronize()` and the matmul peak is the GPU's (fp32 without TF32).

What it measures (docs/performance.md shows a run):
- matmul peak: N x N x N matmuls in bf16 and fp32, GFLOP/s, the yardstick of the fractions below (N = 2048 on a
  CPU; 8192 on a GPU, whose tensor cores a smaller matmul leaves partly idle);
- UNet train step, images/s, for the four combos at width 32 and 64, 128 px, batch 16: the project's fast
  settings (the defaults: `trainer.precision=auto` -> bf16 where supported, `trainer.channels_last=true`)
  against a plain fp32, NCHW, eager step of the SAME model (same config, same init). Models are built by the
  project's own path (Hydra compose of conf/, the task's `build_model`, `Runtime.prepare_model`) and a step is
  what `loop.train_epoch` does: `Runtime.to_device`, the task's `training_loss` (with its default `augment=strong`)
  under `Runtime.autocast`, the deferred non-finite check and `updates.optimizer_step` (AdamW + OneCycle from
  `trainer.optimizer`/`trainer.scheduler`).
  FLOPs per image are counted with `torch.utils.flop_counter.FlopCounterMode` over the forward and backward
  of one step; achieved GFLOP/s = FLOPs x images/s, and its fraction of the measured matmul peak;
- torch.compile (not in --quick): compile time and steady-state step of the default combo at width 32;
- on a GPU, `--quick` is the GPU check of scripts/gpu_check.sh instead: mp_tr_bce at width 32 and 64, batch 64,
  eager and with `trainer.compile=true`, each step's achieved FLOP/s as a share of the measured bf16 peak (MFU);
- data: images/s of the cached tensor pipeline (`Batches` over the decoded uint8 split, then the task's
  on-device augmentation, the default `augment=strong` and the flip-only `augment=flip`, and its normalisation)
  against a naive Dataset that decodes and resizes each item with PIL,
  on the real pets subset (`--data-root`, default ../shared/data) or, when absent, on JPEGs written to a
  temporary folder; the one-time decode that fills the cache, and the cached load; the loader-vs-step ratio;
- VAE train step, images/s, on MNIST (1x32x32) and CIFAR-10 (3x32x32) shapes, fast against plain;
- end to end (not in --quick): the wall time of `python -m s18exp data.root=... data.image_size=128
  model.width=32 trainer.max_epochs=3 wandb.mode=disabled` with the defaults, against the plain settings
  (`trainer.precision=fp32 trainer.channels_last=false data.cache=false`), and the test metrics of both
  (the fast path must give the same results within noise);
- predict: files/s of `python -m s18exp.predict` (called in this process) on the test images of the pets
  subset, or on JPEGs written to a temporary folder, with a 128 px, width 32 UNet of random weights: reading,
  batched model (flip TTA, the checkpoint's batch size), upsampling to each image's size and writing the mask
  and overlay files included; `--predict-only` measures this alone;
- peak resident memory of this process and of each end-to-end run.

The performance goals (fast step >= 3.5x plain; >= 65% of the bf16 matmul peak; loader >= 5x the step; an epoch
over 3,680 images at 128 px, width 32, under 2 minutes; predict >= 30 files/s) are reported, not asserted. When
the load average at the start exceeds half a core per thread the benchmark uses, it warns that the figures
are unreliable, and the JSON says so (`machine.busy`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from s18exp.data import Batches
from s18exp.loop import compiled
from s18exp.runtime import Runtime, resolve_precision, unwrap
from s18exp.updates import optimizer_step
from s18exp.paths import CONFIG_DIR
from s18exp.stopping import FirstNonFinite
from s18exp.tasks import task_for

REPO = Path(__file__).resolve().parent.parent
COMBOS = ("mp_tr_bce", "mp_tr_dice", "strconv_tr_bce", "strconv_ups_dice")
WIDTHS = (32, 64)
IMAGE_SIZE, BATCH = 128, 16
FULL_EPOCH_IMAGES = 3680  # the official trainval list of Oxford-IIIT Pet
GOALS = {"speedup": 3.5, "peak_fraction": 0.65, "loader_vs_step": 5.0, "epoch_seconds": 120.0, "gpu_peak_fraction_w64": 0.40, "predict_files_per_s": 30.0}
GPU_QUICK_BATCH = 64  # the GPU check's batch: a batch of 16 leaves an H200 mostly idle
BUSY_LOAD_PER_THREAD = 0.5  # a load average above this many per thread at the start: other work shares the cores
VAE_SHAPES = {"mnist": "MNIST 1x32x32", "cifar10": "CIFAR-10 3x32x32"}

console = Console(width=None if sys.stdout.isatty() else 150)


# ---- helpers --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def section(result: dict[str, Any], name: str, save: Path | None):
    """Print what runs, record its seconds and the load average after it in result["sections"], and write the
    figures so far to `save` (a failure later loses nothing)."""
    console.print(f"[dim]{name} ...[/]")
    start = time.perf_counter()
    yield
    result.setdefault("sections", {})[name] = {"seconds": round(time.perf_counter() - start, 1), "load_after": load_average()}
    if save is not None:
        write_json(result, save)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def busy(load: list[float], threads: int) -> bool:
    """Whether the 1-minute load average exceeds BUSY_LOAD_PER_THREAD per thread the benchmark uses."""
    return bool(load) and load[0] > BUSY_LOAD_PER_THREAD * threads


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def config(*overrides: str) -> DictConfig:
    """The project's composed config, as `python -m s18exp OVERRIDES` would see it."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="bench"):
        return compose(config_name="config", overrides=["wandb.mode=disabled", *overrides])


@dataclass(frozen=True)
class Settings:
    name: str
    precision: str  # resolved: bf16 | fp16 | fp32
    channels_last: bool
    compile: bool = False
    cudnn_benchmark: bool = False


def fast_settings(cfg: DictConfig, device: torch.device, compile_: bool | None = None) -> Settings:
    """The project's defaults, resolved for this device."""
    return Settings(
        "fast", resolve_precision(cfg.trainer.precision, device), bool(cfg.trainer.channels_last),
        bool(cfg.trainer.compile) if compile_ is None else compile_, device.type == "cuda",
    )


PLAIN = Settings("plain", "fp32", False)


class Step:
    """One training step of the composed config's model, as `loop.train_epoch` takes it, on a fixed synthetic batch."""

    def __init__(self, cfg: DictConfig, settings: Settings, device: torch.device, task: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.settings, self.device = settings, device
        self.runtime = Runtime(device, settings.precision, settings.channels_last)
        self.task = task
        torch.manual_seed(cfg.seed)  # the same initial weights for fast and plain
        self.model = self.runtime.prepare_model(task.build_model())
        self.model.train()
        trainer = cfg.trainer.copy()
        trainer.compile = settings.compile
        self.step_model = compiled(self.model, trainer)
        self.optimizer = instantiate(trainer.optimizer, params=self.model.parameters())
        self.scheduler = instantiate(trainer.scheduler, optimizer=self.optimizer, total_steps=1_000_000) if trainer.scheduler is not None else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.grad_clip = trainer.grad_clip
        self.first_bad = FirstNonFinite(device)
        self.batch = batch
        self.steps = 0

    def backend(self) -> contextlib.AbstractContextManager:
        """cuDNN's autotuner on for the fast side only (the project sets it in `Runtime.prepare_model`)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.backends.cudnn.flags(enabled=True, benchmark=self.settings.cudnn_benchmark)

    def loss(self) -> torch.Tensor:
        images, targets = self.runtime.to_device(*self.batch)
        with self.runtime.autocast():
            return self.task.training_loss(self.step_model, images, targets)

    def __call__(self) -> None:
        with self.backend():
            loss = self.loss()
            self.first_bad.update(loss, self.steps)
            optimizer_step(self.model, loss, self.optimizer, self.scaler, self.scheduler, self.grad_clip)
        self.steps += 1

    def flops_per_image(self) -> int:
        """FLOPs of one step's forward and backward (eager), per image."""
        model = unwrap(self.step_model)
        counter = FlopCounterMode(display=False)
        with counter, self.backend():
            images, targets = self.runtime.to_device(*self.batch)
            with self.runtime.autocast():
                loss = self.task.training_loss(model, images, targets)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops() // len(self.batch[0])


def timed(fn: Callable[[], None], device: torch.device, repeat: int = 1) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return time.perf_counter() - start


def compare(sides: dict[str, Callable[[], None]], device: torch.device, windows: int, min_window_s: float, warmup: int = 1) -> dict[str, dict[str, Any]]:
    """Seconds per call of each side: `warmup` untimed calls, then `windows` rounds in which each side runs one
    timed window in turn. The first round's windows are one call each and size the later ones (whole calls
    lasting at least `min_window_s`). Returns per side the median, all windows and the first call's seconds."""
    first = {}
    for name, fn in sides.items():
        first[name] = timed(fn, device)
        for _ in range(warmup - 1):
            fn()
    repeat = {name: 1 for name in sides}
    per_call: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(windows):
        for name, fn in sides.items():
            per_call[name].append(timed(fn, device, repeat[name]) / repeat[name])
            if round_ == 0:
                repeat[name] = max(1, math.ceil(min_window_s / max(per_call[name][0], 1e-6)))
    return {
        name: {"median_s": statistics.median(v), "windows_s": [round(x, 5) for x in v], "first_call_s": first[name], "calls_per_window": repeat[name]}
        for name, v in per_call.items()
    }


def paired_speedup(slow_windows: list[float], fast_windows: list[float]) -> float:
    """Median over rounds of the ratio of the two sides' windows of the same round: a load that changes
    between rounds cancels out of each ratio."""
    return statistics.median(s / f for s, f in zip(slow_windows, fast_windows))


# ---- matmul peak ----------------------------------------------------------------------------------------


def matmul_peaks(device: torch.device, windows: int, min_window_s: float, n: int) -> dict[str, float]:
    sides, flops = {}, 2 * n**3
    operands = {}
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        operands[dtype] = (a, b)
        sides[str(dtype).removeprefix("torch.")] = (lambda a=a, b=b: torch.mm(a, b))
    if device.type == "cuda":  # fp32 means fp32 here, not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
    result = compare(sides, device, windows, min_window_s, warmup=2)
    return {name: flops / r["median_s"] / 1e9 for name, r in result.items()}


# ---- UNet and VAE steps ---------------------------------------------------------------------------------


def unet_batch(num_classes: int, generator: torch.Generator, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(0, 256, (batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    masks = torch.randint(0, num_classes, (batch, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    return images, masks


def bench_unet(
    combo: str, width: int, device: torch.device, peaks: dict[str, float], windows: int, min_window_s: float,
    batch_size: int = BATCH, with_compiled: bool = False,
) -> dict[str, Any]:
    """Fast against plain; `with_compiled` adds a third side, the fast settings with `trainer.compile=true`
    (its first step, which compiles, is timed apart as `compile_s`)."""
    cfg = config(f"experiment={combo}", f"model.width={width}", f"data.image_size={IMAGE_SIZE}", f"trainer.batch_size={batch_size}")
    task = task_for(cfg)
    batch = unet_batch(len(task.class_names), torch.Generator().manual_seed(0), batch_size)
    fast_cfg = fast_settings(cfg, device, compile_=False)
    fast, plain = Step(cfg, fast_cfg, device, task, batch), Step(cfg, PLAIN, device, task, batch)
    flops = fast.flops_per_image()
    sides: dict[str, Callable[[], None]] = {"fast": fast, "plain": plain}
    row: dict[str, Any] = {"combo": combo, "width": width, "batch": batch_size, "fast_settings": fast_cfg.__dict__, "flops_per_image": flops}
    if with_compiled:
        sides["compiled"] = Step(cfg, fast_settings(cfg, device, compile_=True), device, task, batch)
        row["compile_s"] = timed(sides["compiled"], device)
    result = compare(sides, device, windows, min_window_s)
    fast_peak = peaks["bfloat16" if fast_cfg.precision == "bf16" else "float32"]
    for side in sides:
        peak = peaks["float32"] if side == "plain" else fast_peak
        r = result[side]
        ips = batch_size / r["median_s"]
        row[side] = {
            "images_per_s": ips, "step_s": r["median_s"], "windows_step_s": r["windows_s"], "first_step_s": r["first_call_s"],
            "gflops": flops * ips / 1e9, "peak_fraction": flops * ips / 1e9 / peak,
        }
    row["speedup"] = paired_speedup(result["plain"]["windows_s"], result["fast"]["windows_s"])
    del fast, plain, sides
    return row


def bench_compile(device: torch.device, windows: int, min_window_s: float) -> dict[str, Any]:
    cfg = config("experiment=mp_tr_bce", "model.width=32", f"data.image_size={IMAGE_SIZE}", f"trainer.batch_size={BATCH}")
    task = task_for(cfg)
    batch = unet_batch(len(task.class_names), torch.Generator().manual_seed(0))
    eager = Step(cfg, fast_settings(cfg, device, compile_=False), device, task, batch)
    comp = Step(cfg, fast_settings(cfg, device, compile_=True), device, task, batch)
    start = time.perf_counter()
    timed(comp, device)  # the first step compiles
    compile_s = time.perf_counter() - start
    result = compare({"eager": eager, "compiled": comp}, device, windows, min_window_s)
    out = {"compile_s": compile_s}
    for side, r in result.items():
        out[side] = {"images_per_s": BATCH / r["median_s"], "windows_step_s": r["windows_s"]}
    out["speedup"] = paired_speedup(result["eager"]["windows_s"], result["compiled"]["windows_s"])
    out["break_even_images"] = (
        compile_s / (1 / out["eager"]["images_per_s"] - 1 / out["compiled"]["images_per_s"]) if out["speedup"] > 1 else None
    )
    return out


def bench_vae(dataset: str, device: torch.device, windows: int, min_window_s: float) -> dict[str, Any]:
    cfg = config("task=vae", f"data={dataset}")
    task = task_for(cfg)
    size, channels, batch_size = int(cfg.data.image_size), int(cfg.data.channels), int(cfg.trainer.batch_size)
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randint(0, 256, (batch_size, channels, size, size), dtype=torch.uint8, generator=g),
        torch.randint(0, len(task.class_names), (batch_size,), generator=g),
    )
    fast_cfg = fast_settings(cfg, device)
    fast, plain = Step(cfg, fast_cfg, device, task, batch), Step(cfg, PLAIN, device, task, batch)
    flops = fast.flops_per_image()
    result = compare({"fast": fast, "plain": plain}, device, windows, min_window_s)
    row = {"dataset": dataset, "shape": VAE_SHAPES[dataset], "batch": batch_size, "width": int(cfg.model.width), "flops_per_image": flops}
    for side in ("fast", "plain"):
        row[side] = {"images_per_s": batch_size / result[side]["median_s"], "windows_step_s": result[side]["windows_s"]}
    row["speedup"] = paired_speedup(result["plain"]["windows_s"], result["fast"]["windows_s"])
    return row


# ---- data pipeline --------------------------------------------------------------------------------------


def write_jpegs(root: Path, count: int = 64) -> None:
    """A folder in Oxford-IIIT Pet's layout: `count` 500x375 JPEG photos-like images and their trimaps."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        name = f"Abyssinian_{i + 1}"
        noise = rng.integers(0, 256, (375 // 5, 500 // 5, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((500, 375), Image.BICUBIC).save(base / "images" / f"{name}.jpg", quality=90)
        trimap = np.full((375, 500), 2, dtype=np.uint8)
        trimap[80:300, 120:380] = 3
        trimap[90:290, 130:370] = 1
        Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{name}.png")
        lines.append(f"{name} 1 1 1")
    half = count // 2
    (base / "annotations" / "trainval.txt").write_text("\n".join(lines[:half]) + "\n")
    (base / "annotations" / "test.txt").write_text("\n".join(lines[half:]) + "\n")


class NaiveDataset(torch.utils.data.Dataset):
    """What a straightforward implementation does: decode, convert, resize, flip and normalise each item."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int) -> None:
        self.pairs, self.size = pairs, size
        self.mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
        self.std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_file, mask_file = self.pairs[i]
        with Image.open(image_file) as im:
            image = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        with Image.open(mask_file) as im:
            mask = np.asarray(im.resize((self.size, self.size), Image.NEAREST)).astype(np.int64) - 1
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        y = torch.from_numpy(mask)
        if torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return (x - self.mean) / self.std, y


def bench_data(data_root: Path | None, device: torch.device, quick: bool, windows: int, naive_items: int | None = None) -> dict[str, Any]:
    temp = None
    source = "real pets subset"
    if data_root is None or not (data_root / "oxford-iiit-pet").is_dir():
        temp = Path(tempfile.mkdtemp(prefix="s18exp-bench-jpegs-"))
        write_jpegs(temp)
        data_root, source = temp, "JPEGs written by the benchmark (500x375)"
    cfg = config(f"data.root={data_root}", f"data.image_size={IMAGE_SIZE}", "data.download=false")
    task = task_for(cfg)
    out: dict[str, Any] = {"source": source, "root": str(data_root)}
    try:
        if not quick:  # the one-time decode that fills the cache, into a fresh cache folder
            with tempfile.TemporaryDirectory(prefix="s18exp-bench-cache-") as cache_dir:
                start = time.perf_counter()
                cold = instantiate(cfg.data, cache_dir=cache_dir)
                seconds = time.perf_counter() - start
                items = len(cold.train) + len(cold.val) + len(cold.test)
                out["cache_fill"] = {"images": items, "seconds": seconds, "images_per_s": items / seconds}
        start = time.perf_counter()
        data = task.build_data()  # the user's cache (paths.cache_dir): filled by the first run, read by later ones
        out["cached_load"] = {"seconds": time.perf_counter() - start, "images": len(data.train) + len(data.val) + len(data.test)}
        start = time.perf_counter()
        data = task.build_data()
        out["cached_load"]["seconds_warm"] = time.perf_counter() - start

        runtime = Runtime(device, resolve_precision(cfg.trainer.precision, device), bool(cfg.trainer.channels_last))
        batches = Batches(data.train, BATCH, shuffle=True, seed=0)

        def cached_epoch(augment: Callable) -> Callable[[], None]:
            def run() -> None:  # what the loop does before the model: batch, device, augment, normalise
                for images, masks in batches:
                    images, masks = runtime.to_device(images, masks)
                    images, masks = augment(images, masks)
                    task.normalize(images)

            return run

        names = data.train.names[:naive_items]
        pairs = [(data_root / "oxford-iiit-pet" / "images" / f"{n}.jpg", data_root / "oxford-iiit-pet" / "annotations" / "trimaps" / f"{n}.png") for n in names]
        naive = NaiveDataset(pairs, IMAGE_SIZE)

        def naive_epoch(workers: int) -> Callable[[], None]:
            loader = torch.utils.data.DataLoader(naive, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0)

            def run() -> None:
                for images, masks in loader:
                    runtime.to_device(images, masks)

            return run

        flip_only = instantiate(config("augment=flip").augment)
        sides = {"cached": cached_epoch(task.augmenter), "cached_flip": cached_epoch(flip_only), "naive_pil_0_workers": naive_epoch(0)}
        if not quick and (os.cpu_count() or 1) > 1:
            sides["naive_pil_2_workers"] = naive_epoch(2)
        result = compare(sides, device, windows, 0.5)
        for name, r in result.items():
            n = len(data.train) if name.startswith("cached") else len(naive)
            out[name] = {"images_per_s": n / r["median_s"], "pass_s": r["median_s"], "images": n}
        out["cached_vs_naive"] = out["cached"]["images_per_s"] / out["naive_pil_0_workers"]["images_per_s"]
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return out


# ---- end to end -----------------------------------------------------------------------------------------


def run_cli(args: list[str], work: Path) -> dict[str, Any]:
    """`python -m s18exp ARGS` as a child process: wall time, peak RSS, and its summary.json."""
    run_dir = work / "run"
    command = [sys.executable, "-m", "s18exp", *args, f"hydra.run.dir={run_dir}", "trainer.resume=never"]
    start = time.perf_counter()
    peak_kb = 0  # VmHWM of the child's own address space (getrusage would count this process's memory, inherited at fork)
    with open(work / "stdout.txt", "w") as out, open(work / "stderr.txt", "w") as err:
        proc = subprocess.Popen(command, cwd=work, stdout=out, stderr=err, env={**os.environ, "WANDB_SILENT": "true"})
        while proc.poll() is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):  # absent once the child is a zombie
                        peak_kb = max(peak_kb, int(line.split()[1]))
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    code = proc.returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}): {(work / 'stderr.txt').read_text()[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = ("test/miou", "test/dice", "test/pixel_acc", "test/iou_pet", "test/iou_background", "test/iou_border", "test/loss")
    return {
        "command": "python -m s18exp " + " ".join(args),
        "wall_s": seconds, "peak_rss_mb": peak_kb / 1024 or None, "train_seconds": summary["train_seconds"],
        "epoch_seconds": [m["epoch_seconds"] for m in metrics],
        "train_images_per_s": [m["train_images_per_second"] for m in metrics],
        "precision": summary.get("precision"), **{k: summary[k] for k in keys if k in summary},
    }


def predict_images(data_root: Path | None, folder: Path) -> str:
    """Fill `folder` with the test images of the pets subset (links), else with written JPEGs; says which."""
    base = data_root / "oxford-iiit-pet" if data_root is not None else None
    if base is not None and (base / "annotations" / "test.txt").is_file():
        folder.mkdir()
        for line in (base / "annotations" / "test.txt").read_text().splitlines():
            image = base / "images" / f"{line.split()[0]}.jpg" if line.strip() else None
            if image is not None and image.is_file():
                (folder / image.name).symlink_to(image.resolve())
        return f"the pets test images under {data_root}"
    write_jpegs(folder.parent / "jpegs")
    (folder.parent / "jpegs" / "oxford-iiit-pet" / "images").rename(folder)
    return "64 written 500x375 JPEGs"


def bench_predict(data_root: Path | None, device: torch.device) -> dict[str, Any]:
    """Files per second of `python -m s18exp.predict` on a folder, batched, and (for comparison) one at a time."""
    from omegaconf import OmegaConf

    from s18exp import predict

    cfg = config(f"data.image_size={IMAGE_SIZE}", "model.width=32")
    task = task_for(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    out: dict[str, Any] = {"image_size": IMAGE_SIZE, "width": 32, "device": str(device)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.save({"config": OmegaConf.to_container(cfg, resolve=True), "model": model.state_dict()}, work / "best.pt")
        out["images"] = predict_images(data_root, work / "images")
        files = len(list((work / "images").iterdir()))
        for name, extra in (("batched", []), ("one_at_a_time", ["batch_size=1"])):
            start = time.perf_counter()
            code = predict.main([f"ckpt={work / 'best.pt'}", f"input={work / 'images'}", f"output={work / name}", f"device={device}", *extra])
            seconds = time.perf_counter() - start
            if code != 0:
                raise RuntimeError(f"predict exited with {code}")
            out[name] = {"files": files, "seconds": seconds, "files_per_s": files / seconds}
    out["speedup"] = out["batched"]["files_per_s"] / out["one_at_a_time"]["files_per_s"]
    return out


def bench_end_to_end(data_root: Path, threads: int | None) -> dict[str, Any]:
    base = [f"data.root={data_root}", f"data.image_size={IMAGE_SIZE}", "model.width=32", "trainer.max_epochs=3", "wandb.mode=disabled"]
    base += [f"trainer.num_threads={threads}"] if threads else []
    plain = ["trainer.precision=fp32", "trainer.channels_last=false", "data.cache=false"]
    out = {}
    for name, args in (("fast", base), ("plain", base + plain)):
        with tempfile.TemporaryDirectory(prefix=f"s18exp-bench-{name}-") as work:
            out[name] = run_cli(args, Path(work))
    out["speedup"] = out["plain"]["wall_s"] / out["fast"]["wall_s"]
    return out


# ---- report ---------------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def show_predict(result: dict[str, Any]) -> None:
    p = result["predict"]
    m = result["machine"]
    console.print(
        f"predict ({p['images']}, {p['image_size']} px, width {p['width']}, {p['device']}): "
        f"{p['batched']['files_per_s']:.1f} files/s batched, {p['one_at_a_time']['files_per_s']:.1f} one at a time "
        f"({p['speedup']:.1f}x); load average {m['load_start']} at start, {result['load_end']} at end"
    )


def show(result: dict[str, Any]) -> None:
    m = result["machine"]
    console.print(
        f"[bold]{m['cpu']}[/], {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), device {m['device']}"
        + (f" {m['gpu']}" if m.get("gpu") else "")
        + f"; load average {m['load_start']} at start, {result['load_end']} at end; {result['seconds']:.0f} s"
    )
    peaks = result["matmul_peak_gflops"]
    console.print(f"matmul {result['matmul_size']}^3 peak: bf16 {peaks['bfloat16']:,.0f} GFLOP/s, fp32 {peaks['float32']:,.0f} GFLOP/s (ratio {peaks['bfloat16'] / peaks['float32']:.2f})")

    compiled = any("compiled" in r for r in result["unet"])
    batch = result["unet"][0]["batch"]
    table = Table(title=f"UNet train step, {IMAGE_SIZE} px, batch {batch}: fast (defaults) vs plain (fp32, NCHW, eager)"
                  + (", and fast with trainer.compile=true" if compiled else ""))
    columns = ["combo", "width", "GFLOP/img", "plain img/s", "fast img/s", "speed-up", "fast GFLOP/s", "% bf16 peak", "plain % fp32 peak"]
    columns += ["compiled img/s", "compiled % bf16 peak", "compile s"] if compiled else []
    for col in columns:
        table.add_column(col, justify="left" if col == "combo" else "right")
    for r in result["unet"]:
        cells = [
            r["combo"], str(r["width"]), fmt(r["flops_per_image"] / 1e9, 2), fmt(r["plain"]["images_per_s"], 2),
            fmt(r["fast"]["images_per_s"], 2), f"{r['speedup']:.2f}x", fmt(r["fast"]["gflops"], 0),
            f"{100 * r['fast']['peak_fraction']:.0f}%", f"{100 * r['plain']['peak_fraction']:.0f}%",
        ]
        if compiled:
            cells += [fmt(r["compiled"]["images_per_s"], 2), f"{100 * r['compiled']['peak_fraction']:.0f}%", fmt(r["compile_s"], 0)]
        table.add_row(*cells)
    console.print(table)

    if result.get("compile"):
        c = result["compile"]
        console.print(
            f"torch.compile (mp_tr_bce, width 32): compile {c['compile_s']:.0f} s; eager {c['eager']['images_per_s']:.2f} img/s, "
            f"compiled {c['compiled']['images_per_s']:.2f} img/s ({c['speedup']:.2f}x)"
            + (f"; pays off after {c['break_even_images']:,.0f} images" if c.get("break_even_images") else "; never pays off")
        )

    table = Table(title="VAE train step (task=vae), fast vs plain")
    for col in ("data", "batch", "MFLOP/img", "plain img/s", "fast img/s", "speed-up"):
        table.add_column(col, justify="left" if col == "data" else "right")
    for r in result["vae"]:
        table.add_row(r["shape"], str(r["batch"]), fmt(r["flops_per_image"] / 1e6, 0), fmt(r["plain"]["images_per_s"], 0), fmt(r["fast"]["images_per_s"], 0), f"{r['speedup']:.2f}x")
    console.print(table)

    d = result["data"]
    table = Table(title=f"data pipeline, {IMAGE_SIZE} px, batch {BATCH}, train split of the {d['source']}")
    table.add_column("pipeline")
    table.add_column("images/s", justify="right")
    table.add_row("cached uint8 tensors: Batches + to_device + strong augmentation + normalise (the project, augment=strong)", fmt(d["cached"]["images_per_s"], 0))
    table.add_row("cached uint8 tensors: Batches + to_device + flip + normalise (augment=flip)", fmt(d["cached_flip"]["images_per_s"], 0))
    table.add_row("naive Dataset: PIL decode + resize per item, DataLoader 0 workers", fmt(d["naive_pil_0_workers"]["images_per_s"], 0))
    if "naive_pil_2_workers" in d:
        table.add_row("naive Dataset: PIL decode + resize per item, DataLoader 2 workers", fmt(d["naive_pil_2_workers"]["images_per_s"], 0))
    if "cache_fill" in d:
        table.add_row(f"one-time decode filling the cache ({d['cache_fill']['images']} images, threads)", fmt(d["cache_fill"]["images_per_s"], 0))
    table.add_row(f"cached load of all splits: {d['cached_load']['seconds_warm']:.2f} s for {d['cached_load']['images']} images", "")
    console.print(table)

    if result.get("end_to_end"):
        e = result["end_to_end"]
        table = Table(title="end to end: 3 epochs, 128 px, width 32 (mp_tr_bce, 3-breed subset), and the result check")
        for col in ("settings", "wall s", "train s", "peak RSS MB", "test mIoU", "test Dice", "pixel acc", "IoU pet", "IoU bg", "IoU border"):
            table.add_column(col, justify="left" if col == "settings" else "right")
        for name in ("fast", "plain"):
            r = e[name]
            table.add_row(
                f"{name} ({r['precision']})", fmt(r["wall_s"]), fmt(r["train_seconds"]), fmt(r["peak_rss_mb"], 0),
                *(fmt(r.get(k), 4) for k in ("test/miou", "test/dice", "test/pixel_acc", "test/iou_pet", "test/iou_background", "test/iou_border")),
            )
        console.print(table)
    if result.get("predict"):
        show_predict(result)

    table = Table(title="performance goals on this machine (reported, not asserted)")
    for col in ("goal", "target", "measured", "met"):
        table.add_column(col)
    for g in result["goals"]:
        table.add_row(g["goal"], g["target"], g["measured"], "[green]yes[/]" if g["met"] else "[red]no[/]")
    console.print(table)
    console.print(f"peak resident memory of the benchmark process: {result['peak_rss_mb']:,.0f} MB" + (f"; GPU max allocated {result['gpu_max_allocated_mb']:,.0f} MB" if result.get("gpu_max_allocated_mb") else ""))


def predict_goal(result: dict[str, Any]) -> dict[str, Any]:
    rate = result["predict"]["batched"]["files_per_s"]
    return {
        "goal": f"predict, {IMAGE_SIZE} px, width 32, files read and written", "target": f">= {GOALS['predict_files_per_s']:.0f} files/s",
        "measured": f"{rate:.1f} files/s", "met": rate >= GOALS["predict_files_per_s"], "value": rate,
    }


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = [predict_goal(result)] if result.get("predict") else []
    for width in sorted({r["width"] for r in result["unet"]}):
        rows = [r for r in result["unet"] if r["width"] == width]
        low = min(r["speedup"] for r in rows)
        out.append({"goal": f"fast step vs plain, width {width} (lowest combo)", "target": f">= {GOALS['speedup']}x", "measured": f"{low:.2f}x", "met": low >= GOALS["speedup"], "value": low})
    low = min(r["fast"]["peak_fraction"] for r in result["unet"])
    best = max(r["fast"]["peak_fraction"] for r in result["unet"])
    out.append({"goal": "fast step, fraction of the bf16 matmul peak", "target": f">= {GOALS['peak_fraction']:.0%}", "measured": f"{low:.0%} to {best:.0%}", "met": low >= GOALS["peak_fraction"], "value": low})
    if result["machine"]["device"].startswith("cuda") and any(r["width"] == 64 for r in result["unet"]):
        wide = max(max(r[side]["peak_fraction"] for side in ("fast", "compiled") if side in r) for r in result["unet"] if r["width"] == 64)
        out.append({"goal": "GPU: UNet step at width 64 (eager or compiled, the better), fraction of the bf16 matmul peak", "target": f">= {GOALS['gpu_peak_fraction_w64']:.0%}",
                    "measured": f"{wide:.0%}", "met": wide >= GOALS["gpu_peak_fraction_w64"], "value": wide})
    ref = next(r for r in result["unet"] if r["combo"] == "mp_tr_bce" and r["width"] == 32)
    ratio = result["data"]["cached"]["images_per_s"] / ref["fast"]["images_per_s"]
    result["loader_vs_step"] = ratio
    out.append({"goal": "loader vs step (mp_tr_bce, width 32)", "target": f">= {GOALS['loader_vs_step']:.0f}x", "measured": f"{ratio:,.0f}x", "met": ratio >= GOALS["loader_vs_step"], "value": ratio})
    epoch = FULL_EPOCH_IMAGES / ref["fast"]["images_per_s"]
    result["epoch_3680_s_extrapolated"] = epoch
    out.append({
        "goal": f"epoch over {FULL_EPOCH_IMAGES:,} images, 128 px, width 32 (extrapolated from the step's img/s, training only)",
        "target": f"< {GOALS['epoch_seconds']:.0f} s", "measured": f"{epoch:,.0f} s", "met": epoch < GOALS["epoch_seconds"], "value": epoch,
    })
    return out


def finish(result: dict, start: float, display: Callable[[dict], None], json_path: Path | None) -> None:
    """The closing load and duration, the display, and the JSON file when asked for."""
    result["load_end"] = load_average()
    result["seconds"] = time.perf_counter() - start
    display(result)
    if json_path:
        write_json(result, json_path)
        console.print(f"wrote {json_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="under 2 minutes: one combo at width 32, fewer windows, no compile, no end-to-end runs; "
                        "on a GPU: one combo at width 32 and 64, batch 64, eager and compiled (the GPU check)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--device", default="auto", help="auto (cuda when available, else cpu) | cpu | cuda | cuda:N")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data", help="folder holding oxford-iiit-pet/ (default ../shared/data)")
    parser.add_argument("--windows", type=int, help="timed windows per side (default 5; 3 with --quick)")
    parser.add_argument("--min-window", type=float, default=1.0, help="seconds a timed window lasts at least (whole steps)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. all cores; the end-to-end runs get trainer.num_threads)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the end-to-end runs")
    parser.add_argument("--predict-only", action="store_true", help="measure only python -m s18exp.predict (about a minute)")
    args = parser.parse_args()

    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    windows = args.windows or (3 if args.quick else 5)
    machine = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": str(device), "python": platform.python_version(), "load_start": load_average(),
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
        torch.cuda.set_device(device)
    machine["busy"] = busy(machine["load_start"], machine["threads"])
    if machine["busy"]:
        console.print(
            f"[yellow]warning:[/] the load average is {machine['load_start'][0]} at the start, above "
            f"{BUSY_LOAD_PER_THREAD} per thread of the {machine['threads']} this benchmark uses: other work shares the "
            "cores, and the figures below are unreliable; rerun on a quiet machine"
        )
    result: dict[str, Any] = {"machine": machine, "quick": args.quick, "windows": windows, "min_window_s": args.min_window}
    real = args.data_root if (args.data_root / "oxford-iiit-pet").is_dir() else None
    if args.predict_only:
        with section(result, "predict", args.json):
            result["predict"] = bench_predict(real, device)
        result["goals"] = [predict_goal(result)]
        finish(result, start, show_predict, args.json)
        return

    gpu_quick = args.quick and device.type == "cuda"
    result["matmul_size"] = 8192 if device.type == "cuda" else 2048
    with section(result, "matmul peaks", args.json):
        result["matmul_peak_gflops"] = matmul_peaks(device, windows, min(args.min_window, 0.5), result["matmul_size"])
    combos = ("mp_tr_bce",) if args.quick else COMBOS
    widths = (32,) if args.quick and not gpu_quick else WIDTHS
    batch = GPU_QUICK_BATCH if gpu_quick else BATCH
    result["unet"] = []
    for width in widths:
        for combo in combos:
            with section(result, f"UNet {combo} width {width}", args.json):
                result["unet"].append(bench_unet(
                    combo, width, device, result["matmul_peak_gflops"], windows, args.min_window, batch, with_compiled=gpu_quick and not args.no_compile,
                ))
    if not args.quick and not args.no_compile:
        with section(result, "torch.compile", args.json):
            result["compile"] = bench_compile(device, max(3, windows - 2), args.min_window)
    result["vae"] = []
    for dataset in VAE_SHAPES:
        with section(result, f"VAE {dataset}", args.json):
            result["vae"].append(bench_vae(dataset, device, windows, args.min_window))
    with section(result, "data pipeline", args.json):
        result["data"] = bench_data(real, device, args.quick, windows, naive_items=48 if args.quick else None)
    if not args.quick and not args.no_end_to_end:
        if real is None:
            console.print(f"[yellow]no pets subset under {args.data_root}: the end-to-end runs are skipped[/]")
        else:
            with section(result, "end to end: 2 x 3 epochs through python -m s18exp", args.json):
                result["end_to_end"] = bench_end_to_end(real, args.threads)
    with section(result, "predict", args.json):
        result["predict"] = bench_predict(real, device)
    result["goals"] = goals(result)
    result["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        result["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    finish(result, start, show, args.json)


if __name__ == "__main__":
    main()
