"""Where and how tensors are computed, and the random generators: what training, prediction and generation share.

`Runtime` holds the resolved device and precision (`resolve_device`, `resolve_precision`), with the
autocast, host-to-device copy and model preparation that follow from them; `unwrap` gives the plain module
inside torch.compile's and DDP's wrappers. The RNG helpers seed, save and restore every global generator
(checkpoints carry their states, so that a resumed run continues exactly).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from s18exp.distributed import Dist

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# torch's thread count when the process started (its cores, or OMP_NUM_THREADS): what `trainer.num_threads=auto`
# gives a job that runs alone, whatever an earlier job of the same process set.
STARTING_THREADS = torch.get_num_threads()
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    precision: str  # bf16 | fp16 | fp32, already resolved
    channels_last: bool
    dist: Dist = field(default_factory=Dist)
    deterministic: bool = False  # trainer.deterministic: no cuDNN autotuning (see set_deterministic)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def to_device(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch on the device. To a GPU it goes through pinned host memory, so that the copy is
        asynchronous (a copy from pageable memory waits for the GPU to finish its queue).

        Images stay NCHW: flip and normalisation of 1- or 3-channel images vectorise along W, and a model made
        channels_last by `prepare_model` returns channels_last activations from its first convolution."""
        cuda = self.device.type == "cuda"
        if cuda and images.device.type == "cpu":
            images, targets = images.pin_memory(), targets.pin_memory()
        return images.to(self.device, non_blocking=cuda), targets.to(self.device, non_blocking=cuda)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.device.type == "cuda":
            # Fixed shapes: let cuDNN time its algorithms once, unless runs must repeat bit for bit (the
            # fastest algorithm can differ between timings).
            torch.backends.cudnn.benchmark = not self.deterministic
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around the model when running under torchrun."""
        if not self.dist.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def resolve_device(name: str, dist: Dist = Dist()) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> bf16 where the device computes it natively, else fp16 on a GPU and fp32 on a CPU."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile's and DistributedDataParallel's wrappers (clean state_dict keys)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def set_deterministic(enabled: bool) -> None:
    """`trainer.deterministic`: the same seed gives the same numbers on a GPU too, at some cost in speed.

    Turns on `torch.use_deterministic_algorithms` strictly: an op with no deterministic implementation raises
    at its first call (`nondeterministic_op` reads its name, so that the run stops with one line naming it)
    instead of warning and letting a run that cannot repeat claim to be deterministic. Also cuDNN's
    deterministic mode without autotuning, and `CUBLAS_WORKSPACE_CONFIG=:4096:8` (which cuBLAS needs for
    deterministic matmuls) unless the environment already sets it. cuBLAS reads the variable when a process
    first uses it, so in a sweep of several jobs in one process the first job's setting holds. False restores
    torch's defaults (a sweep may mix both)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled


def nondeterministic_op(exc: BaseException) -> str | None:
    """The op named by the error torch raises under `torch.use_deterministic_algorithms(True)` for an op that
    has no deterministic implementation; None for any other error."""
    match = re.match(r"(\S+) does not have a deterministic implementation", str(exc))
    return match.group(1) if isinstance(exc, RuntimeError) and match else None


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's generators (model init, data order, augmentation)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global generator's state as CPU tensors and plain values (what a weights_only load accepts)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what `rng_state` returned; torch's and CUDA's states must be CPU ByteTensors."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        # A machine with fewer GPUs than the one that saved the states restores those it has.
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def all_rng_states(dist: Dist) -> list[dict[str, Any]]:
    """Every rank's RNG states, indexed by rank (gathered so that a DDP resume restores each rank's own)."""
    if not dist.enabled:
        return [rng_state()]
    states: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(states, rng_state())
    return states


def shared_cpu_warning(threads: int, load: float | None = None, cores: int | None = None) -> str | None:
    """A warning when other work already holds at least a whole core of those this run's `threads` need:
    the 1-minute load average (`load`, read now when None) above the cores left over by the run's threads
    plus one. Such a run shares the CPU and trains several times slower than alone; None when it need not."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this system
            return None
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load < cores - threads + 1:
        return None
    return (
        f"the CPU is busy before this run starts (1-minute load average {load:.1f} on {cores} cores, {threads} thread{'s' if threads > 1 else ''} "
        "wanted): it will share the cores with that work and train slower than alone"
    )
