"""One job, from a composed config to a finished run dir: validate, build, fit, test, write, finish W&B.

Resuming (`trainer.resume`): `auto` (the default) continues from `<run dir>/checkpoints/last.pt` when it
exists, and skips the job when `summary.json` already says it is complete, so rerunning a command or a
sweep with the same run/sweep dir finishes what was left; both only when the run dir was made with the same
settings (s18exp/run_settings.py), else the run stops with one line before any work; `never` starts afresh;
a path (a run dir or a checkpoint file) continues from that checkpoint. A run that stops early (signal, non-finite loss, any
error) writes `summary.json` with its `status` and `reason`, and marks its W&B run failed.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from s18exp import console, distributed, test_items
from s18exp.checkpoint import read_checkpoint
from s18exp.config import validate
from s18exp.data import Batches
from s18exp.errors import TrainingError, UserError, one_line
from s18exp.atomic_files import atomic_link, atomic_write_json, remove_stale_temporaries
from s18exp.loop import fit, truncate_metrics
from s18exp.runtime import (
    STARTING_THREADS, Runtime, nondeterministic_op, resolve_device, resolve_precision, seed_everything, set_deterministic, shared_cpu_warning,
)
from s18exp.config import AUTO
from s18exp.lr_find.auto import auto_lr
from s18exp.lr_find.display import log_to as log_lr_find
from s18exp.report.spec import SUMMARY_BLOCK
from s18exp.run_display import closing_line, show_header
from s18exp.run_settings import SETTINGS_FILE, RunDirTaken, check_run_dir, restore_hydra_files
from s18exp.run_settings import record as record_settings
from s18exp.stopping import Interrupted, StopRequest
from s18exp.model_summary import example_input, totals as model_totals
from s18exp.size_schedule import plan_for, schedule_text, size_schedule
from s18exp.tasks import build
from s18exp.tracking import Tracker

SUMMARY = "summary.json"


def wandb_group(cfg: DictConfig) -> str:
    """The W&B group: set explicitly, else the sweep dir's name in a multirun, else the run's own name."""
    if cfg.wandb.group:
        return cfg.wandb.group
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir).name
    return cfg.run_name


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


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def is_complete(summary: dict[str, Any] | None, max_epochs: int) -> bool:
    """Whether a run dir's summary says its run is done for `max_epochs` epochs (a longer schedule continues it)."""
    if not summary or summary.get("status") != "complete":
        return False
    done = summary.get("epochs_completed")
    return not isinstance(done, int) or done >= max_epochs


def summary_stamp(run_dir: Path) -> tuple[int, int] | None:
    """(inode, mtime) of summary.json, None when absent: tells whether a job wrote it (writes are atomic
    renames, so each write makes a new file)."""
    try:
        stat = (run_dir / SUMMARY).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def record_failure(run_dir: Path, cfg: DictConfig, reason: str) -> None:
    """summary.json of a sweep job that failed before training started (bad input, missing data), so that
    the sweep's report and exit status name it; training failures write their own in `run`."""
    name = OmegaConf.select(cfg, "run_name", default=None, throw_on_resolution_failure=False)
    atomic_write_json({"run_name": name or run_dir.name, "status": "failed", "reason": reason, "epochs_completed": 0}, run_dir / SUMMARY)


def find_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from, per `trainer.resume`."""
    mode = str(cfg.trainer.resume)
    if mode == "never":
        return None
    if mode == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.exists() else None
    path = Path(mode).expanduser()
    path = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"trainer.resume={mode} holds no checkpoint; give a run dir with checkpoints/last.pt or a .pt file")
    return path


def check_resumable(checkpoint: dict[str, Any], cfg: DictConfig, model: torch.nn.Module, world_size: int, path: Path) -> None:
    """A resume must continue the same training: the keys that fix the step schedule, the sides of the training
    views and the weight average, the number of ranks (the data order and the RNG states are per rank) and the
    model's parameter names and shapes."""
    saved = OmegaConf.create(checkpoint["config"])
    averaged = OmegaConf.select(saved, "trainer.ema_decay") is not None
    needed = ("optimizer", "scaler", "train_state", "rng") + (("trained_model", "average_updates") if averaged else ())
    missing = [key for key in needed if key not in checkpoint]
    if missing:
        raise UserError(f"{path} holds weights but no training state ({', '.join(missing)}); resume from a last.pt or best.pt that a run wrote")
    epochs_fixed = cfg.trainer.scheduler is not None or size_schedule(cfg) is not None
    keys = ["trainer.batch_size", "trainer.ema_decay", "data.limit_train"] + (["trainer.max_epochs"] if epochs_fixed else [])
    if size_schedule(saved) != size_schedule(cfg):
        raise UserError(
            f"trainer.size_schedule ({schedule_text(size_schedule(cfg))}) differs from the one in {path} "
            f"({schedule_text(size_schedule(saved))}); resume with that run's trainer.size_schedule or trainer.resume=never"
        )
    for key in keys:
        before, now = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if before != now:
            raise UserError(
                f"{key}={as_override(now)} differs from {as_override(before)} in {path}; "
                f"resume with {key}={as_override(before)} or trainer.resume=never"
            )
    saved_ranks = len(checkpoint["rng"])
    if saved_ranks != world_size:
        raise UserError(
            f"this run has {world_size} rank(s) but {path} was written by {saved_ranks}; resume with "
            f"torchrun --nproc_per_node={saved_ranks} (or without torchrun for 1), or trainer.resume=never"
        )
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    saved_shapes = {name: tuple(tensor.shape) for name, tensor in checkpoint["model"].items()}
    if shapes != saved_shapes:
        changed = [k for k in saved_shapes if k not in shapes] + [k for k in shapes if saved_shapes.get(k) != shapes[k]]
        first = changed[0]
        detail = f"{first} is {saved_shapes.get(first, 'absent')} there and {shapes.get(first, 'absent')} here"
        raise UserError(
            f"the model differs from the one in {path} ({len(changed)} parameter(s) differ; {detail}); "
            "resume with the model settings of that run or trainer.resume=never"
        )


def as_override(value: object) -> str:
    """A config value as a command line writes it (None is null there)."""
    return "null" if value is None else str(value)


def adopt_history(resume_path: Path, run_dir: Path) -> None:
    """Resuming from another run's checkpoint: bring its metrics.jsonl and checkpoints along, so this run dir
    holds the whole history (best.pt falls back to the resumed checkpoint itself; last.pt is the resumed
    checkpoint until training writes its own, so that a finished run resumed elsewhere has one to test)."""
    source_dir = resume_path.parent.parent
    if source_dir.resolve() == run_dir.resolve():
        return
    if (source_dir / "metrics.jsonl").exists():
        shutil.copyfile(source_dir / "metrics.jsonl", run_dir / "metrics.jsonl")
    best = resume_path.parent / "best.pt"
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    atomic_link(best if best.exists() else resume_path, run_dir / "checkpoints" / "best.pt")
    atomic_link(resume_path, run_dir / "checkpoints" / "last.pt")


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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; returns what it writes to summary.json."""
    started = time.perf_counter()
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    dist = distributed.init()
    device = resolve_device(cfg.trainer.device, dist)
    check_deterministic(cfg, device)
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
    previous = read_summary(run_dir)
    if str(cfg.trainer.resume) == "auto" and is_complete(previous, cfg.trainer.max_epochs):
        console.info(f"{cfg.run_name}: {run_dir / SUMMARY} is complete; skipping (trainer.resume=never to train again)")
        return previous
    resume_path = find_resume(cfg, run_dir)
    if dist.is_main and (resume_path is None or not (run_dir / SETTINGS_FILE).is_file()):
        record_settings(cfg, run_dir)

    set_threads(cfg)
    if device.type == "cpu" and dist.is_main:
        busy = shared_cpu_warning(torch.get_num_threads())
        if busy:
            console.warn(busy)
    set_deterministic(bool(cfg.trainer.deterministic))
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    runtime = Runtime(device, resolve_precision(cfg.trainer.precision, device), cfg.trainer.channels_last, dist, bool(cfg.trainer.deterministic))

    task, data, model = build(cfg)
    model = runtime.prepare_model(model)
    sizes = model_totals(model, example_input(cfg, task, model))  # params, size, FLOPs per image
    params = sizes.params
    resume = read_checkpoint(resume_path) if resume_path else None
    if resume is not None:
        check_resumable(resume, cfg, model, dist.world_size, resume_path)
    lr_auto = cfg.trainer.lr == AUTO
    lr_curve = None
    if lr_auto:
        picked, lr_curve = auto_lr(cfg, task, model, data.train, runtime, run_dir, resume)
        # Before the config is resolved: the optimiser's lr and OneCycle's max_lr interpolate ${trainer.lr},
        # so fit builds them with the pick, and the config that W&B and the checkpoints keep shows it.
        cfg.trainer.lr = picked
    lr_pick = {"lr_find/pick": cfg.trainer.lr} if lr_auto else {}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if dist.enabled:
        torch.manual_seed(cfg.seed + dist.rank)  # each rank augments differently; DDP syncs the weights

    sweep_job = sweep_job_line()
    console.log_config(cfg)
    identity = task.describe()
    show_header(cfg, identity, task.combo_keys, sizes, data, runtime, run_dir, sweep_job)
    if resume is not None:
        done = resume["train_state"]["epochs_completed"]
        console.info(f"resuming from {resume_path} after {done} complete epochs")
        if dist.is_main:
            adopt_history(resume_path, run_dir)
            truncate_metrics(run_dir / "metrics.jsonl", done)
    elif dist.is_main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)

    train = Batches(data.train, cfg.trainer.batch_size, shuffle=True, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    plan = plan_for(cfg, train.items)
    val = Batches(data.val, cfg.trainer.eval_batch_size, rank=dist.rank, world_size=dist.world_size)
    test = Batches(data.test, cfg.trainer.eval_batch_size, rank=dist.rank, world_size=dist.world_size)
    start = time.perf_counter()
    state = None
    tracker = None  # created inside the try, so that every way out of it finishes the W&B run
    try:
        tracker = Tracker(
            mode=cfg.wandb.mode if dist.is_main else "disabled",
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            run_dir=run_dir,
            name=cfg.run_name,
            group=wandb_group(cfg),
            job_type=identity["task"],
            tags=[str(identity[key]) for key in task.combo_keys],
            config={**resolved, **sizes.as_config(), **lr_pick, "precision_resolved": runtime.precision},
            init_timeout=cfg.wandb.init_timeout,
            run_id=resume.get("wandb_id") if resume else None,
        )
        if lr_curve is not None:
            log_lr_find(lr_curve, tracker, run_dir)
        with StopRequest() as stop:
            try:
                state = fit(
                    runtime.wrap(model), task, train, val, cfg.trainer, runtime, run_dir, tracker,
                    checkpoint_extra={"config": resolved, "class_names": list(task.class_names), "wandb_id": tracker.run_id},
                    resume=resume, stop=stop, plan=plan,
                )
            except RuntimeError as exc:
                op = nondeterministic_op(exc)
                if op is None:
                    raise
                raise TrainingError(
                    f"trainer.deterministic=true, but {op} has no deterministic implementation on {device.type}, so this "
                    "run could not repeat bit for bit; set trainer.deterministic=false, or change the setting that uses it"
                ) from None
        distributed.barrier(dist)
        weights_file = run_dir / "checkpoints" / f"{cfg.eval.weights}.pt"
        tested = read_checkpoint(weights_file)
        model.load_state_dict(tested["model"])
        test_epoch = tested["epoch"]
        tested_split = task.test(model, test, runtime)
        if dist.is_main and tested_split.items:  # before summary.json, which marks the run complete
            test_items.save(run_dir / test_items.TEST_ITEMS, tested_split.items)
        extra = task.finalize(model, data, runtime, run_dir, tracker, tested_split.scores) if dist.is_main else {}
        summary = {
            **{f"test/{k}": v for k, v in tested_split.scores.items()},
            **extra,
            "test_weights": cfg.eval.weights,
            "test_epoch": test_epoch,
            "best_epoch": state.best_epoch,
            f"best_val/{task.monitor}": state.best_value,
            "epochs_completed": state.epochs_completed,
            "train_seconds": state.train_seconds,
            "wall_seconds": time.perf_counter() - start,
            "params": params,
            **lr_pick,
            "precision": runtime.precision,
            "device": str(device),
            "world_size": dist.world_size,
            "torch_threads": torch.get_num_threads(),
            "run_name": cfg.run_name,
            **identity,
            "status": "complete",
            SUMMARY_BLOCK: task.report_spec().as_dict(),
        }
        if dist.is_main:
            atomic_write_json(summary, run_dir / SUMMARY)
            tracker.summarize({k: v for k, v in summary.items() if k != SUMMARY_BLOCK})
            if cfg.wandb.log_checkpoint:
                tracker.log_artifact(weights_file, name=f"{cfg.run_name}-{cfg.eval.weights}")
            console.show_metrics(
                f"test metrics of {cfg.run_name} ({cfg.eval.weights} weights, epoch {test_epoch})", summary_metrics(summary), one_line=sweep_job is not None
            )
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
        if dist.is_main:
            done = read_last_state(run_dir)
            atomic_write_json({**identity, "run_name": cfg.run_name, "status": status, "reason": one_line(exc), **done}, run_dir / SUMMARY)
            if tracker is not None:
                tracker.summarize({"status": status, "reason": one_line(exc)})
        if tracker is not None:
            tracker.finish(exit_code=exc.exit_code if isinstance(exc, Interrupted) else 1)
        raise
    tracker.finish()
    if dist.is_main and sweep_job is None:
        console.info(closing_line(summary, task.report_spec(), run_dir, time.perf_counter() - started), markup=False)
    return summary


def read_last_state(run_dir: Path) -> dict[str, Any]:
    """`epochs_completed` and `best_epoch` from last.pt, for the summary of a run that stopped early."""
    try:
        state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["train_state"]
    except (OSError, KeyError, RuntimeError, pickle.UnpicklingError):
        return {"epochs_completed": 0}
    return {"epochs_completed": state["epochs_completed"], "best_epoch": state["best_epoch"]}


def summary_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The scores the console shows at the end of a run: the test split's, and for the VAE the judge's and the
    panel's readers' own (their accuracy on real test images, their training time)."""
    return {k: v for k, v in summary.items() if k.startswith(("test/", "judge/", "panel/"))}
