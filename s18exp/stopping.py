"""Why training stops early, and how each step learns it: signals and non-finite losses.

Graceful stops: SIGTERM or Ctrl-C lets the current step finish, then the loop saves and stops. A second signal
while the first is being handled stops at once (KeyboardInterrupt), so a stuck save can still be broken off.

Non-finite losses: a batch whose loss is NaN or Inf is skipped up to `trainer.skip_nonfinite` times, then
`NonFiniteLoss` names the epoch and step, leaving the last good checkpoints as they were (`StepChecks`).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import torch

from s18exp import console
from s18exp.distributed import Dist, any_rank
from s18exp.errors import TrainingError


class Interrupted(Exception):
    """Training stopped on a signal after saving `checkpoints/last.pt`."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoints/last.pt holds the state to resume from")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Catches SIGTERM and SIGINT while active; `signum` is the first one received, or None."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class NonFiniteLoss(TrainingError):
    """The loss became NaN or Inf more often than `trainer.skip_nonfinite` allows."""


class FirstNonFinite:
    """The first non-finite loss of an epoch, recorded on the device, so that the step needs no host read."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        new = ~torch.isfinite(loss.detach()) & (self.step < 0)
        self.step = torch.where(new, step, self.step)
        self.value = torch.where(new, loss.detach().float(), self.value)

    def read(self) -> tuple[int, float] | None:
        """(step, loss) of the first non-finite loss, or None; one host read."""
        step = int(self.step)
        return None if step < 0 else (step, float(self.value))


class StepChecks:
    """What each step of an epoch asks after its loss: skip this batch (its loss is not finite), stop after it (a
    signal on any rank)? `state` is the run's progress (`bad_batches`, `epochs_completed`: a TrainState).

    Skipping a bad batch, and ranks agreeing on it, need to know before the update: one flag read per step. With
    one rank and no skips allowed, the check stays on the device instead and is read by `check_deferred` (with
    the progress display, about once a second, and before anything is saved), so that a GPU step has no
    host-device synchronisation."""

    def __init__(self, epoch: int, state: Any, allowed: int, stop: StopRequest, dist: Dist, device: torch.device) -> None:
        self.epoch, self.state, self.allowed, self.stop, self.dist = epoch, state, allowed, stop, dist
        self.first_bad = None if dist.enabled or allowed > 0 else FirstNonFinite(device)

    def after_loss(self, loss: torch.Tensor, step: int) -> tuple[bool, bool]:
        """(skip the batch, stop after it); NonFiniteLoss once more batches were bad than allowed."""
        if self.first_bad is not None:
            self.first_bad.update(loss, step)
            return False, self.stop.signum is not None
        nonfinite = (~torch.isfinite(loss.detach())).cpu()
        flags = any_rank(torch.stack([nonfinite, torch.tensor(self.stop.signum is not None)]), self.dist)
        bad, stopping = bool(flags[0]), bool(flags[1])
        if bad:
            self.state.bad_batches += 1
            if self.state.bad_batches > self.allowed:
                raise self.non_finite_loss(loss.item(), step)
            console.warn(f"skipped a batch with a non-finite loss at epoch {self.epoch}, step {step + 1}")
        return bad, stopping

    def check_deferred(self) -> None:
        """Raise NonFiniteLoss when the deferred check recorded a non-finite loss this epoch."""
        if self.first_bad is not None and (bad := self.first_bad.read()) is not None:
            raise self.non_finite_loss(bad[1], bad[0])

    def non_finite_loss(self, value: float, step: int) -> NonFiniteLoss:
        done = self.state.epochs_completed
        kept = f"checkpoints/last.pt of epoch {done} is kept" if done else "no epoch was complete, so there is no checkpoint"
        return NonFiniteLoss(
            f"loss is {value} at epoch {self.epoch}, step {step + 1}; {kept}; lower trainer.lr or "
            f"set trainer.grad_clip (trainer.skip_nonfinite={self.allowed} bad batches were allowed)"
        )
