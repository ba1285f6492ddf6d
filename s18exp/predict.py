"""`python -m s18exp.predict ckpt=RUN_DIR/checkpoints/best.pt input=DIR_OR_FILE output=DIR [device=cpu] [tta=none|flip] [truth=DIR]`

For each input image writes `<stem>.png`, a mask at the image's original resolution (trimap coding
1 pet, 2 background, 3 border; for a `data.classes=binary` model 0 background, 1 pet), and
`<stem>_overlay.jpg`, the mask's colours over the image. Everything the model needs (its config,
class names, weights) comes from the checkpoint. Logits are resized to the original resolution
(bilinear) before the argmax, so mask edges follow the image rather than a blocky upscaled label map,
exactly as the run scored its test split. `tta` defaults to the checkpoint's `eval.tta` (`flip` when the
checkpoint predates it): flip averages the logits of the image and of its mirror image.

`truth=DIR` scores the predictions against trimaps `DIR/<stem>.png` (the data set's 1/2/3 coding, at the
image's own resolution): one confusion matrix over every pixel of every scored image, the same metrics as a
run's test split (mIoU, Dice, pixel accuracy, IoU per class), printed and written to `OUTPUT/scores.json`.
Images without a trimap are predicted but not scored; a folder with no matching trimap at all is an error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from s18exp import console
from s18exp.checkpoint import load_checkpoint
from s18exp.data.pets import CLASS_SCHEMES, MASK_FILE_VALUES
from s18exp.io import atomic_write_json
from s18exp.metrics import ConfusionMatrix, segmentation_scores
from s18exp.errors import UserError
from s18exp.io import atomic_save_image
from s18exp.loop import Runtime
from s18exp.pictures import overlay
from s18exp.tasks.segmentation import SegmentationTask, tta_mode, upsampled_classes

USAGE = "usage: python -m s18exp.predict ckpt=RUN_DIR/checkpoints/best.pt input=DIR_OR_FILE output=DIR [device=cpu] [tta=none|flip] [truth=DIR]"
KEYS = {"ckpt", "input", "output", "device", "tta", "truth"}
OPTIONAL = {"device", "tta", "truth"}


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments, as on the main command line."""
    args: dict[str, str] = {"device": "cpu"}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise UserError(f"unknown argument {item!r}; {USAGE}")
        args[key] = value
    missing = sorted(KEYS - OPTIONAL - set(args))
    if missing:
        raise UserError(f"missing {', '.join(k + '=' for k in missing)}; {USAGE}")
    return args


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


def load_model(ckpt: Path, device: torch.device) -> tuple[SegmentationTask, torch.nn.Module, DictConfig]:
    if not ckpt.is_file():
        raise UserError(f"ckpt={ckpt} does not exist; give RUN_DIR/checkpoints/best.pt of a finished run")
    task, model, cfg, _ = load_checkpoint(ckpt, device)
    if not isinstance(task, SegmentationTask):
        raise UserError(f"ckpt={ckpt} is not a task=unet checkpoint; predict needs a segmentation model")
    return task, model, cfg


def predict_file(
    task: SegmentationTask, model: torch.nn.Module, runtime: Runtime, path: Path, size: int, tta: str = "none"
) -> tuple[Image.Image, np.ndarray]:
    """The RGB image and its predicted class indices at the image's own resolution."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except Exception as exc:
        raise UserError(f"cannot read image {path} ({exc}); remove it or give another input") from exc
    resized = torch.from_numpy(np.asarray(image.resize((size, size), Image.BILINEAR)).copy()).permute(2, 0, 1)
    with torch.no_grad():
        logits = task.logits(model, resized[None].to(runtime.device), runtime, tta)[0]
    return image, upsampled_classes(logits, (image.height, image.width)).cpu().numpy()


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


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        files = image_files(Path(args["input"]))
        device = torch.device(args["device"])
        task, model, cfg = load_model(Path(args["ckpt"]), device)
        tta = tta_mode(args["tta"], "tta") if "tta" in args else task.tta
        runtime = Runtime(device, "fp32", channels_last=False)
        values = np.array(MASK_FILE_VALUES[cfg.data.classes], dtype=np.uint8)
        truths = truth_files(Path(args["truth"]), files) if "truth" in args else {}
        confusion = ConfusionMatrix(len(task.class_names))
        output = Path(args["output"])
        output.mkdir(parents=True, exist_ok=True)
        for path in files:
            image, classes = predict_file(task, model, runtime, path, cfg.data.image_size, tta)
            atomic_save_image(Image.fromarray(values[classes]), output / f"{path.stem}.png")
            atomic_save_image(overlay(image, classes), output / f"{path.stem}_overlay.jpg")
            if path in truths:
                confusion.update(torch.from_numpy(classes), torch.from_numpy(read_truth(truths[path], cfg.data.classes)))
    except UserError as exc:
        console.error(str(exc))
        return 2
    console.info(f"wrote {len(files)} masks and overlays to {output}")
    if truths:
        scores = segmentation_scores(confusion.matrix(), task.class_names)
        atomic_write_json({"images_scored": len(truths), "tta": tta, **scores}, output / "scores.json")
        console.show_metrics(f"scores of {len(truths)} images against {args['truth']}", scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
