"""`python -m s18exp.predict ckpt=RUN_DIR/checkpoints/best.pt input=DIR_OR_FILE output=DIR [device=cpu]`

For each input image writes `<stem>.png`, a mask at the image's original resolution (trimap coding
1 pet, 2 background, 3 border; for a `data.classes=binary` model 0 background, 1 pet), and
`<stem>_overlay.jpg`, the mask's colours over the image. Everything the model needs (its config,
class names, weights) comes from the checkpoint. Logits are resized to the original resolution
(bilinear) before the argmax, so mask edges follow the image rather than a blocky upscaled label map.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from s18exp import console
from s18exp.data.pets import MASK_FILE_VALUES
from s18exp.errors import UserError
from s18exp.io import atomic_save_image
from s18exp.loop import Runtime
from s18exp.pictures import overlay
from s18exp.tasks.segmentation import SegmentationTask

USAGE = "usage: python -m s18exp.predict ckpt=RUN_DIR/checkpoints/best.pt input=DIR_OR_FILE output=DIR [device=cpu]"
KEYS = {"ckpt", "input", "output", "device"}


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments, as on the main command line."""
    args: dict[str, str] = {"device": "cpu"}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise UserError(f"unknown argument {item!r}; {USAGE}")
        args[key] = value
    missing = sorted(KEYS - set(args))
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


def load_model(ckpt: Path, device: torch.device) -> tuple[SegmentationTask, torch.nn.Module, dict]:
    if not ckpt.is_file():
        raise UserError(f"ckpt={ckpt} does not exist; give RUN_DIR/checkpoints/best.pt of a finished run")
    state = torch.load(ckpt, map_location=device, weights_only=False)
    cfg = OmegaConf.create(state["config"])
    task = SegmentationTask(cfg)
    model = task.build_model()
    model.load_state_dict(state["model"])
    return task, model.to(device).eval(), cfg


def predict_file(task: SegmentationTask, model: torch.nn.Module, runtime: Runtime, path: Path, size: int) -> tuple[Image.Image, np.ndarray]:
    """The RGB image and its predicted class indices at the image's own resolution."""
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except Exception as exc:
        raise UserError(f"cannot read image {path} ({exc}); remove it or give another input") from exc
    resized = torch.from_numpy(np.asarray(image.resize((size, size), Image.BILINEAR)).copy()).permute(2, 0, 1)
    with torch.no_grad(), runtime.autocast():
        logits = model(task.normalize(resized[None].to(runtime.device)))
    logits = F.interpolate(logits.float(), size=(image.height, image.width), mode="bilinear", align_corners=False)
    return image, logits.argmax(1)[0].cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        files = image_files(Path(args["input"]))
        device = torch.device(args["device"])
        task, model, cfg = load_model(Path(args["ckpt"]), device)
        runtime = Runtime(device, "fp32", channels_last=False)
        values = np.array(MASK_FILE_VALUES[cfg.data.classes], dtype=np.uint8)
        output = Path(args["output"])
        output.mkdir(parents=True, exist_ok=True)
        for path in files:
            image, classes = predict_file(task, model, runtime, path, cfg.data.image_size)
            atomic_save_image(Image.fromarray(values[classes]), output / f"{path.stem}.png")
            atomic_save_image(overlay(image, classes), output / f"{path.stem}_overlay.jpg")
    except UserError as exc:
        console.error(str(exc))
        return 2
    console.info(f"wrote {len(files)} masks and overlays to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
