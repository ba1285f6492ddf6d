"""The parts of the GPU code paths that a CPU can run: fp16 loss scaling that skips an overflowed step without
advancing the schedule (the step that the training loop and the judge both take), and `trainer.deterministic`,
which stops at an op that has no deterministic implementation instead of letting a run claim it repeats."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from s18exp.runtime import nondeterministic_op, set_deterministic
from s18exp.updates import optimizer_step


def one_step(loss_scale: float) -> tuple[torch.Tensor, int, float, float, bool]:
    """One optimizer_step under an enabled GradScaler, with a loss whose gradient is finite or not; returns
    the weight after, the scheduler's step count, the lr, the scaler's scale and whether the step says it updated."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**4)
    loss = model(torch.ones(1, 2)).sum() * loss_scale
    updated = optimizer_step(model, loss, optimizer, scaler, scheduler, grad_clip=None)
    return model.weight.detach().clone(), scheduler.last_epoch, optimizer.param_groups[0]["lr"], scaler.get_scale(), updated


def test_an_overflowed_fp16_step_is_skipped_and_the_schedule_waits() -> None:
    torch.manual_seed(0)
    before = nn.Linear(2, 1).weight.detach().clone()
    weight, steps, lr, scale, updated = one_step(float("inf"))
    assert torch.equal(weight, before) and not updated  # the scaler skipped the update, and the step says so
    assert steps == 0 and scale == 2.0**3  # ... so the schedule did not move, and the scale halved
    weight, steps, lr_after, scale, updated = one_step(1.0)
    assert not torch.equal(weight, before) and updated and steps == 1 and lr_after > lr and scale == 2.0**4


@pytest.fixture
def restore_determinism():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]
    if before[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[3]


def put_without_accumulate() -> None:
    """An op that torch has no deterministic implementation of, on any device (`put_` with accumulate=False)."""
    torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))


def test_deterministic_stops_at_an_op_that_cannot_repeat_and_names_it(restore_determinism, monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    set_deterministic(True)
    with pytest.raises(RuntimeError) as info:
        put_without_accumulate()
    assert nondeterministic_op(info.value) == "put_"
    assert nondeterministic_op(RuntimeError("CUDA out of memory")) is None
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    set_deterministic(False)
    put_without_accumulate()  # runs again once determinism is off
    assert not torch.backends.cudnn.deterministic


def test_deterministic_keeps_a_workspace_setting_of_the_user(restore_determinism, monkeypatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_deterministic(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
