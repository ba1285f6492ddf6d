"""The guides' options: random changes of the drawn images (each one against a calculation by hand, each letting
the gradient through), the dilated guide, and how the VAE task builds them from task.guides and
task.guide_augment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s18exp.errors import UserError
from s18exp.models.guides import DilatedGuide, DrawnAugment, cutout_mask, translated
from s18exp.tasks.vae import VAETask
from vae_data import compose_vae, image_folder, one_thread, tiny_overrides  # noqa: F401

ALL_ON = {"translation": 0.125, "cutout": 0.25, "brightness": 0.2, "saturation": 0.5, "contrast": 0.5, "noise": 0.05}


def test_all_strengths_zero_is_the_identity():
    augment = DrawnAugment()
    x = torch.rand(4, 3, 8, 8)
    assert not augment.active and torch.equal(augment(x), x)
    assert DrawnAugment(noise=0.1).active


def test_translation_moves_whole_pixels_and_fills_zeros():
    x = torch.arange(1, 1 + 3 * 1 * 8 * 8, dtype=torch.float32).view(3, 1, 8, 8)
    torch.manual_seed(0)
    out = translated(x, 0.25)  # up to 2 px each way
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(3):  # each output is one 8x8 window of its zero-padded input
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows), i
    torch.manual_seed(1)
    moved = translated(torch.ones(64, 1, 8, 8), 0.25)
    assert (moved.sum(dim=(1, 2, 3)) < 64).float().mean() > 0.5  # most images moved, zeros came in


def test_cutout_zeroes_one_square_of_the_given_side():
    torch.manual_seed(0)
    mask = cutout_mask(torch.rand(16, 3, 8, 8), 0.25)
    assert mask.shape == (16, 1, 8, 8)
    for m in mask[:, 0]:
        rows, cols = torch.nonzero(m == 0, as_tuple=True)
        assert len(rows) == 4 and rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1  # one 2x2 square


def test_colour_changes_keep_what_they_should():
    x = torch.rand(32, 3, 8, 8)
    torch.manual_seed(0)
    brighter = DrawnAugment(brightness=0.2)(x)
    offset = (brighter - x).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-6) and offset.abs().max() <= 0.2 + 1e-6
    torch.manual_seed(0)
    contrasted = DrawnAugment(contrast=0.5)(x)
    assert torch.allclose(contrasted.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-5)
    ratio = contrasted.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4 and ratio.std() > 0.05
    torch.manual_seed(0)
    saturated = DrawnAugment(saturation=0.5)(x)
    assert torch.allclose(saturated.mean(dim=1), x.mean(dim=1), atol=1e-5)  # each pixel's grey stays
    grey = torch.rand(4, 1, 8, 8)
    assert torch.equal(DrawnAugment(saturation=0.5)(grey), grey)  # no colour to scale
    torch.manual_seed(0)
    noisy = DrawnAugment(noise=0.05)(torch.full((64, 3, 16, 16), 0.5))
    assert abs((noisy - 0.5).std().item() - 0.05) < 0.005


@pytest.mark.parametrize("change", list(ALL_ON))
def test_every_change_lets_the_gradient_through(change: str):
    x = torch.rand(8, 3, 16, 16, requires_grad=True)
    torch.manual_seed(0)
    out = DrawnAugment(**{change: ALL_ON[change]})(x)
    assert not torch.equal(out, x)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()
    blocked = (x.grad == 0).all(dim=1).flatten(1).sum(dim=1)  # pixels that get no gradient, per image
    if change == "cutout":
        assert (blocked == 16).all()  # the 4x4 square cut out, and nothing else
    elif change == "translation":
        assert (blocked < 16 * 16).all() and (blocked > 0).any()  # what was shifted out
    else:
        assert (blocked == 0).all()


@pytest.mark.parametrize("bad", ["translation", "noise"])
def test_strengths_outside_zero_to_one_are_user_errors(bad: str):
    with pytest.raises(UserError, match=f"task.guide_augment.{bad}=2"):
        DrawnAugment(**{bad: 2})


def test_dilated_guide_reads_at_full_resolution():
    guide = DilatedGuide(10, 3, 8)
    assert guide(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    assert [m.dilation for m in guide.modules() if isinstance(m, torch.nn.Conv2d)] == [(1, 1), (2, 2), (4, 4), (8, 8)]


def test_the_task_builds_the_configured_guides_and_augmentation(image_folder: Path, tmp_path: Path, one_thread):
    base = [*tiny_overrides(image_folder, tmp_path), "model.guide_width=4", "task.guide_weight=5"]
    plain = VAETask(compose_vae([*base, "task.guides=[judge]", *(f"task.guide_augment.{k}=0" for k in ALL_ON)])).build_model()
    assert list(plain.guides) == ["judge"] and isinstance(plain.drawn_augment, torch.nn.Identity)
    overrides = [*base, "task.guides=[judge,dilated]", *(f"task.guide_augment.{k}={v}" for k, v in ALL_ON.items())]
    task = VAETask(compose_vae(overrides))
    model = task.build_model()
    assert list(model.guides) == ["judge", "dilated"]
    assert isinstance(model.drawn_augment, DrawnAugment) and model.drawn_augment.strengths == ALL_ON
    # one training step: the loss is finite, and both guides learn from the real images
    data = task.build_data()
    model.train()
    loss = task.training_loss(model, data.train.images[:6], data.train.targets[:6])
    loss.backward()
    assert torch.isfinite(loss)
    for guide in model.guides.values():
        assert sum(p.grad.abs().sum() for p in guide.parameters()) > 0
    with pytest.raises(UserError, match="task.guides="):
        VAETask(compose_vae([*base, "task.guides=[resnet]"])).build_model()
    with pytest.raises(UserError, match="task.guide_augment.cutout=-1"):
        VAETask(compose_vae([*base, "task.guide_augment.cutout=-1"]))
