"""torch.distributed for `torchrun --nproc_per_node=N -m s18exp ...`: gloo on CPU, nccl on GPU.

Batch size is per rank (each process takes `trainer.batch_size` images a step, so the global batch is
N x batch_size); evaluation shards each split across ranks without padding and sums the confusion
matrices and loss sums, so metrics equal those of one process over the whole split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> Dist:
    """Join the process group that torchrun describes in the environment (once); a single process otherwise."""
    if not launched_by_torchrun():
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        if torch.cuda.is_available():
            # Before the process group exists: NCCL binds each rank to the current device, and without this
            # every rank of a node would sit on GPU 0 ("Duplicate GPU detected").
            torch.cuda.set_device(local_rank)
            torch_dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            torch_dist.init_process_group("gloo")
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank)


def _all_reduce(tensor: torch.Tensor, op: torch_dist.ReduceOp) -> torch.Tensor:
    """All-reduce a copy on the device the backend needs (nccl: the GPU), returned on the tensor's device."""
    device = tensor.device
    work = tensor.to(f"cuda:{torch.cuda.current_device()}") if torch_dist.get_backend() == "nccl" else tensor.clone()
    torch_dist.all_reduce(work, op=op)
    return work.to(device)


def all_reduce_sum(tensor: torch.Tensor, dist: Dist) -> torch.Tensor:
    """The element-wise sum over ranks (the tensor itself when single-process)."""
    return _all_reduce(tensor, torch_dist.ReduceOp.SUM) if dist.enabled else tensor


def any_rank(flags: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Element-wise: true where any rank's flag is true."""
    if dist.enabled:
        flags = _all_reduce(flags.to(torch.int32), torch_dist.ReduceOp.MAX)
    return flags.bool()


def broadcast_object(value: object, dist: Dist) -> object:
    """Rank 0's value on every rank."""
    if not dist.enabled:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_from_main(tensors: list[torch.Tensor], dist: Dist) -> None:
    """Overwrite each tensor in place with rank 0's (nothing when single-process)."""
    if not dist.enabled:
        return
    nccl = torch_dist.get_backend() == "nccl"
    for tensor in tensors:
        work = tensor.to(f"cuda:{torch.cuda.current_device()}") if nccl else tensor
        torch_dist.broadcast(work, src=0)
        if work is not tensor:
            tensor.copy_(work)


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()


def shutdown(wait_for_ranks: bool) -> None:
    """Leave the process group before the interpreter exits: a gloo group left for the exit to tear down can
    abort its rank ("terminate called without an active exception") while another rank is still writing.
    wait_for_ranks: meet the other ranks first, so that no rank tears its group down while another is still in
    a collective or writing the run's files (seen to abort a rank too); only after a run that ended normally,
    as a failed rank's partners may never reach the barrier."""
    if torch_dist.is_initialized():
        if wait_for_ranks:
            torch_dist.barrier()
        torch_dist.destroy_process_group()
