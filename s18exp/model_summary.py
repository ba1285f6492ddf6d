"""`python -m s18exp.model_summary [overrides]`: the model of a composed config, layer by layer, with its totals.

The model is built the way a training run builds it (the task's `build_model`; no data is read), then one
forward pass of a dummy batch of one image at `data.image_size` records, through forward hooks, the output
shape of every layer; `torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of that pass, i.e. per image.

- Layers: every leaf module, and any module holding parameters of its own; `params` counts a module's own
  parameters, so the column sums to the total.
- Totals: parameters, trainable parameters, and size in MB (parameters and buffers, 2**20 bytes, what the
  weights of a checkpoint weigh).
- FLOPs follow torch's counter: 2 per multiply-accumulate of convolutions (transposed too) and matrix products;
  element-wise work (BatchNorm, ReLU, pooling, interpolation, bias adds) is not counted. A 3x3 conv from Cin to
  Cout channels with an Hout x Wout output counts 2 * Cin * Cout * 9 * Hout * Wout.
- Input: the task's `example_input(image_size)`, the model's forward arguments for a batch of one (zeros,
  and a class index 0 for a label-conditioned model).

The same totals are printed at the start of every training run and go to its W&B config (`s18exp/run.py`).
This command composes the config with Hydra's compose API, so it takes the main command's overrides and
writes no run dir.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from s18exp import cli, console
from s18exp.errors import UserError
from s18exp.runtime import rng_state, set_rng_state
from s18exp.tasks import Task, task_for


@dataclass(frozen=True)
class Totals:
    params: int
    trainable: int
    size_mb: float
    flops: int  # per image, at image_size
    image_size: int

    def as_config(self) -> dict[str, Any]:
        """What a training run adds to its W&B config."""
        return {"params": self.params, "trainable_params": self.trainable, "size_mb": self.size_mb, "flops_per_image": self.flops}

    def line(self) -> str:
        return (
            f"{self.params:,} parameters ({self.trainable:,} trainable, {self.size_mb:.2f} MB), "
            f"{self.flops / 1e9:.3g} GFLOPs per image at {self.image_size}x{self.image_size}"
        )


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    shape: str  # output shape(s) of its last call, "-" when the forward pass did not call it
    params: int  # its own parameters


def example_input(cfg: DictConfig, task: Task, model: nn.Module) -> tuple[torch.Tensor, ...]:
    """The task's forward arguments of one dummy image at `data.image_size`, on the model's device."""
    device = next(model.parameters()).device
    return tuple(a.to(device) for a in task.example_input(int(cfg.data.image_size)))


def _shapes(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return str(list(output.shape))
    if isinstance(output, (tuple, list)):
        return ", ".join(_shapes(o) for o in output if isinstance(o, (torch.Tensor, tuple, list))) or "-"
    if isinstance(output, dict):
        return ", ".join(f"{k}: {_shapes(v)}" for k, v in output.items())
    return "-"


def _forward(model: nn.Module, inputs: tuple[torch.Tensor, ...], hooks: dict[str, nn.Module] | None = None) -> tuple[int, dict[str, str]]:
    """One eval-mode forward pass that leaves no trace (mode and RNGs restored): (FLOPs, output shape per hook name)."""
    shapes: dict[str, str] = {}
    handles = []
    for name, module in (hooks or {}).items():
        handles.append(module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, _shapes(out))))
    was_training, rngs = model.training, rng_state()
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        set_rng_state(rngs)
    return counter.get_total_flops(), shapes


def _listed(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules and modules with parameters of their own, by qualified name."""
    listed = {}
    for name, module in model.named_modules():
        leaf = next(module.children(), None) is None
        own = next(module.parameters(recurse=False), None) is not None
        if (leaf and name) or own:
            listed[name or "(model)"] = module
    return listed


def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass of `inputs` (a batch of one: FLOPs per image)."""
    return _forward(model, inputs)[0]


def _totals(model: nn.Module, flops: int, inputs: tuple[torch.Tensor, ...]) -> Totals:
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return Totals(params, trainable, size / 2**20, flops, int(inputs[0].shape[-1]))


def totals(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Totals:
    """Parameters, size and FLOPs per image (one forward pass of `inputs`, a batch of one)."""
    return _totals(model, count_flops(model, inputs), inputs)


def layers(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[list[Layer], Totals]:
    """The layer rows and the totals, from one forward pass."""
    listed = _listed(model)
    flops, shapes = _forward(model, inputs, listed)
    rows = [
        Layer(name, type(m).__name__, shapes.get(name, "-"), sum(p.numel() for p in m.parameters(recurse=False)))
        for name, m in listed.items()
    ]
    return rows, _totals(model, flops, inputs)


def show(rows: list[Layer], total: Totals, title: str) -> None:
    table = Table(title=title)
    for column, justify in (("layer", "left"), ("type", "left"), ("output shape", "left"), ("params", "right")):
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(row.name, row.kind, row.shape, f"{row.params:,}")
    table.add_section()
    table.add_row("total", "", "", f"{total.params:,}")
    console.console.print(table)
    console.info(f"trainable parameters {total.trainable:,}; size {total.size_mb:.2f} MB (parameters and buffers)")
    console.info(f"FLOPs per image at {total.image_size}x{total.image_size}: {total.flops:,} ({total.flops / 1e9:.3g} GFLOPs)")


def summarize(cfg: DictConfig) -> tuple[list[Layer], Totals]:
    """Build the composed config's model (no data) and show its summary."""
    from s18exp.config import validate

    validate(cfg)
    torch.manual_seed(cfg.seed)
    task = task_for(cfg)
    model = task.build_model()
    rows, total = layers(model, example_input(cfg, task, model))
    show(rows, total, f"{cfg.get('run_name', 'model')}: {type(model).__name__}")
    return rows, total


USAGE = """usage: python -m s18exp.model_summary [OVERRIDE ...]

The model of the composed config (the same overrides as `python -m s18exp`), layer by layer: output shapes,
parameters, size, and FLOPs per image at data.image_size. Example:
  python -m s18exp.model_summary experiment=mp_tr_bce data.image_size=224"""


def composed_config(args: list[str]) -> DictConfig:
    """The config that `args`, the main command's config overrides, compose; a UserError for a bad argument."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from s18exp.keys import check_command_line
    from s18exp.paths import CONFIG_DIR

    flag = next((a for a in args if a.startswith("-")), None)
    if flag is not None:
        raise UserError(f"{flag} is not supported here; give config overrides only\n{USAGE}")
    check_command_line(args)
    try:  # a bad override: Hydra's own message (e.g. the valid options of a group), no traceback
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="model_summary"):
            return compose(config_name="config", overrides=args)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return
    cli.exit_on_user_error(lambda: summarize(composed_config(args)))


if __name__ == "__main__":
    main()
