"""One module per task: what differs between the UNet and the VAE lives there and nowhere else.

`Task` is everything the rest of the package asks of a task: the training command (s18exp/run.py and the loop),
the LR range test, the model summary, the commands that read a checkpoint, and the report, which reads what
a task says of itself from the summary.json of each run. `task_for` builds the task a config names; `build`
builds its task, data and model, in the order a run builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from torch import nn

if TYPE_CHECKING:
    from s18exp.data import Batches
    from s18exp.report.spec import TaskSpec
    from s18exp.runtime import Runtime
    from s18exp.tracking import Tracker


@dataclass(frozen=True)
class TestResult:
    """What `Task.test` returns: the split's scores, and the per-item outcomes behind them for test_items.npz
    (s18exp/test_items.py; empty: the task stores none from its test)."""

    __test__ = False  # a result, not a test case for pytest to collect

    scores: dict[str, float]
    items: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """A task's side of a run. A task class is built as `TaskClass(cfg, class_names=None)`: `class_names` are
    the classes a checkpoint recorded, None to take them from the config (or the data set's folder)."""

    name: str  # task=<name>: summary.json's `task`, the W&B job type, the report's section
    monitor: str  # the key of `evaluate` that picks the best checkpoint
    monitor_mode: str  # "max" or "min": which way `monitor` is better
    combo_keys: tuple[str, ...]  # the fields of `describe` that make a combo: the W&B tags, a row of the report
    shown_scores: tuple[str, ...]  # prefixes of the summary.json keys the console shows at the end of a run
    cfg: DictConfig
    class_names: list[str]

    @staticmethod
    def check_config(cfg: DictConfig) -> None:
        """A UserError for a bad value of a key that only this task has, after s18exp.config.validate's shared checks."""

    def build_data(self) -> Any:
        """The data set: `train`, `val` and `test` splits (s18exp.data.TensorSplit), `class_names`."""

    def build_model(self) -> nn.Module:
        """The model the config describes, with freshly initialised weights on the CPU."""

    def describe(self) -> dict[str, Any]:
        """What identifies the run's combo: the `task` and `combo_keys` fields, `seed` and `combo`."""

    def example_input(self, image_size: int) -> tuple[torch.Tensor, ...]:
        """The model's forward arguments for one dummy image of `image_size` (a batch of one), on the CPU."""

    def training_loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, progress: float = 1.0, size: int | None = None
    ) -> torch.Tensor:
        """The loss of one training batch; `progress` is the share of training done (0 to 1), `size` the side of the
        epoch's training views (`trainer.size_schedule`; None: the images' own)."""

    def evaluate(self, model: nn.Module, batches: Batches, runtime: Runtime) -> dict[str, float]:
        """The scores of a split for validation, `monitor` among them (keys without the `val/` prefix)."""

    def test(self, model: nn.Module, batches: Batches, runtime: Runtime) -> TestResult:
        """The scores of the test split with the tested weights (keys without the `test/` prefix), and the
        per-item outcomes they come from, the same on every rank."""

    def finalize(
        self, model: nn.Module, data: Any, runtime: Runtime, run_dir: Path, tracker: Tracker, scores: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """After testing: the run's pictures (and any score they need), titled with the test split's `scores`
        where the task's headline is among them; returns the entries it adds to summary.json."""

    def report_spec(self) -> TaskSpec:
        """How the report shows this task's runs: its metric keys, picture files and class names."""


def task_for(cfg: DictConfig, class_names: list[str] | None = None) -> Task:
    """The task that `cfg.task._target_` names, built from `cfg` (and a checkpoint's `class_names`)."""
    return get_class(cfg.task._target_)(cfg, class_names=class_names)


def build(cfg: DictConfig) -> tuple[Task, Any, nn.Module]:
    """The config's task, its data and its model (on the CPU), built in this order, as every run builds them."""
    task = task_for(cfg)
    return task, task.build_data(), task.build_model()
