"""One job, from a composed config to a finished run dir: validate, build, fit, test, write, finish W&B.
`run` reads as that list of steps; the checkpoints and resuming live in s18exp/checkpoint.py, summary.json in
s18exp/summary.py, the W&B run in s18exp/tracking.py, the loop in s18exp/loop.py.

Resuming (`trainer.resume`): `auto` (the default) continues from `<run dir>/checkpoints/last.pt` when it
exists, and skips the job when `summary.json` already says it is complete, so rerunning a command or a
sweep with the same run/sweep dir finishes what was left; both only when the run dir was made with the same
settings (s18exp/run_settings.py), else the run stops with one line before any work; `never` starts afresh;
a path (a run dir or a checkpoint file) continues from that checkpoint. A run that stops early (signal, non-finite loss, any
error) writes `summary.json` with its `status` and `reason`, and marks its W&B run failed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch import nn

from s18exp import console, distributed, test_items
from s18exp.atomic_files import atomic_write_json, remove_stale_temporaries
from s18exp.checkpoint import TrainState, find_resume, read_checkpoint, read_resumable, start_history
from s18exp.config import validate
from s18exp.data import Batches
from s18exp.distributed import Dist
from s18exp.errors import TrainingError, UserError, one_line
from s18exp.loop import LoopContext, fit
from s18exp.lr_find.auto import auto_lr
from s18exp.lr_find.display import log_to as log_lr_find
from s18exp.lr_find.range_test import Curve
from s18exp.model_summary import example_input, totals as model_totals
from s18exp.options import AUTO
from s18exp.report.spec import SUMMARY_BLOCK
from s18exp.run_display import closing_line, show_header
from s18exp.run_settings import SETTINGS_FILE, RunDirTaken, check_run_dir, restore_hydra_files
from s18exp.run_settings import record as record_settings
from s18exp.runtime import (
    STARTING_THREADS, Runtime, nondeterministic_op, resolve_device, resolve_precision, seed_everything, set_deterministic, shared_cpu_warning,
)
from s18exp.size_schedule import plan_for
from s18exp.stopping import Interrupted, StopRequest
from s18exp.summary import SUMMARY, complete_summary, is_complete, read_summary, record_stop, shown_metrics
from s18exp.tasks import Task, build
from s18exp.tracking import Tracker, run_tracker


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; returns what it writes to summary.json."""
    started = time.perf_counter()
    run_dir, dist, device = check_and_prepare(cfg)
    if (previous := complete_before(cfg, run_dir)) is not None:
        return previous
    resume_path = find_resume(cfg, run_dir)
    if dist.is_main and (resume_path is None or not (run_dir / SETTINGS_FILE).is_file()):
        record_settings(cfg, run_dir)
    runtime = set_up_runtime(cfg, device, dist)

    task, data, model = build(cfg)
    job = Job(cfg, run_dir, runtime, task, runtime.prepare_model(model), data)
    sizes = model_totals(job.model, example_input(cfg, task, job.model))  # params, size, FLOPs per image
    resume = read_resumable(resume_path, cfg, job.model, dist.world_size)
    lr_pick, lr_curve = pick_lr(job, resume)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if dist.enabled:
        torch.manual_seed(cfg.seed + dist.rank)  # each rank augments differently; DDP syncs the weights

    sweep_job = sweep_job_line()
    console.log_config(cfg)
    identity = task.describe()
    show_header(cfg, identity, task.combo_keys, sizes, data, runtime, run_dir, sweep_job)
    start_history(resume, resume_path, run_dir, dist)
    train, val, test = batches(cfg, data, dist)
    plan = plan_for(cfg, train.items)
    start = time.perf_counter()
    tracker = None  # created inside the try, so that every way out of it finishes the W&B run
    try:
        config = {**resolved, **sizes.as_config(), **lr_pick, "precision_resolved": runtime.precision}
        tracker = run_tracker(cfg, run_dir, task, config, resume.get("wandb_id") if resume else None, dist.is_main)
        if lr_curve is not None:
            log_lr_find(lr_curve, tracker, run_dir)
        saved = {"config": resolved, "class_names": list(task.class_names), "wandb_id": tracker.run_id}
        state = train_model(job, train, val, LoopContext(cfg.trainer, runtime, run_dir, tracker, saved, resume, plan=plan))
        distributed.barrier(dist)
        scores, extra, test_epoch = evaluate_on_test(job, test, tracker)
        facts = {"wall_seconds": time.perf_counter() - start, "params": sizes.params, **lr_pick, **runtime_facts(runtime)}
        summary = complete_summary(cfg, task, scores, extra, test_epoch, state, facts)
        if dist.is_main:
            publish_summary(job, summary, tracker, test_epoch, compact=sweep_job is not None)
    except BaseException as exc:
        record_stopped(exc, job, identity, tracker)
        raise
    tracker.finish()
    if dist.is_main and sweep_job is None:
        console.info(closing_line(summary, task.report_spec(), run_dir, time.perf_counter() - started), markup=False)
    return summary


@dataclass
class Job:
    """What the steps of a run share once it is built: its config, run dir and runtime, its task, model and data."""

    cfg: DictConfig
    run_dir: Path
    runtime: Runtime
    task: Task
    model: nn.Module
    data: Any


def check_and_prepare(cfg: DictConfig) -> tuple[Path, Dist, torch.device]:
    """Before any work: the config checked, the run's (run dir, ranks, device), the run dir made ready."""
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    dist = distributed.init()
    device = resolve_device(cfg.trainer.device, dist)
    check_deterministic(cfg, device)
    prepare_run_dir(cfg, run_dir, dist)
    return run_dir, dist, device


def complete_before(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """With `trainer.resume=auto`, the summary of a run dir whose run is complete already (the job is skipped);
    else None."""
    previous = read_summary(run_dir)
    if str(cfg.trainer.resume) == "auto" and is_complete(previous, cfg.trainer.max_epochs):
        console.info(f"{cfg.run_name}: {run_dir / SUMMARY} is complete; skipping (trainer.resume=never to train again)")
        return previous
    return None


def prepare_run_dir(cfg: DictConfig, run_dir: Path, dist: Dist) -> None:
    """Only rank 0 speaks; the run dir is writable, holds no half-written checkpoint, and was made with this
    run's settings (else RunDirTaken, with Hydra's files put back as they were)."""
    console.set_quiet(not dist.is_main)
    if dist.is_main:
        check_writable(run_dir)
        remove_stale_temporaries(run_dir / "checkpoints")
    try:
        check_run_dir(cfg, run_dir)
    except RunDirTaken:
        if dist.is_main:
            restore_hydra_files(run_dir)  # Hydra rewrote them for this command before it reached here
        raise


def set_up_runtime(cfg: DictConfig, device: torch.device, dist: Dist) -> Runtime:
    """Threads, determinism and seeds set for this run, and the `Runtime` it trains with."""
    set_threads(cfg)
    if device.type == "cpu" and dist.is_main:
        busy = shared_cpu_warning(torch.get_num_threads())
        if busy:
            console.warn(busy)
    set_deterministic(bool(cfg.trainer.deterministic))
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Runtime(device, resolve_precision(cfg.trainer.precision, device), cfg.trainer.channels_last, dist, bool(cfg.trainer.deterministic))


def pick_lr(job: Job, resume: dict[str, Any] | None) -> tuple[dict[str, float], Curve | None]:
    """`trainer.lr=auto`: the LR range test's pick put into the config, as summary.json and W&B record it
    (`lr_find/pick`), and the curve it was read from (None when not tested here); nothing otherwise."""
    cfg = job.cfg
    if cfg.trainer.lr != AUTO:
        return {}, None
    picked, curve = auto_lr(cfg, job.task, job.model, job.data.train, job.runtime, job.run_dir, resume)
    # Before the config is resolved: the optimiser's lr and OneCycle's max_lr interpolate ${trainer.lr},
    # so fit builds them with the pick, and the config that W&B and the checkpoints keep shows it.
    cfg.trainer.lr = picked
    return {"lr_find/pick": cfg.trainer.lr}, curve


def batches(cfg: DictConfig, data: Any, dist: Dist) -> tuple[Batches, Batches, Batches]:
    """The train, val and test batches of this rank: training shuffled per epoch from `seed`."""
    train = Batches(data.train, cfg.trainer.batch_size, shuffle=True, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    val = Batches(data.val, cfg.trainer.eval_batch_size, rank=dist.rank, world_size=dist.world_size)
    test = Batches(data.test, cfg.trainer.eval_batch_size, rank=dist.rank, world_size=dist.world_size)
    return train, val, test


def train_model(job: Job, train: Batches, val: Batches, context: LoopContext) -> TrainState:
    """`fit`, stopping gracefully on SIGTERM or Ctrl-C; an op with no deterministic implementation under
    `trainer.deterministic=true` stops the run with a TrainingError that names it."""
    with StopRequest() as stop:
        context.stop = stop
        try:
            return fit(job.runtime.wrap(job.model), job.task, train, val, context)
        except RuntimeError as exc:
            op = nondeterministic_op(exc)
            if op is None:
                raise
            raise TrainingError(
                f"trainer.deterministic=true, but {op} has no deterministic implementation on {job.runtime.device.type}, so this "
                "run could not repeat bit for bit; set trainer.deterministic=false, or change the setting that uses it"
            ) from None


def evaluate_on_test(job: Job, test: Batches, tracker: Tracker) -> tuple[dict[str, float], dict[str, Any], int]:
    """The test split scored with the `eval.weights` checkpoint, its items saved (test_items.npz, before
    summary.json, which marks the run complete), then the task's pictures: (scores, the task's extra summary
    entries, the tested epoch)."""
    weights_file = job.run_dir / "checkpoints" / f"{job.cfg.eval.weights}.pt"
    tested = read_checkpoint(weights_file)
    job.model.load_state_dict(tested["model"])
    result = job.task.test(job.model, test, job.runtime)
    is_main = job.runtime.dist.is_main
    if is_main and result.items:
        test_items.save(job.run_dir / test_items.TEST_ITEMS, result.items)
    extra = job.task.finalize(job.model, job.data, job.runtime, job.run_dir, tracker, result.scores) if is_main else {}
    return result.scores, extra, tested["epoch"]


def runtime_facts(runtime: Runtime) -> dict[str, Any]:
    """Where and how the run trained, as summary.json records it."""
    return {
        "precision": runtime.precision,
        "device": str(runtime.device),
        "world_size": runtime.dist.world_size,
        "torch_threads": torch.get_num_threads(),
    }


def publish_summary(job: Job, summary: dict[str, Any], tracker: Tracker, test_epoch: int, compact: bool) -> None:
    """summary.json written (the run is complete), its values in W&B with the tested checkpoint when
    `wandb.log_checkpoint`, and the task's scores on the terminal (one line in a sweep: `compact`)."""
    cfg = job.cfg
    atomic_write_json(summary, job.run_dir / SUMMARY)
    tracker.summarize({k: v for k, v in summary.items() if k != SUMMARY_BLOCK})
    if cfg.wandb.log_checkpoint:
        tracker.log_artifact(job.run_dir / "checkpoints" / f"{cfg.eval.weights}.pt", name=f"{cfg.run_name}-{cfg.eval.weights}")
    console.show_metrics(
        f"test metrics of {cfg.run_name} ({cfg.eval.weights} weights, epoch {test_epoch})",
        shown_metrics(summary, job.task.shown_scores), one_line=compact,
    )


def record_stopped(exc: BaseException, job: Job, identity: dict[str, Any], tracker: Tracker | None) -> None:
    """A run that stopped early: summary.json and W&B say so and why, and the W&B run is marked failed (its exit
    code: the signal's for an interrupted run, else 1)."""
    status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
    if job.runtime.dist.is_main:
        record_stop(job.run_dir, identity, job.cfg.run_name, status, one_line(exc))
        if tracker is not None:
            tracker.summarize({"status": status, "reason": one_line(exc)})
    if tracker is not None:
        tracker.finish(exit_code=exc.exit_code if isinstance(exc, Interrupted) else 1)


def sweep_job_line() -> str | None:
    """In a multirun, the start of the job's header line: its number and its own overrides; else None.
    A sweep shows the config tree once (job 0) and one header line per job; the log files get everything."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    overrides = " ".join(hydra_cfg.overrides.task)
    return f"job {hydra_cfg.job.num}" + (f" [{overrides}]" if overrides else "") + ": "


def set_threads(cfg: DictConfig) -> None:
    """Torch threads per job: `trainer.num_threads`, or under a launcher running jobs side by side
    (joblib's `n_jobs`), the machine's cores shared out so that parallel jobs do not oversubscribe them."""
    threads = cfg.trainer.num_threads
    if threads == "auto":
        n_jobs = OmegaConf.select(HydraConfig.get(), "launcher.n_jobs", default=None)
        if not n_jobs or n_jobs == 1:
            threads = STARTING_THREADS  # not what an earlier job of a sequential sweep set
        else:
            cores = os.cpu_count() or 1
            parallel = cores if n_jobs < 0 else min(n_jobs, cores)
            threads = max(1, cores // parallel)
    torch.set_num_threads(int(threads))


def check_writable(run_dir: Path) -> None:
    probe = run_dir / ".write_test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the run dir {run_dir} ({exc.strerror}); set hydra.run.dir / hydra.sweep.dir to a writable folder") from exc


def check_deterministic(cfg: DictConfig, device: torch.device) -> None:
    """A UserError, before any work, for a `trainer.deterministic=true` run that is known to stop at its first
    backward pass: bilinear up-sampling (decoder=upsample) has no deterministic CUDA backward. Any other op
    without a deterministic implementation stops the run when first called, naming itself (`fit` in `run`)."""
    if cfg.trainer.deterministic and device.type == "cuda" and OmegaConf.select(cfg, "decoder.name") == "upsample":
        raise UserError(
            "trainer.deterministic=true with decoder=upsample on a GPU: bilinear up-sampling has no deterministic CUDA "
            "backward pass; use decoder=transpose, or trainer.deterministic=false"
        )
