"""The panel's readers: architectures that share nothing with the judge and the guides (checked on the built
networks), their augmentation, their training on a tiny data set, their settings' checks and their cache."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from s18exp.errors import UserError
from s18exp.models.guides import GUIDE_ARCHITECTURES
from s18exp.readers import panel as panel_module
from s18exp.readers.augment import augmented, gaussian_blurred, shifted
from s18exp.readers.networks import ARCHITECTURES, build_reader, patch_side
from s18exp.readers.panel import checked_readers, panel_for
from s18exp.runtime import Runtime
from vae_data import compose_vae, image_folder, one_thread, tiny_overrides  # noqa: F401
from s18exp.tasks.vae import VAETask

CPU = Runtime(torch.device("cpu"), "fp32", channels_last=False)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.Hardswish)


def layers(net: nn.Module) -> list[tuple]:
    """The network's leaf layers in order, each as (kind, kernel, stride, dilation, groups) where it has them."""
    found = []
    for module in net.modules():
        if list(module.children()):
            continue
        found.append((type(module).__name__, *(getattr(module, key, None) for key in ("kernel_size", "stride", "dilation", "groups"))))
    return found


def receptive_growth(net: nn.Module) -> set[tuple]:
    """How the network widens what each feature sees: strided convolutions, dilated convolutions, pooling
    windows (global pooling at the end is left out: every classifier has one)."""
    growth = set()
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and max(module.stride) > 1:
            growth.add(("strided conv", module.kernel_size))
        if isinstance(module, nn.Conv2d) and max(module.dilation) > 1:
            growth.add(("dilated conv",))
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            growth.add((type(module).__name__,))
    return growth


def activations(net: nn.Module) -> set[type]:
    return {type(m) for m in net.modules() if isinstance(m, ACTIVATIONS)}


def convolutions(net: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in net.modules())


@pytest.mark.parametrize("channels", [1, 3])
def test_no_reader_shares_an_architecture_with_the_judge_or_a_guide(channels: int):
    """Checked on the built networks, not by name: each reader differs from each guide (the judge's architecture
    among them) in its sequence of layers, in how it widens what a feature sees (or has no convolution at all,
    where every guide is convolutional) and in its non-linearity; and it is built from no module of the VAE's code."""
    readers = {arch: build_reader(arch, channels, 10, 8, 32) for arch in ARCHITECTURES}
    guides = {arch: make(10, channels, 32, 8) for arch, make in GUIDE_ARCHITECTURES.items()}
    assert all(convolutions(guide) > 0 and receptive_growth(guide) for guide in guides.values())
    for name, reader in readers.items():
        assert all(type(m).__module__.startswith(("torch.", "s18exp.readers.")) for m in reader.modules()), name
        assert receptive_growth(reader) or convolutions(reader) == 0, name
        for guide_name, guide in guides.items():
            where = f"{name} vs {guide_name}"
            assert layers(reader) != layers(guide), where
            assert not receptive_growth(reader) & receptive_growth(guide), where
            assert activations(reader) and not activations(reader) & activations(guide), where
    # and the readers differ from each other in the same ways
    for a, b in [(a, b) for a in readers for b in readers if a < b]:
        assert layers(readers[a]) != layers(readers[b])
        assert receptive_growth(readers[a]) != receptive_growth(readers[b])


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("channels,size", [(1, 32), (3, 32), (3, 16), (1, 28)])
def test_readers_give_logits_for_any_image_size(arch: str, channels: int, size: int):
    reader = build_reader(arch, channels, 7, 8, size).eval()
    assert reader(torch.rand(2, channels, size, size)).shape == (2, 7)


def test_the_mixer_cuts_at_least_eight_patches_a_side():
    assert [patch_side(s) for s in (32, 16, 64, 28, 24, 7)] == [4, 2, 8, 2, 3, 1]
    with pytest.raises(UserError, match="arch"):
        build_reader("vit", 3, 10, 8, 32)


SETTINGS = {"shift": 2, "flip": True, "blur": 2.0, "blur_share": 0.5, "fade": 0.5, "noise": 0.1}
NOTHING = {"shift": 0, "flip": False, "blur": 0.0, "blur_share": 0.0, "fade": 0.0, "noise": 0.0}


def test_augmentation_off_is_the_identity_and_on_draws_from_its_own_generator():
    x = torch.rand(16, 3, 8, 8)
    assert torch.equal(augmented(x, NOTHING, torch.Generator().manual_seed(0)), x)
    first = augmented(x, SETTINGS, torch.Generator().manual_seed(0))
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(augmented(x, SETTINGS, torch.Generator().manual_seed(0)), first)
    assert not torch.equal(first, x) and first.min() >= 0 and first.max() <= 1


def test_shift_moves_whole_pixels_with_edges_repeated():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    out = shifted(x, 2, torch.Generator().manual_seed(3))
    padded = nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for i in range(2):  # each image is one 6x6 window of its replicate-padded self
        windows = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_mirrors_rgb_only_and_blur_keeps_the_mean_and_lowers_the_spread():
    grey = torch.rand(64, 1, 8, 8)
    settings = {**NOTHING, "flip": True}
    assert torch.equal(augmented(grey, settings, torch.Generator().manual_seed(0)), grey)
    rgb = torch.rand(64, 3, 8, 8)
    out = augmented(rgb, settings, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(out[i], rgb[i].flip(2)) for i in range(64)]
    assert all(m or torch.equal(out[i], rgb[i]) for i, m in enumerate(mirrored)) and 16 < sum(mirrored) < 48
    blurred = gaussian_blurred(rgb, torch.full((64,), 1.5))
    assert torch.allclose(blurred.mean(), rgb.mean(), atol=0.02) and blurred.std() < 0.6 * rgb.std()
    faded = augmented(rgb, {**NOTHING, "fade": 1.0}, torch.Generator().manual_seed(0))
    assert torch.allclose(faded.mean(dim=(1, 2, 3)), rgb.mean(dim=(1, 2, 3)), atol=1e-6)
    assert (faded.std(dim=(1, 2, 3)) <= rgb.std(dim=(1, 2, 3)) + 1e-6).all()


def reader_settings(**changes) -> dict:
    base = {"arch": "resnet", "width": 4, "epochs": 1, "batch_size": 8, "lr": 3e-3, "seed": 1, "augment": dict(NOTHING)}
    return {**base, **changes}


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"arch": "vit"}, "arch='vit'"),
        ({"width": 0}, "width=0"),
        ({"epochs": 1.5}, "epochs=1.5"),
        ({"lr": 0}, "lr=0"),
        ({"seed": -1}, "seed=-1"),
        ({"augment": {**NOTHING, "fade": 2}}, "fade=2"),
        ({"augment": {**NOTHING, "flip": "yes"}}, "flip='yes'"),
        ({"augment": {"shift": 1}}, "augment must set exactly"),
        ({"colour": 1}, "must set exactly"),
    ],
)
def test_bad_reader_settings_are_one_user_error_naming_the_value(change: dict, fragment: str):
    with pytest.raises(UserError, match="task.panel.readers.r") as info:
        checked_readers({"r": reader_settings(**change)})
    assert fragment in str(info.value)


def test_reader_names_must_be_plain_and_not_the_judge():
    for name in ("judge", "Bad Name", "../x", ""):
        with pytest.raises(UserError, match="name"):
            checked_readers({name: reader_settings()})
    with pytest.raises(UserError, match="at least one reader"):
        checked_readers({})


def test_each_reader_learns_the_tiny_classes(image_folder: Path, tmp_path: Path, one_thread):
    """Three classes of coloured shapes: each architecture reads the test images right after a few epochs, so
    its training loop learns."""
    task = VAETask(compose_vae(tiny_overrides(image_folder, tmp_path)))
    data = task.build_data()
    readers = {arch: reader_settings(arch=arch, width=8, epochs=6, augment=dict(SETTINGS)) for arch in ARCHITECTURES}
    panel = panel_for(data.train, data.test, "tiny", task.class_names, readers, CPU, None, "off")
    for reader in panel:
        assert reader.test_acc >= 0.9, (reader.name, reader.test_acc)
        assert reader.test_images == len(data.test) and reader.train_seconds > 0


def test_readers_are_trained_once_then_read_from_the_cache(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread):
    task = VAETask(compose_vae(tiny_overrides(image_folder, tmp_path)))
    data = task.build_data()
    trained: list[str] = []
    real_training = panel_module.train_reader

    def counting(name, *args, **kwargs):
        trained.append(name)
        return real_training(name, *args, **kwargs)

    monkeypatch.setattr(panel_module, "train_reader", counting)
    readers = {"a": reader_settings(arch="resnet"), "b": reader_settings(arch="mixer", seed=2)}
    cache = tmp_path / "cache"
    rng = torch.random.get_rng_state()
    first = panel_for(data.train, data.test, "tiny", task.class_names, readers, CPU, cache, "off")
    assert trained == ["a", "b"] and len(list((cache / "readers").glob("*.pt"))) == 2
    assert torch.equal(torch.random.get_rng_state(), rng)  # the run's random state is left as it was
    second = panel_for(data.train, data.test, "tiny", task.class_names, readers, CPU, cache, "off")
    assert trained == ["a", "b"]  # nothing trained again
    for before, after in zip(first, second):
        assert (before.test_acc, before.train_seconds) == (after.test_acc, after.train_seconds)
        assert all(torch.equal(v, after.network.state_dict()[k]) for k, v in before.network.state_dict().items())
    # another seed for one reader, or other training images, trains that reader (or all) anew
    changed = copy.deepcopy(readers)
    changed["b"]["seed"] = 3
    panel_for(data.train, data.test, "tiny", task.class_names, changed, CPU, cache, "off")
    assert trained == ["a", "b", "b"]
    panel_for(data.train.subset(list(range(20))), data.test, "tiny", task.class_names, readers, CPU, cache, "off")
    assert trained == ["a", "b", "b", "a", "b"]
    # so does a change of the recipe that every reader's training shares
    monkeypatch.setitem(panel_module.RECIPE, "label_smoothing", 0.2)
    panel_for(data.train, data.test, "tiny", task.class_names, readers, CPU, cache, "off")
    assert trained == ["a", "b", "b", "a", "b", "a", "b"]


def test_the_default_panel_is_three_architectures_each_its_own_seed_and_augmentation():
    for data in ("mnist", "cifar10"):
        readers = checked_readers(dict(VAETask(compose_vae([f"data={data}"])).panel_readers))
        assert sorted(s["arch"] for s in readers.values()) == sorted(ARCHITECTURES)
        assert len({s["seed"] for s in readers.values()}) == len(readers)
        assert len({tuple(sorted(s["augment"].items())) for s in readers.values()}) == len(readers)
