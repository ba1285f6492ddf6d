"""`python -m s18exp.predict ckpt=RUN_DIR input=DIR_OR_FILE output=DIR [truth=DIR] [tta=none|flip] [tta_scales=F,F,...] [device=auto] [precision=auto|bf16|fp32] [batch_size=N]`

For each input image writes `<stem>.png`, a mask at the image's original resolution (trimap coding
1 pet, 2 background, 3 border; for a `data.classes=binary` model 0 background, 1 pet) as a palette PNG that
shows each value in its class's colour, and `<stem>_overlay.jpg`, the mask's colours over the image with the
colour legend under it. `ckpt=` is a run dir (the checkpoint its test split
was scored with, `checkpoints/best.pt` or `last.pt` as its `eval.weights` said) or a checkpoint file;
everything the model needs (its config, class names, weights) comes from it. Logits are resized to the
original resolution (bilinear) before the argmax, so mask edges follow the image rather than a blocky
upscaled label map, exactly as the run scored its test split. `tta` defaults to the
checkpoint's `eval.tta` (`flip` when the checkpoint predates it): flip averages the logits of the image
and of its mirror image. `tta_scales` (e.g. `tta_scales=0.75,1,1.25`) defaults to the checkpoint's
`eval.tta_scales` (`1`): one view per factor, the resized image's logits resized back, all views averaged.

Images go through the model `batch_size` at a time (default: the run's `trainer.eval_batch_size`), each
resized to the run's `data.image_size`; the next batch is read and the previous one written while the
model computes. `device=auto` is the first GPU where there is one, else the CPU; `precision=auto` is bf16
when the run trained in bf16 (or `auto`) and the device computes it natively, else fp32. A progress bar
(plain lines without a terminal) shows for more than a handful of files; the last line says how many files
took how long.

`truth=DIR` scores the predictions against trimaps `DIR/<stem>.png` (the data set's 1/2/3 coding, at the
image's own resolution): one confusion matrix over every pixel of every scored image, the same metrics as a
run's test split (mIoU, Dice, pixel accuracy, IoU per class), printed and written to `OUTPUT/scores.json`,
and each scored image's own counts to `OUTPUT/test_items.npz` in the format of a run's (s18exp/test_items.py:
`names` the image file names, `confusion` (N, C, C) summing to the scores' matrix, `class_names`). Images
without a trimap are predicted but not scored; a folder with no matching trimap at all is an error.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from s18exp.openmp import wait_passively_unless_set

wait_passively_unless_set()  # before torch loads its OpenMP runtime (s18exp/openmp.py)

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from s18exp import cli, console, test_items
from s18exp.atomic_files import atomic_save_image, atomic_write_json
from s18exp.checkpoint import load_checkpoint
from s18exp.data.pets import CLASS_SCHEMES, MASK_FILE_VALUES
from s18exp.errors import UserError
from s18exp.runtime import Runtime
from s18exp.metrics import pair_counts, segmentation_scores
from s18exp.pictures import mask_picture, overlay, with_legend
from s18exp.tasks.segmentation import SegmentationTask, scales_text, tta_mode, tta_scales, upsampled_classes

USAGE = (
    "usage: python -m s18exp.predict ckpt=RUN_DIR input=DIR_OR_FILE output=DIR [truth=DIR] [tta=none|flip] "
    "[tta_scales=F,F,...] [device=auto] [precision=auto|bf16|fp32] [batch_size=N]"
)
REQUIRED = ("ckpt", "input", "output")
DEFAULTS: dict[str, str | None] = {"device": "auto", "precision": "auto", "tta": None, "tta_scales": None, "truth": None, "batch_size": None}
PROGRESS_MIN_FILES = 8  # fewer files finish before a bar would tell anything


def parse_args(argv: list[str]) -> dict[str, str | None]:
    return cli.parse_args(argv, REQUIRED, DEFAULTS, USAGE)


def image_files(source: Path) -> list[Path]:
    """The file itself, or the files of a folder whose suffix PIL knows, sorted by name."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UserError(f"input={source} does not exist; give an image file or a folder of images")
    known = {ext for ext in Image.registered_extensions()}
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in known)
    if not files:
        raise UserError(f"input={source} holds no image files; give a folder of images PIL can read")
    return files


def output_files(output: Path, files: list[Path]) -> dict[Path, tuple[Path, Path]]:
    """input -> (its mask, its overlay) under `output`; a UserError, before any work, when two inputs would
    write the same file (a.jpg and a.png both make a.png)."""
    planned = {path: (output / f"{path.stem}.png", output / f"{path.stem}_overlay.jpg") for path in files}
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    clash = next((paths for paths in by_stem.values() if len(paths) > 1), None)
    if clash:
        raise UserError(
            f"{' and '.join(p.name for p in clash)} would both be written as {clash[0].stem}.png in output={output}; "
            "rename one of them or predict them separately"
        )
    return planned


def check_overwrites(planned: dict[Path, tuple[Path, Path]], protected: list[Path]) -> None:
    """A UserError, before any work, when a file to be written is one of `protected` (an input image or a trimap)."""
    kept = {path.resolve() for path in protected}
    for outputs in planned.values():
        for out in outputs:
            if out.resolve() in kept:
                raise UserError(f"writing {out.name} would overwrite the input file {out}; give an output= folder of its own")


def read_image(path: Path, size: int) -> tuple[Image.Image, torch.Tensor]:
    """The RGB image and the uint8 (3, size, size) tensor the model sees."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except Exception as exc:
        raise UserError(f"cannot read image {path} ({type(exc).__name__}); remove it or give another input") from exc
    resized = np.asarray(image.resize((size, size), Image.BILINEAR))
    return image, torch.from_numpy(resized.copy()).permute(2, 0, 1)


def read_batch(paths: list[Path], size: int) -> tuple[list[Image.Image], torch.Tensor]:
    pairs = [read_image(path, size) for path in paths]
    return [image for image, _ in pairs], torch.stack([resized for _, resized in pairs])


@torch.no_grad()
def batch_logits(
    task: SegmentationTask, model: torch.nn.Module, runtime: Runtime, resized: torch.Tensor, tta: str = "none", scales: tuple[float, ...] = (1.0,)
) -> torch.Tensor:
    """float32 logits (N, C, size, size) of a batch of resized uint8 images."""
    return task.logits(model, resized.to(runtime.device), runtime, tta, scales)


@torch.no_grad()
def image_classes(logits: torch.Tensor, images: list[Image.Image]) -> list[np.ndarray]:
    """The class indices of each image at its own resolution, from its logits at the model's."""
    return [upsampled_classes(one, (image.height, image.width)).cpu().numpy() for one, image in zip(logits, images)]


def finish_batch(
    output: Path, paths: list[Path], images: list[Image.Image], logits: torch.Tensor, values: list[int], class_names: list[str]
) -> list[np.ndarray]:
    """Masks at each image's resolution, written as palette PNGs of the class `values`, with their overlays
    (the colour legend under each); returned for scoring. Masks are written at the fastest PNG compression
    level: a picture of two or three values compresses well at any level."""
    masks = image_classes(logits, images)
    for path, image, classes in zip(paths, images, masks):
        atomic_save_image(mask_picture(classes, values), output / f"{path.stem}.png", compress_level=1)
        atomic_save_image(with_legend(overlay(image, classes), class_names), output / f"{path.stem}_overlay.jpg")
    return masks


def truth_files(folder: Path, images: list[Path]) -> dict[Path, Path]:
    """image -> its trimap `folder/<stem>.png`, for the images that have one; a UserError, before any work,
    when none has or when a trimap's size differs from its image's (sizes are read from the file headers)."""
    if not folder.is_dir():
        raise UserError(f"truth={folder} is not a folder; give the folder of trimaps <stem>.png")
    found = {image: folder / f"{image.stem}.png" for image in images if (folder / f"{image.stem}.png").is_file()}
    if not found:
        raise UserError(f"truth={folder} holds no trimap <stem>.png for any input image; check the folder")
    for image, trimap in found.items():
        with Image.open(image) as a, Image.open(trimap) as b:
            if a.size != b.size:
                raise UserError(f"trimap {trimap} is {b.size[0]}x{b.size[1]} but its image {image.name} is {a.size[0]}x{a.size[1]}")
    return found


def read_truth(path: Path, classes: str) -> np.ndarray:
    """A trimap file as class indices of the model's class scheme."""
    lut = np.full(256, 255, dtype=np.uint8)
    for value, index in CLASS_SCHEMES[classes][1].items():
        lut[value] = index
    with Image.open(path) as im:
        mask = lut[np.asarray(im)]
    if (mask == 255).any():
        raise UserError(f"trimap {path} holds values other than 1, 2, 3; trimaps code 1 pet, 2 background, 3 border")
    return mask


def batch_size(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"batch_size={value!r} must be a positive integer; e.g. batch_size={default}")
    return int(value)


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    files = image_files(Path(args["input"]))
    truths = truth_files(Path(args["truth"]), files) if args["truth"] is not None else {}
    output = Path(args["output"])
    check_overwrites(output_files(output, files), [*files, *truths.values()])
    ckpt = cli.checkpoint_file(args["ckpt"])
    device = cli.device(args["device"])
    task, model, cfg = load_checkpoint(ckpt, device, SegmentationTask)
    tta = tta_mode(args["tta"], "tta") if args["tta"] is not None else task.tta
    scales = tta_scales(args["tta_scales"], "tta_scales") if args["tta_scales"] is not None else task.tta_scales
    precision = cli.precision(args["precision"], str(OmegaConf.select(cfg, "trainer.precision", default="fp32")), device)
    runtime = cli.checkpoint_runtime(cfg, device, precision)
    model = runtime.prepare_model(model)
    size = int(cfg.data.image_size)
    per_batch = batch_size(args["batch_size"], int(OmegaConf.select(cfg, "trainer.eval_batch_size", default=8)))
    values = list(MASK_FILE_VALUES[cfg.data.classes])
    classes = len(task.class_names)
    scored: dict[str, torch.Tensor] = {}  # image file name -> its (true, predicted) counts, in the order scored
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    batches = [files[i : i + per_batch] for i in range(0, len(files), per_batch)]
    style = "auto" if len(files) > PROGRESS_MIN_FILES else "off"
    # While torch computes a batch's logits, one thread reads and resizes the next batch and another
    # upsamples and writes the previous one.
    def score(paths: list[Path], finishing: Future) -> None:
        for path, predicted in zip(paths, finishing.result()):
            if path in truths:
                truth = torch.from_numpy(read_truth(truths[path], cfg.data.classes))
                scored[path.name] = pair_counts(torch.from_numpy(predicted), truth, classes)

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer, console.Progress("predict", len(files), style) as progress:
        next_batch = reader.submit(read_batch, batches[0], size)
        finishing: tuple[list[Path], Future] | None = None
        for k, paths in enumerate(batches):
            images, resized = next_batch.result()
            if k + 1 < len(batches):
                next_batch = reader.submit(read_batch, batches[k + 1], size)
            logits = batch_logits(task, model, runtime, resized, tta, scales)
            if finishing is not None:
                score(*finishing)
                progress.advance(len(finishing[0]))
            finishing = (paths, writer.submit(finish_batch, output, paths, images, logits, values, list(task.class_names)))
        if finishing is not None:
            score(*finishing)
            progress.advance(len(finishing[0]))
    seconds = time.perf_counter() - start
    console.info(
        f"wrote masks and overlays of {len(files)} files to {output} in {seconds:.1f} s "
        f"({len(files) / max(seconds, 1e-9):.1f} images/s, {device} {precision}, batches of {per_batch}, tta={tta}, {scales_text(scales)})"
    )
    if truths:
        per_image = torch.stack(list(scored.values())).view(-1, classes, classes)
        scores = segmentation_scores(per_image.sum(0), task.class_names)
        test_items.save(output / test_items.TEST_ITEMS, {
            "names": np.array(list(scored), dtype=str), "confusion": per_image.numpy(), "class_names": np.array(task.class_names, dtype=str),
        })
        atomic_write_json({"images_scored": len(truths), "tta": tta, "tta_scales": list(scales), **scores}, output / "scores.json")
        console.show_metrics(f"scores of {len(truths)} images against {args['truth']}", scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
