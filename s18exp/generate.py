"""`python -m s18exp.generate ckpt=RUN_DIR n=N output=FILE.npz [seed=S] [label=K] [device=auto] [precision=auto|bf16|fp32] [root=DIR]`

Feeds N test images of the run's dataset to a trained VAE, each with a WRONG label, and writes FILE.npz:

- `inputs`: uint8 (N, H, W, C), the test images as the model saw them;
- `true_labels`: int64 (N,), their classes;
- `given_labels`: int64 (N,), never equal to the true label: uniform over the other classes (seeded by
  `seed`), or all `label=K` (a class index or name; then only test images of other classes are chosen);
- `outputs`: uint8 (N, H, W, C), the decoder's mean for z = mu, as pixels;
- `class_names`: str (num_classes,), index -> name.

The N images are a seeded random choice from the whole test split (the run's `data.limit_test` does not
apply). `ckpt=` is a run dir (the checkpoint its test split was scored with, `checkpoints/best.pt` or
`last.pt` as its `eval.weights` said) or a checkpoint file; the model, its config and
class names come from it; the data are read from `root=DIR`, else from `$S18EXP_DATA` or the default data folder
(never from a folder the checkpoint names, and never downloaded).
`device` and `precision` work as in `python -m s18exp.predict`; the last line says how many outputs took how long.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from s18exp import cli, console
from s18exp.atomic_files import atomic_write
from s18exp.checkpoint import load_checkpoint
from s18exp.errors import UserError
from s18exp.runtime import Runtime
from s18exp.tasks.vae import VAETask, other_labels

USAGE = (
    "usage: python -m s18exp.generate ckpt=RUN_DIR n=N output=FILE.npz "
    "[seed=S] [label=K] [device=auto] [precision=auto|bf16|fp32] [root=DIR]"
)
REQUIRED = ("ckpt", "n", "output")
DEFAULTS: dict[str, str | None] = {"seed": "0", "label": None, "device": "auto", "precision": "auto", "root": None}


def parse_args(argv: list[str]) -> dict[str, str | None]:
    return cli.parse_args(argv, REQUIRED, DEFAULTS, USAGE)


def _int(args: dict, key: str) -> int:
    try:
        return int(args[key])
    except ValueError:
        raise UserError(f"{key}={args[key]!r} must be an integer") from None


def resolve_label(value: str, class_names: list[str]) -> int:
    """A class index or a class name -> the index, checked against the class range."""
    if value in class_names and not value.lstrip("-").isdigit():
        return class_names.index(value)
    try:
        label = int(value)
    except ValueError:
        raise UserError(f"label={value!r} is neither a class index nor a class name; classes: {class_names}") from None
    if not 0 <= label < len(class_names):
        raise UserError(
            f"label={label} is outside the class range 0..{len(class_names) - 1}; classes: "
            + ", ".join(f"{i}={name}" for i, name in enumerate(class_names))
        )
    return label


def generate(task: VAETask, model: torch.nn.Module, test, n: int, seed: int, label: int | None, runtime: Runtime) -> dict[str, np.ndarray]:
    """The arrays of the npz for `n` seeded test images of the split `test`."""
    generator = torch.Generator().manual_seed(seed)
    candidates = torch.arange(len(test)) if label is None else torch.nonzero(test.targets != label).flatten()
    if n > len(candidates):
        which = "the test split" if label is None else f"the test images whose class is not {label}"
        raise UserError(f"n={n} is larger than {which} ({len(candidates)} images); give n={len(candidates)} or less")
    index = candidates[torch.randperm(len(candidates), generator=generator)[:n]].sort().values
    images, true = test.images[index], test.targets[index].long()
    given = other_labels(true, task.num_classes, generator) if label is None else torch.full_like(true, label)
    outputs = task.outputs(model, images, given, runtime)
    return {
        "inputs": images.permute(0, 2, 3, 1).numpy(),
        "true_labels": true.numpy().astype(np.int64),
        "given_labels": given.numpy().astype(np.int64),
        "outputs": outputs.permute(0, 2, 3, 1).numpy(),
        "class_names": np.array(task.class_names),
    }


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    n, seed = _int(args, "n"), _int(args, "seed")
    if n < 1:
        raise UserError(f"n={n} must be at least 1")
    output = Path(args["output"])
    if output.suffix != ".npz":
        raise UserError(f"output={output} must end in .npz")
    ckpt = cli.checkpoint_file(args["ckpt"])
    device = cli.device(args["device"])
    task, model, cfg = load_checkpoint(ckpt, device, VAETask, data_root=args["root"])
    label = resolve_label(args["label"], task.class_names) if args["label"] is not None else None
    precision = cli.precision(args["precision"], str(OmegaConf.select(cfg, "trainer.precision", default="fp32")), device)
    # Only the test split is needed: one train and one val item keep the rest of the loading short.
    test = task.build_data(limit_train=1, limit_val=1, limit_test=None).test
    runtime = Runtime(device, precision, channels_last=False)
    start = time.perf_counter()
    arrays = generate(task, model, test, n, seed, label, runtime)
    atomic_write(output, lambda f: np.savez(f, **arrays))
    seconds = time.perf_counter() - start
    console.info(
        f"wrote {n} wrong-label outputs of {task.cfg.data.name} to {output} in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):.1f} images/s, {device} {precision})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
