"""The UNet's test scoring at each image's original resolution, flip and multi-scale test-time augmentation,
and predict.

Expected scores are computed here without the task: logits of a model stub by numpy, a bilinear resize
(half-pixel centres, edges clamped) written out by hand, argmax, a confusion matrix by np.bincount.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyPets
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from s18exp import predict, test_items
from s18exp.checkpoint import load_checkpoint
from s18exp.data import Batches
from s18exp.data.pets import IMAGENET_MEAN, IMAGENET_STD, PetsData
from s18exp.errors import UserError
from s18exp.pictures import PALETTE
from s18exp.runtime import Runtime
from s18exp.paths import CONFIG_DIR
from s18exp.tasks.segmentation import SegmentationTask, tta_scales, view_size

SIZE = 32
CPU = Runtime(torch.device("cpu"), "fp32", channels_last=False)


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=["wandb.mode=disabled", "model.width=4", "model.depth=2", f"data.image_size={SIZE}", *overrides],
        )


class PixelwiseWithRamp(nn.Module):
    """Logits = a fixed 1x1 convolution of the image plus a left-to-right ramp per class: not mirror-symmetric,
    so that a flip TTA changes them, and simple enough to compute with numpy."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 3, generator=g))
        self.bias = nn.Parameter(torch.tensor([0.2, 0.0, -0.6]))
        self.ramp = nn.Parameter(torch.tensor([1.5, -1.0, 0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, x.shape[-1]).view(1, 1, 1, -1) * self.ramp.view(1, 3, 1, 1)
        return torch.einsum("oc,nchw->nohw", self.weight, x) + self.bias.view(1, 3, 1, 1) + ramp


def numpy_logits(model: PixelwiseWithRamp, image: np.ndarray) -> np.ndarray:
    """(C, h, w) logits of one uint8 (3, h, w) image."""
    x = (image.astype(np.float64) / 255 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    w, b, r = (p.detach().double().numpy() for p in (model.weight, model.bias, model.ramp))
    ramp = np.linspace(-1, 1, image.shape[-1])[None, None, :] * r[:, None, None]
    return np.einsum("oc,chw->ohw", w, x) + b[:, None, None] + ramp


def numpy_flip_tta(model: PixelwiseWithRamp, image: np.ndarray) -> np.ndarray:
    return (numpy_logits(model, image) + numpy_logits(model, image[:, :, ::-1])[:, :, ::-1]) / 2


def resize_axis(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Bilinear resize of one axis: output i samples input (i + 0.5) * n / size - 0.5, clamped to the edges."""
    n = values.shape[axis]
    source = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n - 1)
    frac = source - low
    shape = [1] * values.ndim
    shape[axis] = size
    return np.take(values, low, axis=axis) * (1 - frac.reshape(shape)) + np.take(values, high, axis=axis) * frac.reshape(shape)


def numpy_views(model: PixelwiseWithRamp, image: np.ndarray, tta: str, scales: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """The mean logits over the views: per scale, the image resized by hand (whole factors up only, where no
    antialiasing applies), its logits (flip-averaged with tta=flip) resized back."""
    views = []
    for scale in scales:
        _, h, w = image.shape
        big = resize_axis(resize_axis(image.astype(np.float64), round(h * scale), 1), round(w * scale), 2)
        logits = numpy_flip_tta(model, big) if tta == "flip" else numpy_logits(model, big)
        views.append(resize_axis(resize_axis(logits, h, 1), w, 2))
    return np.mean(views, axis=0)


def expected_counts(model: PixelwiseWithRamp, data: PetsData, tta: str, scales: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """(N, 3, 3) counts of (true, predicted) classes per test image, at its original resolution."""
    counts = []
    for image, full in zip(data.test.images.numpy(), data.test.full_targets):
        logits = numpy_views(model, image, tta, scales)
        height, width = full.shape
        predicted = resize_axis(resize_axis(logits, height, 1), width, 2).argmax(0)
        counts.append(np.bincount(full.numpy().astype(np.int64).ravel() * 3 + predicted.ravel(), minlength=9).reshape(3, 3))
    return np.stack(counts)


def expected_scores(model: PixelwiseWithRamp, data: PetsData, tta: str, scales: tuple[float, ...] = (1.0,)) -> dict[str, float]:
    m = expected_counts(model, data, tta, scales).sum(0).astype(float)
    tp = np.diag(m)
    iou = tp / (m.sum(0) + m.sum(1) - tp)
    return {"miou": iou.mean(), "pixel_acc": tp.sum() / m.sum(), **{f"iou_{c}": v for c, v in zip(("pet", "background", "border"), iou)}}


@pytest.fixture(scope="module")
def pets(tiny_pets: TinyPets) -> PetsData:
    return PetsData(str(tiny_pets.root), image_size=SIZE, download=False, cache=False)


@pytest.mark.parametrize(("tta", "scales"), [("none", (1.0,)), ("flip", (1.0,)), ("flip", (1.0, 2.0)), ("none", (2.0, 3.0))])
def test_test_scores_match_an_independent_original_resolution_calculation(pets: PetsData, tta: str, scales: tuple[float, ...]) -> None:
    # BCE: a mean over pixels, so the batch-weighted test loss equals the criterion over the whole split
    task = SegmentationTask(compose_config(f"eval.tta={tta}", f"eval.tta_scales=[{','.join(map(str, scales))}]", "loss=bce"))
    model = PixelwiseWithRamp()
    tested = task.test(model, Batches(pets.test, batch_size=3), CPU)
    scores = tested.scores
    expected = expected_scores(model, pets, tta, scales)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-9), key
    # each image's own counts, which test_items.npz keeps: they sum to the split's matrix behind the scores
    assert list(tested.items["names"]) == pets.test.names and list(tested.items["class_names"]) == ["pet", "background", "border"]
    assert tested.items["confusion"].dtype == np.int64
    np.testing.assert_array_equal(tested.items["confusion"], expected_counts(model, pets, tta, scales))
    # the loss stays the criterion's at training resolution, on the same logits
    logits = torch.from_numpy(np.stack([numpy_views(model, i, tta, scales) for i in pets.test.images.numpy()]))
    assert scores["loss"] == pytest.approx(float(task.criterion(logits.float(), pets.test.targets)), rel=1e-5)


def test_original_resolution_scores_differ_from_training_resolution_ones(pets: PetsData) -> None:
    """The fixture's originals are 29 to 80 pixels wide: scoring them is not scoring the 32 x 32 masks."""
    task = SegmentationTask(compose_config("eval.tta=none"))
    model = PixelwiseWithRamp()
    batches = Batches(pets.test, batch_size=4)
    assert task.test(model, batches, CPU).scores["miou"] != pytest.approx(task.evaluate(model, batches, CPU)["miou"], abs=1e-6)


def test_flip_tta_is_the_mean_of_the_logits_and_the_mirrored_logits_of_the_mirror_image(pets: PetsData) -> None:
    task = SegmentationTask(compose_config())
    model = PixelwiseWithRamp()
    images = pets.test.images[:4]
    with torch.no_grad():
        plain = model(task.normalize(images))
        mirrored = model(task.normalize(images.flip(-1))).flip(-1)
        averaged = task.logits(model, images, CPU, "flip")
        assert torch.allclose(averaged, (plain + mirrored) / 2, atol=1e-6)
        assert torch.allclose(task.logits(model, images, CPU, "none"), plain)
    assert not torch.allclose(averaged, plain, atol=1e-3)  # the stub is not mirror-symmetric


def test_scaled_views_differ_from_the_plain_view_and_round_to_the_models_multiple(pets: PetsData) -> None:
    task = SegmentationTask(compose_config())
    model = PixelwiseWithRamp()  # its ramp spans each view's width, so a resized view gives other logits
    images = pets.test.images[:2]
    with torch.no_grad():
        plain = task.logits(model, images, CPU, "none")
        assert torch.equal(task.logits(model, images, CPU, "none", (1.0,)), plain)
        assert not torch.allclose(task.logits(model, images, CPU, "none", (1.0, 2.0)), plain, atol=1e-3)
        # depth 2: views are multiples of 4 pixels; 0.7 x 32 = 22.4 rounds to 24, the same view as 0.75
        assert torch.equal(task.logits(model, images, CPU, "none", (0.7,)), task.logits(model, images, CPU, "none", (0.75,)))
    assert view_size(32, 0.7, 4) == 24 and view_size(32, 0.01, 4) == 4 and view_size(192, 1.25, 16) == 240


@pytest.mark.parametrize("value", ["[0.0]", "[1,1]", "[]", "[-1,1]", "abc"])
def test_eval_tta_scales_are_validated_in_one_line(value: str) -> None:
    with pytest.raises(UserError) as info:
        SegmentationTask(compose_config(f"eval.tta_scales={value}"))
    assert str(info.value).startswith("eval.tta_scales=") and str(info.value).endswith("must list distinct positive resize factors; e.g. eval.tta_scales=[0.75,1,1.25]")


@pytest.mark.parametrize("text", ["0.75,1,1.25", "[0.75,1,1.25]", " [0.75, 1, 1.25] "])
def test_tta_scales_from_a_command_line_take_the_bracketed_form_of_the_error_example_too(text: str) -> None:
    """score= and predict= get tta_scales as a string; the error message's example, bracketed, must parse."""
    assert tta_scales(text, "tta_scales") == (0.75, 1.0, 1.25)
    with pytest.raises(UserError, match=r"e\.g\. tta_scales=\[0\.75,1,1\.25\]$"):
        tta_scales(text.replace("1.25", "0.75"), "tta_scales")


def test_eval_tta_defaults_to_flip_and_is_validated() -> None:
    assert SegmentationTask(compose_config()).tta == "flip"
    assert SegmentationTask(compose_config()).tta_scales == (1.0,)
    resolved = OmegaConf.to_container(compose_config(), resolve=True)
    without = OmegaConf.create({k: v for k, v in resolved.items() if k not in ("eval", "augment")})
    old_checkpoint_task = SegmentationTask(without)  # a checkpoint's config from before eval.tta and augment
    assert old_checkpoint_task.tta == "flip" and old_checkpoint_task.tta_scales == (1.0,)
    assert not (old_checkpoint_task.augmenter.geometric or old_checkpoint_task.augmenter.colour or old_checkpoint_task.augmenter.flip_prob)
    with pytest.raises(UserError) as info:
        SegmentationTask(compose_config("eval.tta=rotate"))
    assert str(info.value).startswith("eval.tta='rotate' is not one of none|flip")


# --- predict ------------------------------------------------------------------------------------------


def write_checkpoint(path: Path, cfg) -> nn.Module:
    task = SegmentationTask(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    torch.save({"config": OmegaConf.to_container(cfg, resolve=True), "model": model.state_dict()}, path)
    return model


def test_predict_writes_the_original_resolution_argmax_of_the_tta_logits(tiny_pets: TinyPets, tmp_path: Path) -> None:
    cfg = compose_config(f"data.root={tiny_pets.root}")
    model = write_checkpoint(tmp_path / "best.pt", cfg).eval()
    task = SegmentationTask(cfg)
    name = tiny_pets.test[0]
    with Image.open(tiny_pets.image_file(name)) as im:
        rgb = im.convert("RGB")
    resized = torch.from_numpy(np.asarray(rgb.resize((SIZE, SIZE), Image.BILINEAR)).copy()).permute(2, 0, 1)
    for tta in ("none", "flip"):
        out = tmp_path / tta
        assert predict.main([f"ckpt={tmp_path / 'best.pt'}", f"input={tiny_pets.image_file(name)}", f"output={out}", f"tta={tta}"]) == 0
        with torch.no_grad():
            logits = model(task.normalize(resized[None]))[0].double().numpy()
            if tta == "flip":
                logits = (logits + model(task.normalize(resized[None].flip(-1)))[0].flip(-1).double().numpy()) / 2
        classes = resize_axis(resize_axis(logits, rgb.height, 1), rgb.width, 2).argmax(0)
        written = np.asarray(Image.open(out / f"{name}.png"))
        assert written.shape == (rgb.height, rgb.width)
        assert (written == np.array([1, 2, 3])[classes]).mean() > 0.999  # float32 vs float64 may flip a tie


def test_predict_writes_palette_masks_in_the_class_colours_and_overlays_with_the_legend(tiny_pets: TinyPets, tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "best.pt", compose_config(f"data.root={tiny_pets.root}"))
    name = tiny_pets.test[0]
    assert predict.main([f"ckpt={tmp_path / 'best.pt'}", f"input={tiny_pets.image_file(name)}", f"output={tmp_path / 'out'}"]) == 0
    with Image.open(tmp_path / "out" / f"{name}.png") as mask, Image.open(tiny_pets.image_file(name)) as image:
        assert mask.mode == "P" and mask.size == image.size
        values = np.asarray(mask)
        colours = np.asarray(mask.convert("RGB"))
    assert set(np.unique(values)) <= {1, 2, 3}  # the trimap coding, as before
    for k, value in enumerate((1, 2, 3)):  # pet, background, border in the colours of every picture
        assert (colours[values == value] == PALETTE[k]).all()
    with Image.open(tmp_path / "out" / f"{name}_overlay.jpg") as overlay:
        assert overlay.width == image.size[0] and overlay.height > image.size[1]  # the legend strip under the image
        legend_strip = np.asarray(overlay.convert("RGB"), dtype=int)[image.size[1] :]
    orange = np.abs(legend_strip - PALETTE[0]).max(axis=-1) < 40  # the pet swatch, through JPEG
    assert orange.sum() > 20


def test_predict_takes_tta_from_the_checkpoint_and_refuses_an_unknown_one(tiny_pets: TinyPets, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_checkpoint(tmp_path / "none.pt", compose_config("eval.tta=none"))
    task, _, _ = load_checkpoint(tmp_path / "none.pt", torch.device("cpu"), SegmentationTask)
    assert task.tta == "none"
    image = tiny_pets.image_file(tiny_pets.test[0])
    assert predict.main([f"ckpt={tmp_path / 'none.pt'}", f"input={image}", f"output={tmp_path / 'out'}", "tta=twice"]) == 2
    assert "tta='twice' is not one of none|flip" in capsys.readouterr().err
    assert predict.main([f"ckpt={tmp_path / 'none.pt'}", f"input={image}", f"output={tmp_path / 'out'}", "tta_scales=1,0"]) == 2
    assert capsys.readouterr().err.strip() == "error: tta_scales='1,0' must list distinct positive resize factors; e.g. tta_scales=[0.75,1,1.25]"
    assert not (tmp_path / "out").exists()


def test_predict_takes_tta_scales_from_the_checkpoint_or_the_command(tiny_pets: TinyPets, tmp_path: Path) -> None:
    import json

    cfg = compose_config(f"data.root={tiny_pets.root}", "eval.tta_scales=[1,2]")
    task = SegmentationTask(cfg)
    model = task.build_model().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights far from their initial scale, so that the masks vary and the views differ
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    torch.save({"config": OmegaConf.to_container(cfg, resolve=True), "model": model.state_dict()}, tmp_path / "best.pt")
    name = tiny_pets.test[0]
    truth = tiny_pets.base / "annotations" / "trimaps"
    with Image.open(tiny_pets.image_file(name)) as im:
        rgb = im.convert("RGB")
    resized = torch.from_numpy(np.asarray(rgb.resize((SIZE, SIZE), Image.BILINEAR)).copy()).permute(2, 0, 1)
    for option, scales in ([], (1.0, 2.0)), (["tta_scales=1"], (1.0,)):
        out = tmp_path / str(len(scales))
        assert predict.main([f"ckpt={tmp_path / 'best.pt'}", f"input={tiny_pets.image_file(name)}", f"output={out}", f"truth={truth}", *option]) == 0
        assert json.loads((out / "scores.json").read_text())["tta_scales"] == list(scales)
        with torch.no_grad():
            logits = task.logits(model, resized[None], CPU, "flip", scales)[0].double().numpy()
        classes = resize_axis(resize_axis(logits, rgb.height, 1), rgb.width, 2).argmax(0)
        written = np.asarray(Image.open(out / f"{name}.png"))
        assert (written == np.array([1, 2, 3])[classes]).mean() > 0.999
    one, two = (np.asarray(Image.open(tmp_path / k / f"{name}.png")) for k in ("1", "2"))
    assert not np.array_equal(one, two)  # the scaled view changed the mask: the option reached the model



def test_predict_scores_its_masks_against_trimaps_with_truth(tiny_pets: TinyPets, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    write_checkpoint(tmp_path / "best.pt", compose_config(f"data.root={tiny_pets.root}"))
    images = tmp_path / "images"
    images.mkdir()
    names = tiny_pets.test[:3]
    for name in names:
        (images / tiny_pets.image_file(name).name).write_bytes(tiny_pets.image_file(name).read_bytes())
    truth = tiny_pets.base / "annotations" / "trimaps"
    out = tmp_path / "out"
    assert predict.main([f"ckpt={tmp_path / 'best.pt'}", f"input={images}", f"output={out}", f"truth={truth}"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    # by hand: the written masks (trimap coding) against the trimaps, one confusion matrix over all pixels
    counts = np.zeros((3, 3), dtype=np.int64)
    for name in names:
        written = np.asarray(Image.open(out / f"{name}.png")).astype(np.int64) - 1
        true = np.asarray(Image.open(tiny_pets.trimap_file(name))).astype(np.int64) - 1
        counts += np.bincount(true.ravel() * 3 + written.ravel(), minlength=9).reshape(3, 3)
    tp = np.diag(counts)
    iou = tp / (counts.sum(0) + counts.sum(1) - tp)
    assert scores["images_scored"] == 3
    assert scores["pixel_acc"] == pytest.approx(tp.sum() / counts.sum())
    assert scores["miou"] == pytest.approx(np.nanmean(iou))
    assert scores["iou_border"] == pytest.approx(iou[2], nan_ok=True)
    # each scored image's own counts, in the format of a run's test_items.npz: they add up to the same matrix
    items = test_items.load(out / test_items.TEST_ITEMS)
    assert list(items["names"]) == [tiny_pets.image_file(name).name for name in names]
    np.testing.assert_array_equal(items["confusion"].sum(0), counts)
    assert list(items["class_names"]) == ["pet", "background", "border"]

    # a trimap of another size is refused before anything is written, in one line
    bad = tmp_path / "bad_truth"
    bad.mkdir()
    Image.fromarray(np.full((5, 7), 2, dtype=np.uint8)).save(bad / f"{names[0]}.png")
    assert predict.main([f"ckpt={tmp_path / 'best.pt'}", f"input={images}", f"output={tmp_path / 'out2'}", f"truth={bad}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert "is 7x5 but its image" in error[-1] and not (tmp_path / "out2").exists()


def test_batched_predict_gives_the_masks_of_one_at_a_time(tiny_pets: TinyPets, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_checkpoint(tmp_path / "best.pt", compose_config(f"data.root={tiny_pets.root}"))
    images = tmp_path / "images"
    images.mkdir()
    for name in tiny_pets.test:  # 8 images of 6 different sizes, a GIF-in-JPEG and an RGBA PNG among them
        (images / tiny_pets.image_file(name).name).write_bytes(tiny_pets.image_file(name).read_bytes())
    ckpt = f"ckpt={tmp_path / 'best.pt'}"
    assert predict.main([ckpt, f"input={images}", f"output={tmp_path / 'one'}", "batch_size=1"]) == 0
    assert predict.main([ckpt, f"input={images}", f"output={tmp_path / 'batched'}", "batch_size=5"]) == 0  # 5 + 3
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"wrote masks and overlays of {len(tiny_pets.test)} files to ") and "images/s" in summary
    for name in tiny_pets.test:
        one = np.asarray(Image.open(tmp_path / "one" / f"{name}.png"))
        batched = np.asarray(Image.open(tmp_path / "batched" / f"{name}.png"))
        with Image.open(tiny_pets.image_file(name)) as original:
            assert batched.shape == (original.height, original.width)
        assert np.array_equal(one, batched), name
        assert (tmp_path / "batched" / f"{name}_overlay.jpg").is_file()


def test_predict_takes_a_run_dir(tiny_pets: TinyPets, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    write_checkpoint(run_dir / "checkpoints" / "best.pt", compose_config(f"data.root={tiny_pets.root}"))
    image = tiny_pets.image_file(tiny_pets.test[0])
    assert predict.main([f"ckpt={run_dir}", f"input={image}", f"output={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / f"{image.stem}.png").is_file()
    empty = tmp_path / "empty_run"
    empty.mkdir()
    capsys.readouterr()
    assert predict.main([f"ckpt={empty}", f"input={image}", f"output={tmp_path / 'out2'}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: ckpt={empty} holds no checkpoint ({empty / 'checkpoints' / 'best.pt'} is missing); give a finished run dir or a .pt file"
    ]
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("device=tpu", "device='tpu' is not a device; give one of auto|cpu|cuda|cuda:N"),
        ("precision=fp16", "precision='fp16' is not one of auto|bf16|fp32; e.g. precision=auto"),
        ("batch_size=0", "batch_size='0' must be a positive integer; e.g. batch_size=8"),
        ("colour=red", "unknown argument 'colour=red'; usage: python -m s18exp.predict"),
    ],
)
def test_predict_refuses_bad_arguments_in_one_line(
    tiny_pets: TinyPets, tmp_path: Path, capsys: pytest.CaptureFixture, argument: str, message: str
) -> None:
    write_checkpoint(tmp_path / "best.pt", compose_config(f"data.root={tiny_pets.root}"))
    args = [f"ckpt={tmp_path / 'best.pt'}", f"input={tiny_pets.image_file(tiny_pets.test[0])}", f"output={tmp_path / 'out'}", argument]
    assert predict.main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {message}")
    assert not (tmp_path / "out").exists()


def test_predict_errors_are_printed_once_by_the_command(tmp_path: Path) -> None:
    """In a process of its own, where no logging is configured (pytest configures it in this one)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "s18exp.predict", f"ckpt={tmp_path}", f"input={tmp_path}", f"output={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: input={tmp_path} holds no image files; give a folder of images PIL can read"]


def test_predict_precision_follows_the_checkpoint_where_the_device_computes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from s18exp import cli

    cpu = torch.device("cpu")
    monkeypatch.setattr(cli, "bf16_native", lambda device: True)
    assert cli.precision("auto", "auto", cpu) == "bf16" and cli.precision("auto", "bf16", cpu) == "bf16"
    assert cli.precision("auto", "fp32", cpu) == "fp32" and cli.precision("auto", "fp16", cpu) == "fp32"
    monkeypatch.setattr(cli, "bf16_native", lambda device: False)
    assert cli.precision("auto", "bf16", cpu) == "fp32"
    assert cli.precision("bf16", "fp32", cpu) == "bf16" and cli.precision("fp32", "bf16", cpu) == "fp32"


def test_class_argmax_is_argmax_with_the_first_class_on_ties() -> None:
    from s18exp.tasks.segmentation import class_argmax

    g = torch.Generator().manual_seed(0)
    for classes in (2, 3, 5):
        scores = torch.randn(classes, 37, 53, generator=g)
        scores[:, :5, :5] = 0.25  # every class ties: class 0
        scores[0, 5:9, :5], scores[1:, 5:9, :5] = 0.5, 0.75  # classes 1.. tie above class 0: class 1
        assert torch.equal(class_argmax(scores), scores.argmax(0))
        assert (class_argmax(scores)[:5, :5] == 0).all() and (class_argmax(scores)[5:9, :5] == 1).all()
