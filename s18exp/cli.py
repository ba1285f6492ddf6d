"""What the commands share: a UserError as one line on stderr and exit status 2; and, for those that read a
checkpoint (predict, generate, score), `key=value` arguments, the checkpoint a `ckpt=` names, and the device and
precision they compute with."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, ParamSpec

import torch
from omegaconf import DictConfig, OmegaConf

from s18exp import console
from s18exp.checkpoint import run_weights_file
from s18exp.errors import UserError, find_user_error
from s18exp.runtime import Runtime, resolve_device

DEVICE_HELP = "auto|cpu|cuda|cuda:N"
PRECISIONS = ("auto", "bf16", "fp32")
USER_ERROR_STATUS = 2
P = ParamSpec("P")


def _user_error_status(exc: Exception) -> int:
    """The UserError that `exc` is or was raised from, as one line on stderr, and the exit status for it;
    `exc` raised again when no UserError is behind it (a bug keeps its traceback)."""
    error = find_user_error(exc)
    if error is None:
        raise exc
    console.error(str(error))
    return USER_ERROR_STATUS


def command(main: Callable[P, int]) -> Callable[P, int]:
    """A command's `main`, which returns its exit status: a UserError, itself or wrapped (hydra's instantiate
    wraps what a constructor raises), ends it with one line on stderr and status 2 instead of a traceback."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            return _user_error_status(exc)

    return run


def exit_on_user_error(body: Callable[[], object]) -> None:
    """`body()` for an entry point whose return value is not its exit status (`@hydra.main` drops what its
    function returns): a UserError, as in `command`, ends the process with one line on stderr and status 2."""
    try:
        body()
    except Exception as exc:
        sys.exit(_user_error_status(exc))


def parse_args(argv: list[str], required: tuple[str, ...], defaults: dict[str, str | None], usage: str) -> dict[str, str | None]:
    """`key=value` arguments as on the main command line: every key in `required` or `defaults`, the
    defaults filled in; a UserError naming an unknown or missing key."""
    args: dict[str, str | None] = dict(defaults)
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in (*required, *defaults):
            raise UserError(f"unknown argument {item!r}; {usage}")
        args[key] = value
    missing = [k + "=" for k in required if args.get(k) is None]
    if missing:
        raise UserError(f"missing {', '.join(missing)}; {usage}")
    return args


def checkpoint_file(value: str) -> Path:
    """The checkpoint that `ckpt=` names: a .pt file, or a run dir, which means the checkpoint its test split was
    scored with (`checkpoints/best.pt` or `last.pt`, as its `eval.weights` said; best.pt for an unfinished run)."""
    path = Path(value).expanduser()
    if path.is_dir():
        path = run_weights_file(path)
    if not path.is_file():
        raise UserError(f"ckpt={value} holds no checkpoint ({path} is missing); give a finished run dir or a .pt file")
    return path


def device(value: str) -> torch.device:
    """`device=`: `auto` is the first GPU where there is one, else the CPU."""
    try:
        chosen = resolve_device(value)
    except RuntimeError:
        raise UserError(f"device={value!r} is not a device; give one of {DEVICE_HELP}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={value} but no GPU is visible; use device=cpu or device=auto")
    if chosen.type not in ("cpu", "cuda"):
        raise UserError(f"device={value!r} is not supported; give one of {DEVICE_HELP}")
    return chosen


def bf16_native(where: torch.device) -> bool:
    """Whether the device computes bfloat16 natively (recent GPUs; AMX/AVX-512 CPUs), so that it is faster."""
    if where.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision(value: str, trained: str, where: torch.device) -> str:
    """`precision=`: `auto` is bf16 when the checkpoint was trained in bf16 (or with `auto`) and the device
    computes it natively, else fp32; `bf16` and `fp32` are taken as given."""
    if value not in PRECISIONS:
        raise UserError(f"precision={value!r} is not one of {'|'.join(PRECISIONS)}; e.g. precision=auto")
    if value != "auto":
        return value
    return "bf16" if trained in ("auto", "bf16") and bf16_native(where) else "fp32"


def checkpoint_runtime(cfg: DictConfig, device: torch.device, chosen_precision: str) -> Runtime:
    """Where and how a command computes a checkpoint's model: in the memory layout its run trained and tested
    in (`trainer.channels_last`, on by default), which on a CPU with bf16 also runs the UNet about twice as
    fast as the plain layout (measured for predict); pass the model through its `prepare_model`."""
    return Runtime(device, chosen_precision, channels_last=bool(OmegaConf.select(cfg, "trainer.channels_last", default=False)))
