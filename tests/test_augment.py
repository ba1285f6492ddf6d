"""PairAugment (s18exp/augment.py): images and masks move together, masks keep their classes, the draws are
seeded by torch's global generator, colour jitter matches torchvision's definitions, views at a smaller side are
the full-size views resized, and bad strengths are one-line errors. The `augment` config group: options, defaults per task, and the training loss's use of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from hydra import compose, initialize_config_dir
from PIL import Image

from s18exp.augment import GREY, PairAugment
from s18exp.errors import UserError
from s18exp.paths import CONFIG_DIR
from s18exp.tasks.segmentation import SegmentationTask

GEOMETRY = dict(flip_prob=0.5, scale_min=0.5, aspect_max=4 / 3, rotate_degrees=30)
STRONG = dict(GEOMETRY, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)
# Class c is drawn in the pure colour PURE[c]: a pixel blended from two classes is never pure.
PURE = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8)


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["wandb.mode=disabled", *overrides])


def blob_masks(n: int = 6, height: int = 48, width: int = 40, seed: int = 0) -> torch.Tensor:
    """uint8 masks (N, H, W) of three classes in large blobs: a disc, a band and the rest."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    masks = torch.zeros(n, height, width, dtype=torch.uint8)
    for k in range(n):
        cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([height, width, 10.0])).tolist()
        masks[k][(y - cy) ** 2 + (x - cx) ** 2 < (r + 6) ** 2] = 1
        masks[k][(x - 0.5 * y - k).abs() < 4] = 2
    return masks


def painted(masks: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) whose pixel colours are the classes' pure colours."""
    return PURE[masks.long()].permute(0, 3, 1, 2).contiguous()


def classes_of_pure_pixels(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(is pure, class) per pixel of (N, 3, H, W) images: pure = exactly one class colour, no blend."""
    matches = (images.permute(0, 2, 3, 1)[:, :, :, None, :] == PURE).all(-1)  # N, H, W, classes
    return matches.any(-1), matches.long().argmax(-1)


# --- image and mask stay together ---------------------------------------------------------------------


def test_flip_mirrors_images_and_masks_as_torch_flip() -> None:
    masks = blob_masks()
    images = painted(masks)
    out_images, out_masks = PairAugment(flip_prob=1.0)(images, masks)
    assert torch.equal(out_images, images.flip(-1)) and torch.equal(out_masks, masks.flip(-1))


def test_flip_option_mirrors_the_samples_whose_draw_is_below_one_half() -> None:
    """augment=flip mirrors sample k when the k-th of torch.rand(N) is below 0.5, one draw per sample."""
    masks = blob_masks(n=16)
    images = painted(masks)
    torch.manual_seed(3)
    out_images, out_masks = PairAugment(flip_prob=0.5)(images, masks)
    torch.manual_seed(3)
    flipped = torch.rand(16) < 0.5
    assert 0 < int(flipped.sum()) < 16
    for k in range(16):
        expected = (images[k].flip(-1), masks[k].flip(-1)) if flipped[k] else (images[k], masks[k])
        assert torch.equal(out_images[k], expected[0]) and torch.equal(out_masks[k], expected[1]), k


@pytest.mark.parametrize("crop_size", [None, 24])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometry_moves_image_and_mask_together(seed: int, crop_size: int | None) -> None:
    """Wherever the warped image is an unblended class colour, the warped mask holds that class, in windows too."""
    masks = blob_masks(seed=seed)
    images = painted(masks)
    torch.manual_seed(seed)
    out_images, out_masks = PairAugment(**GEOMETRY, crop_size=crop_size)(images, masks)
    side = (48, 40) if crop_size is None else (crop_size, crop_size)
    assert out_images.shape == (6, 3, *side) and out_masks.shape == (6, *side)
    assert crop_size is not None or not torch.equal(out_masks, masks)  # the geometry did change the batch
    pure, decoded = classes_of_pure_pixels(out_images)
    assert pure.float().mean() > 0.8  # most pixels are checked, not only a few
    assert torch.equal(out_masks[pure].long(), decoded[pure])


def fix_draws(monkeypatch: pytest.MonkeyPatch, flips: float, uniform: list[float]) -> None:
    """torch.rand returns `flips` for the per-sample flip draw (N,) and `uniform` for each row of the (N, 9)
    draws: crop area, log aspect, angle, centre x, centre y, brightness, contrast, saturation, hue."""
    def rand(*shape: int, **kwargs: object) -> torch.Tensor:
        if len(shape) == 1:
            return torch.full(shape, flips)
        return torch.tensor(uniform).expand(*shape).clone()

    monkeypatch.setattr(torch, "rand", rand)


MIDDLE = [0.5] * 9  # no zoom change from scale_min, aspect 1, angle 0, centred, colour factors 1


def test_flip_inside_the_affine_matrix_is_torch_flip(monkeypatch: pytest.MonkeyPatch) -> None:
    masks = blob_masks()
    images = painted(masks)
    fix_draws(monkeypatch, flips=0.0, uniform=MIDDLE)  # 0.0 < flip_prob: every sample mirrored
    out_images, out_masks = PairAugment(flip_prob=0.5, rotate_degrees=10)(images, masks)
    assert torch.equal(out_masks, masks.flip(-1)) and torch.equal(out_images, images.flip(-1))


def test_zoom_and_shift_crop_the_drawn_quarter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Area 1/4 (scale_min), square, centre at the far right and top: the top-right quarter, each pixel doubled."""
    masks = blob_masks()  # 48 x 40
    fix_draws(monkeypatch, flips=1.0, uniform=[0.0, 0.5, 0.5, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    _, out_masks = PairAugment(scale_min=0.25)(painted(masks), masks)
    quarter = masks[:, :24, 20:]
    assert torch.equal(out_masks, quarter.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))


@pytest.mark.parametrize(("centre_x", "centre_y", "rows", "columns"), [(1.0, 0.0, slice(0, 32), slice(8, 40)), (0.0, 1.0, slice(16, 48), slice(0, 32)), (0.5, 0.5, slice(8, 40), slice(4, 36))])
def test_crop_size_alone_returns_the_drawn_window_pixel_for_pixel(
    monkeypatch: pytest.MonkeyPatch, centre_x: float, centre_y: float, rows: slice, columns: slice
) -> None:
    """No zoom or rotation: a 32-px window of the 48 x 40 batch, at the far top right, bottom left or the
    centre by the centre draws, is the plain slice of images and masks alike (and mirrored when drawn so)."""
    masks = blob_masks()
    images = painted(masks)
    fix_draws(monkeypatch, flips=1.0, uniform=[0.5, 0.5, 0.5, centre_x, centre_y, 0.5, 0.5, 0.5, 0.5])
    out_images, out_masks = PairAugment(crop_size=32)(images, masks)
    assert torch.equal(out_masks, masks[:, rows, columns]) and torch.equal(out_images, images[:, :, rows, columns])
    monkeypatch.undo()
    fix_draws(monkeypatch, flips=0.0, uniform=[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    _, mirrored = PairAugment(flip_prob=0.5, crop_size=32)(images, masks)
    assert torch.equal(mirrored, masks.flip(-1)[:, 8:40, 4:36])


def test_crop_after_zoom_keeps_the_zoomed_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """Area 1/4 at the top right zooms the top-right quarter to 48 x 40; a 16-px window at its top right is that
    zoomed view's top-right 16 x 16: input pixels doubled, not the quarter squeezed into 16 px."""
    masks = blob_masks()
    fix_draws(monkeypatch, flips=1.0, uniform=[0.0, 0.5, 0.5, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    _, out_masks = PairAugment(scale_min=0.25, crop_size=16)(painted(masks), masks)
    assert torch.equal(out_masks, masks[:, :8, 32:].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))


def test_crop_larger_than_the_images_is_a_one_line_user_error() -> None:
    masks = blob_masks()
    with pytest.raises(UserError, match=r"^augment.crop_size=64 is larger than the 48x40 training images; give at most 40"):
        PairAugment(crop_size=64)(painted(masks), masks)


@pytest.mark.parametrize(("draw", "quarter_turns"), [(1.0, 1), (0.0, -1)])
def test_rotation_by_the_largest_angle_is_a_quarter_turn(monkeypatch: pytest.MonkeyPatch, draw: float, quarter_turns: int) -> None:
    """rotate_degrees=90 and the extreme angle draws. The output pixel (x, y) reads the input at (cos x - sin y,
    sin x + cos y), in affine_grid's units; +90 degrees reads (-y, x): out[r, c] = in[c, S - 1 - r], which is
    torch.rot90(k=1) over (rows, columns)."""
    mask = torch.zeros(1, 33, 33, dtype=torch.uint8)
    mask[0, 2:12, 5:28] = 1  # a bar near the top, off-centre
    mask[0, 20:30, 3:9] = 2
    fix_draws(monkeypatch, flips=1.0, uniform=[0.5, 0.5, draw, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    images, rotated = PairAugment(rotate_degrees=90)(painted(mask), mask)
    assert torch.equal(rotated, torch.rot90(mask, k=quarter_turns, dims=(1, 2)))
    assert torch.equal(images, painted(rotated))


def test_masks_keep_only_their_own_class_values_under_strong_augmentation() -> None:
    """Masks of classes 0 and 2 only: bilinear resampling would make 1s at every edge; nearest never does."""
    masks = (blob_masks(n=16) > 0).to(torch.uint8) * 2
    assert set(masks.unique().tolist()) == {0, 2}
    images = torch.randint(0, 256, (16, 3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for seed in range(5):
        torch.manual_seed(seed)
        out_images, out_masks = PairAugment(**STRONG)(images, masks)
        assert out_masks.dtype == torch.uint8 and out_images.dtype == torch.uint8
        assert out_masks.shape == masks.shape and out_images.shape == images.shape
        assert set(out_masks.unique().tolist()) <= {0, 2}


# --- the draws ------------------------------------------------------------------------------------------


def test_same_global_seed_same_augmentation_and_another_seed_another() -> None:
    masks = blob_masks(n=8)
    images = painted(masks)
    augment = PairAugment(**STRONG)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        return augment(images, masks)

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])


def test_augmentation_draws_from_the_global_generator_only() -> None:
    """The state after a call is that of seed + the documented draws: N flips, then N x 9 uniforms."""
    images, masks = painted(blob_masks(n=4)), blob_masks(n=4)
    torch.manual_seed(11)
    PairAugment(**STRONG)(images, masks)
    after_call = torch.rand(3)
    torch.manual_seed(11)
    torch.rand(4), torch.rand(4, 9)
    assert torch.equal(after_call, torch.rand(3))


def test_autocast_of_the_training_step_does_not_reach_the_augmentation() -> None:
    """loop.fit calls training_loss under bf16 autocast on CPUs that support it: the result must be the fp32 one."""
    masks = blob_masks(n=4)
    images = painted(masks)
    augment = PairAugment(**STRONG)
    torch.manual_seed(8)
    expected = augment(images, masks)
    torch.manual_seed(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = augment(images, masks)
    assert torch.equal(under_autocast[0], expected[0]) and torch.equal(under_autocast[1], expected[1])


# --- colour -----------------------------------------------------------------------------------------------


def mid_range_images(n: int = 6) -> torch.Tensor:
    """float images 90..160, so that +-20% brightness, contrast and saturation, or any hue, never clip."""
    g = torch.Generator().manual_seed(4)
    return 90 + 70 * torch.rand(n, 3, 20, 24, generator=g)


def test_brightness_contrast_saturation_match_torchvision() -> None:
    images = mid_range_images()
    masks = torch.zeros(len(images), 20, 24, dtype=torch.uint8)
    augment = PairAugment(brightness=0.2, contrast=0.2, saturation=0.2)
    torch.manual_seed(9)
    out, out_masks = augment(images, masks)
    torch.manual_seed(9)
    u = torch.rand(len(images), 9)[:, 5:]  # no flip draws (flip_prob 0); columns 5.. are the colour draws
    for k, image in enumerate(images / 255):
        b, c, s = (1 + 0.2 * (2 * u[k, :3] - 1)).tolist()
        expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(image, b), c), s)
        # 0.1 of a level: torchvision's grey weighs red 0.2989, ours 0.299
        assert (out[k] / 255 - expected).abs().max() < 0.1 / 255, k
    assert torch.equal(out_masks, masks)


def test_hue_turns_each_images_chroma_by_its_drawn_angle_and_keeps_its_grey() -> None:
    """In YIQ, hue=0.5 turns the (I, Q) plane by pi * (2u - 1) for the image's draw u, and leaves Y alone."""
    images = mid_range_images()
    torch.manual_seed(1)
    out, _ = PairAugment(hue=0.5)(images, torch.zeros(len(images), 20, 24, dtype=torch.uint8))
    torch.manual_seed(1)
    expected_turn = math.pi * (2 * torch.rand(len(images), 9)[:, 8] - 1)
    assert expected_turn.abs().max() > 0.5  # a real turn, not nothing
    grey = torch.tensor(GREY).view(1, 3, 1, 1)
    assert torch.allclose((out * grey).sum(1), (images * grey).sum(1), atol=1e-3)
    to_iq = torch.tensor([[0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    before, after = (torch.einsum("ij,njhw->nihw", to_iq, x) for x in (images, out))
    assert torch.allclose(before.norm(dim=1), after.norm(dim=1), atol=1e-2)
    coloured = before.norm(dim=1) > 5  # the angle of a nearly grey pixel is noise
    turned = torch.atan2(after[:, 1], after[:, 0]) - torch.atan2(before[:, 1], before[:, 0])
    miss = (turned - expected_turn.view(-1, 1, 1)).cos()  # 1 where the turns agree, modulo a full turn
    assert miss[coloured].min() > math.cos(0.01)


def test_colour_leaves_masks_and_clamps_images() -> None:
    images = torch.full((4, 3, 8, 8), 250, dtype=torch.uint8)
    images[:, :, :4] = 5
    masks = blob_masks(n=4, height=8, width=8)
    torch.manual_seed(0)
    out, out_masks = PairAugment(brightness=1.0, contrast=1.0, saturation=1.0, hue=0.5)(images, masks)
    assert torch.equal(out_masks, masks)
    assert out.dtype == torch.uint8 and not torch.equal(out, images)


# --- configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("scale_min", 0), ("scale_min", 1.5), ("aspect_max", 0.5), ("rotate_degrees", -1), ("hue", 0.7),
     ("brightness", 1.5), ("flip_prob", 2)],
)
def test_bad_strength_is_a_one_line_user_error_naming_the_key(key: str, value: float) -> None:
    cfg = compose_config(f"augment.{key}={value}")
    with pytest.raises(UserError) as info:
        SegmentationTask(cfg)
    message = str(info.value)
    assert message.startswith(f"augment.{key}={value}") and "\n" not in message


def test_augment_group_defaults_to_strong_for_the_unet_and_is_absent_for_the_vae() -> None:
    unet = compose_config()
    assert unet.augment.name == "strong" and unet.augment.scale_min < 1 and unet.augment.rotate_degrees > 0
    assert "augment" not in compose_config("task=vae")
    tuned = compose_config("augment.scale_min=0.5", "augment.rotate_degrees=15")
    augmenter = SegmentationTask(tuned).augmenter
    assert (augmenter.scale_min, augmenter.rotate_degrees) == (0.5, 15.0)


@pytest.mark.parametrize(
    ("option", "geometric", "colour", "flip"), [("none", False, False, 0.0), ("flip", False, False, 0.5), ("strong", True, True, 0.5)]
)
def test_each_option_builds_its_augmentation(option: str, geometric: bool, colour: bool, flip: float) -> None:
    augmenter = SegmentationTask(compose_config(f"augment={option}")).augmenter
    assert (augmenter.geometric, augmenter.colour, augmenter.flip_prob) == (geometric, colour, flip)


def test_training_loss_on_windows_is_the_criterion_on_the_drawn_window() -> None:
    """augment.crop_size=16 on 32-px images: the loss is the criterion on the model's 16 x 16 logits of the window
    that the same draws cut (windows themselves: the pixel-for-pixel tests above), not the whole image's loss."""
    tiny = ("model.width=4", "model.depth=2", "data.image_size=32", "augment=flip", "augment.flip_prob=0.0")
    task = SegmentationTask(compose_config(*tiny, "augment.crop_size=16"))
    torch.manual_seed(0)
    model = task.build_model().eval()
    masks = blob_masks(n=4, height=32, width=32)
    images = painted(masks)
    with torch.no_grad():
        torch.manual_seed(5)
        loss = task.training_loss(model, images, masks)
        torch.manual_seed(5)
        window_images, window_masks = task.augmenter(images, masks)
        assert window_masks.shape == (4, 16, 16)
        assert torch.equal(loss, task.criterion(model(task.normalize(window_images)), window_masks))
        assert not torch.equal(loss, task.criterion(model(task.normalize(images)), masks))


def test_training_loss_sees_the_augmented_batch() -> None:
    """With augment=none the loss of a batch is the plain one; with strong it is another; the model is the same."""
    tiny = ("model.width=4", "model.depth=2", "data.image_size=32")
    plain = SegmentationTask(compose_config(*tiny, "augment=none"))
    strong = SegmentationTask(compose_config(*tiny))
    torch.manual_seed(0)
    model = strong.build_model().eval()
    masks = blob_masks(n=4, height=32, width=32)
    images = painted(masks)
    with torch.no_grad():
        expected = plain.criterion(model(plain.normalize(images)), masks)
        assert torch.equal(plain.training_loss(model, images, masks), expected)
        torch.manual_seed(1)
        assert not torch.equal(strong.training_loss(model, images, masks), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_same_draws_give_the_same_augmentation() -> None:
    masks = blob_masks(n=8)
    images = painted(masks)
    augment = PairAugment(**STRONG)
    torch.manual_seed(2)
    cpu_images, cpu_masks = augment(images, masks)
    torch.manual_seed(2)
    gpu_images, gpu_masks = augment(images.cuda(), masks.cuda())
    assert gpu_images.device.type == "cuda" and gpu_masks.device.type == "cuda"
    assert (gpu_images.cpu().int() - cpu_images.int()).abs().max() <= 2
    assert (gpu_masks.cpu() == cpu_masks).float().mean() > 0.999


# --- views at a smaller side (trainer.size_schedule) -------------------------------------------------------


def pil_resized(images: torch.Tensor, masks: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch resized by PIL, as the data cache resizes: images BILINEAR (antialiased when shrinking), masks
    NEAREST; an independent resize to compare with."""
    def resize(plane: torch.Tensor, method: Image.Resampling) -> torch.Tensor:
        return torch.from_numpy(np.array(Image.fromarray(plane.numpy()).resize((side, side), method)))

    out_images = torch.stack([torch.stack([resize(plane, Image.BILINEAR) for plane in image]) for image in images])
    return out_images, torch.stack([resize(mask, Image.NEAREST) for mask in masks])


def noise_batch(n: int = 4, side: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 noise images, whose every pixel differs from its neighbours (any aliasing shows), and noise masks."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g), torch.randint(0, 3, (n, side, side), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize(
    ("option", "side"), [(dict(), 32), (dict(), 24), (dict(), 16), (dict(flip_prob=0.5), 32), (dict(flip_prob=0.5), 16)]
)
def test_view_at_a_smaller_side_is_the_full_view_resized_as_pil_resizes(side: int, option: dict) -> None:
    """augment=none and flip: the view at `side` is the full-size view resized, image within one level of PIL's
    antialiased bilinear resize (plain bilinear would alias noise by tens of levels), mask exactly PIL's NEAREST.
    Not flip at exactly half the side: there each output pixel's centre lies between two input pixels, nearest
    takes one of them, and a mirror moves that one by a pixel (masks of 2 x 2 blocks: the geometric test below)."""
    images, masks = noise_batch(n=8)
    torch.manual_seed(4)
    full_images, full_masks = PairAugment(**option)(images, masks)
    torch.manual_seed(4)
    small_images, small_masks = PairAugment(**option)(images, masks, side)
    assert small_images.dtype == torch.uint8 and small_images.shape == (8, 3, side, side)
    expected_images, expected_masks = pil_resized(full_images, full_masks, side)
    assert (small_images.int() - expected_images.int()).abs().max() <= 1
    assert torch.equal(small_masks, expected_masks)
    if option:
        assert not torch.equal(full_masks, masks)  # some samples were mirrored, by the same draws at both sides


def smooth_images(n: int, side: int) -> torch.Tensor:
    """uint8 images of slow sine waves, different per channel: resizing them loses nothing that matters."""
    y, x = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    waves = torch.stack([torch.sin(2 * math.pi * (x + 0.5 * y)), torch.cos(2 * math.pi * (0.7 * x - y)), torch.sin(3 * math.pi * y)])
    return (128 + 60 * waves).round().to(torch.uint8).expand(n, 3, side, side).contiguous()


@pytest.mark.parametrize(
    ("options", "flips", "uniform"),
    [
        (dict(flip_prob=0.5, rotate_degrees=10), 0.0, MIDDLE),  # the mirror inside the affine matrix
        (dict(rotate_degrees=90), 1.0, [0.5, 0.5, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]),  # a quarter turn
        (dict(scale_min=0.25), 1.0, [0.0, 0.5, 0.5, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5]),  # the top-right quarter zoomed
        (dict(flip_prob=0.5, scale_min=0.25, rotate_degrees=90), 0.0, [0.0, 0.5, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5]),
    ],
)
def test_geometric_view_at_half_size_is_the_full_view_resized(
    monkeypatch: pytest.MonkeyPatch, options: dict, flips: float, uniform: list[float]
) -> None:
    """Draws that map the pixel grid onto itself, on masks of 2 x 2 blocks: the half-size view's mask is exactly the
    full-size view's mask resized nearest, and its image is the full view's resized, within a few levels."""
    g = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 3, (4, 24, 24), dtype=torch.uint8, generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    images = smooth_images(4, 48)
    fix_draws(monkeypatch, flips, uniform)
    full_images, full_masks = PairAugment(**options)(images, masks)
    small_images, small_masks = PairAugment(**options)(images, masks, 24)
    assert not torch.equal(full_masks, masks)
    expected_images, expected_masks = pil_resized(full_images, full_masks, 24)
    assert torch.equal(small_masks, expected_masks)
    difference = (small_images.float() - expected_images.float()).abs()
    assert difference.mean() < 1.5 and difference.max() <= 8


def near_a_class_edge(masks: torch.Tensor, reach: int) -> torch.Tensor:
    """Per pixel of (N, H, W) masks: whether a pixel of another class lies within `reach` pixels (a square)."""
    padded = F.pad(masks[:, None].float(), (reach,) * 4, mode="replicate")
    highest = F.max_pool2d(padded, 2 * reach + 1, stride=1)
    lowest = -F.max_pool2d(-padded, 2 * reach + 1, stride=1)
    return (highest != lowest)[:, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_geometry_at_half_size_agrees_with_the_full_view_resized(seed: int) -> None:
    """Random zoom, aspect, rotation and mirror, the same draws at both sides: the half-size masks agree with the
    full-size view's masks resized nearest on at least 95% of the pixels, and everywhere further than 2 pixels from
    a class edge, but on the view's outermost pixels, where a rotation reads the reflection of a thin band at the
    source's corner; images agree to about a level on average."""
    masks = blob_masks(n=8, height=64, width=64, seed=seed)
    images = smooth_images(8, 64)
    torch.manual_seed(seed)
    full_images, full_masks = PairAugment(**GEOMETRY)(images, masks)
    torch.manual_seed(seed)
    small_images, small_masks = PairAugment(**GEOMETRY)(images, masks, 32)
    expected_images, expected_masks = pil_resized(full_images, full_masks, 32)
    differ = small_masks != expected_masks
    assert differ.float().mean() < 0.05
    assert not (differ & ~near_a_class_edge(expected_masks, 2))[:, 1:-1, 1:-1].any()
    assert (small_images.float() - expected_images.float()).abs().mean() < 1.5


def test_masks_at_a_smaller_side_keep_only_their_own_class_values() -> None:
    masks = (blob_masks(n=16) > 0).to(torch.uint8) * 2  # classes 0 and 2 only, 48 x 40
    images = torch.randint(0, 256, (16, 3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for option, side in ((dict(), 24), (STRONG, 24), (STRONG, 32)):
        torch.manual_seed(side)
        out_images, out_masks = PairAugment(**option)(images, masks, side)
        assert out_masks.shape == (16, side, side) and out_images.shape == (16, 3, side, side)
        assert set(out_masks.unique().tolist()) == {0, 2}


def test_a_smaller_side_draws_what_the_full_side_draws() -> None:
    """The resize draws nothing: the generator's state after a call is the same at any side."""
    images, masks = painted(blob_masks(n=4)), blob_masks(n=4)
    for option in (dict(flip_prob=0.5), STRONG):
        torch.manual_seed(2)
        PairAugment(**option)(images, masks)
        after_full = torch.rand(3)
        torch.manual_seed(2)
        PairAugment(**option)(images, masks, 24)
        assert torch.equal(after_full, torch.rand(3))


def test_training_loss_at_a_side_is_the_criterion_on_the_views_of_that_side() -> None:
    tiny = ("model.width=4", "model.depth=2", "data.image_size=32")
    task = SegmentationTask(compose_config(*tiny))
    torch.manual_seed(0)
    model = task.build_model().eval()
    masks = blob_masks(n=4, height=32, width=32)
    images = painted(masks)
    with torch.no_grad():
        torch.manual_seed(5)
        loss = task.training_loss(model, images, masks, size=16)
        torch.manual_seed(5)
        small_images, small_masks = task.augmenter(images, masks, 16)
        assert small_masks.shape == (4, 16, 16)
        assert torch.equal(loss, task.criterion(model(task.normalize(small_images)), small_masks))
