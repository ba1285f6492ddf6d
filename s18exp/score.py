"""`python -m s18exp.score ckpt=RUN_DIR [tta=none|flip] [tta_scales=F,F,...] [data_root=DIR] [device=auto] [precision=auto|bf16|fp32] [output=FILE.json]`

Scores a UNet checkpoint's test split again, the way its run scored it (each image at its original
resolution; see `SegmentationTask.test`), with the checkpoint's `eval.tta` and `eval.tta_scales` unless
`tta=` or `tta_scales=` say otherwise: other test-time views of a finished run, without training it again.
The data settings (split, image size, classes) are the checkpoint's own; the data are read from `data_root`
when given, else from `$S18EXP_DATA` or the default data folder, never from a folder the checkpoint names, and
never downloaded. Prints the scores; `output=` also writes them, with how they were scored, as JSON, and each
test image's confusion counts beside it in the format of a run's test_items.npz (s18exp/test_items.py), named
after it: `output=tta.json` writes `tta.test_items.npz`. Never `test_items.npz` itself, so that scoring into a
run dir cannot replace the file behind that run's own summary.json. Both atomically.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from s18exp import cli, console, test_items
from s18exp.atomic_files import atomic_write_json
from s18exp.checkpoint import load_checkpoint
from s18exp.data import Batches
from s18exp.errors import UserError
from s18exp.tasks.segmentation import SegmentationTask, scales_text, tta_mode, tta_scales

USAGE = (
    "usage: python -m s18exp.score ckpt=RUN_DIR [tta=none|flip] [tta_scales=F,F,...] [data_root=DIR] "
    "[device=auto] [precision=auto|bf16|fp32] [output=FILE.json]"
)
DEFAULTS: dict[str, str | None] = {"tta": None, "tta_scales": None, "data_root": None, "device": "auto", "precision": "auto", "output": None}


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(sys.argv[1:] if argv is None else argv, ("ckpt",), DEFAULTS, USAGE)
    if args["output"] is not None and Path(args["output"]).is_dir():
        raise UserError(f"output={args['output']} is a folder; give a file name, e.g. output=scores.json")
    ckpt = cli.checkpoint_file(args["ckpt"])
    device = cli.device(args["device"])
    task, model, cfg = load_checkpoint(ckpt, device, SegmentationTask, data_root=args["data_root"])
    if args["tta"] is not None:
        task.tta = tta_mode(args["tta"], "tta")
    if args["tta_scales"] is not None:
        task.tta_scales = tta_scales(args["tta_scales"], "tta_scales")
    precision = cli.precision(args["precision"], str(OmegaConf.select(cfg, "trainer.precision", default="fp32")), device)
    test = task.build_data().test
    start = time.perf_counter()
    runtime = cli.checkpoint_runtime(cfg, device, precision)
    tested = task.test(runtime.prepare_model(model), Batches(test, int(cfg.trainer.eval_batch_size)), runtime)
    scores = tested.scores
    how = f"original resolution, tta={task.tta}, {scales_text(task.tta_scales)}; test/loss at training resolution"
    console.show_metrics(f"test split of {ckpt} ({len(test)} images; {how}; {time.perf_counter() - start:.1f} s)", scores)
    if args["output"] is not None:
        result = {"checkpoint": str(ckpt), "test_images": len(test), "test_scoring": how, **{f"test/{k}": v for k, v in scores.items()}}
        atomic_write_json(result, Path(args["output"]))
        test_items.save(items_file(Path(args["output"])), tested.items)
    return 0


def items_file(output: Path) -> Path:
    """Where the per-image counts of `output` go: its name with `.test_items.npz` for its suffix."""
    return output.with_name(f"{output.stem}.{test_items.TEST_ITEMS}")


if __name__ == "__main__":
    sys.exit(main())
