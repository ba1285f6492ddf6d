"""The UNet and its interchangeable down/up blocks."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from s18exp.blocks import (
    DoubleConv,
    InterpolateUpsample,
    MaxPoolDownsample,
    ResidualDoubleConv,
    StridedConvDownsample,
    TransposeUpsample,
)
from s18exp.models.unet import UNet
from s18exp.paths import CONFIG_DIR

ENCODERS = ["maxpool", "strided"]
DECODERS = ["transpose", "upsample"]


def block_factory(group: str, option: str):
    """The partial that the config group option instantiates to."""
    node = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
    return instantiate(node.downsample if group == "encoder" else node.upsample)


def build_unet(encoder: str, decoder: str, depth: int = 2, width: int = 4, num_classes: int = 3) -> UNet:
    torch.manual_seed(0)
    return UNet(
        num_classes=num_classes,
        downsample=block_factory("encoder", encoder),
        upsample=block_factory("decoder", decoder),
        in_channels=3,
        width=width,
        depth=depth,
        block="double",
    )


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 64), (32, 64)])
def test_unet_output_shape(encoder: str, decoder: str, depth: int, height: int, width: int) -> None:
    model = build_unet(encoder, decoder, depth=depth, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    assert out.shape == (2, 3, height, width)
    assert out.dtype == torch.float32


def test_unet_levels_double_the_channels() -> None:
    model = build_unet("maxpool", "transpose", depth=3, width=4)
    assert model.stem[0].out_channels == 4
    assert [down[1][0].out_channels for down in model.downs] == [8, 16, 32]
    assert [up.conv[-3].out_channels for up in model.ups] == [16, 8, 4]
    assert model.head.in_channels == 4 and model.head.out_channels == 3


def test_unet_takes_num_classes_and_in_channels() -> None:
    model = UNet(5, MaxPoolDownsample, TransposeUpsample, in_channels=1, width=4, depth=2, block="double")
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 5, 16, 16)


def test_residual_block_adds_its_input_or_a_projection_of_it() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 12)
    same = ResidualDoubleConv(8, 8).eval()
    assert isinstance(same.shortcut, nn.Identity)
    with torch.no_grad():
        assert torch.allclose(same(x), torch.relu(same.body(x) + x))
        wider = ResidualDoubleConv(8, 16).eval()
        conv, norm = wider.shortcut
        projected = norm(nn.functional.conv2d(x, conv.weight))
        assert torch.allclose(wider(x), torch.relu(wider.body(x) + projected))
    assert conv.kernel_size == (1, 1) and wider(x).shape == (2, 16, 12, 12)
    # Without the shortcut, the body is DoubleConv's convolutions and norms, layer for layer.
    plain = DoubleConv(8, 16)
    assert [type(m) for m in wider.body] == [type(m) for m in plain][:-1]


@pytest.mark.parametrize(("block", "kind"), [("double", DoubleConv), ("residual", ResidualDoubleConv)])
def test_unet_block_option_builds_every_level_from_that_block(block: str, kind: type) -> None:
    model = UNet(3, MaxPoolDownsample, TransposeUpsample, in_channels=3, width=4, depth=3, block=block)
    levels = [model.stem, *(down[1] for down in model.downs), *(up.conv for up in model.ups)]
    assert all(type(level) is kind for level in levels)
    assert sum(isinstance(m, (DoubleConv, ResidualDoubleConv)) for m in model.modules()) == 1 + 3 + 3
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def param_shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def differing_keys(a: nn.Module, b: nn.Module) -> set[str]:
    sa, sb = param_shapes(a), param_shapes(b)
    return {k for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k)}


def test_encoders_differ_only_in_the_downsample_block() -> None:
    diff = differing_keys(build_unet("maxpool", "transpose"), build_unet("strided", "transpose"))
    assert diff, "the two encoders should differ somewhere"
    # Down is Sequential(downsample, DoubleConv): the downsample is child 0 of each `downs` entry.
    assert all(k.startswith(("downs.0.0.", "downs.1.0.")) for k in diff), sorted(diff)


def test_decoders_differ_only_in_the_upsample_block() -> None:
    diff = differing_keys(build_unet("maxpool", "transpose"), build_unet("maxpool", "upsample"))
    assert diff
    assert all(k.startswith(("ups.0.upsample.", "ups.1.upsample.")) for k in diff), sorted(diff)


def test_maxpool_downsample_has_no_parameters_and_halves() -> None:
    block = block_factory("encoder", "maxpool")(8)
    assert isinstance(block, MaxPoolDownsample)
    assert sum(p.numel() for p in block.parameters()) == 0
    x = torch.randn(1, 8, 6, 10)
    assert torch.equal(block(x), nn.functional.max_pool2d(x, 2))


def test_strided_downsample_is_a_stride_2_conv_and_halves() -> None:
    block = block_factory("encoder", "strided")(8)
    assert isinstance(block, StridedConvDownsample)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1
    assert convs[0].stride == (2, 2) and convs[0].in_channels == convs[0].out_channels == 8
    assert block(torch.randn(1, 8, 6, 10)).shape == (1, 8, 3, 5)


def test_transpose_upsample_is_a_conv_transpose_and_doubles() -> None:
    block = block_factory("decoder", "transpose")(16, 8)
    assert isinstance(block, TransposeUpsample) and isinstance(block, nn.ConvTranspose2d)
    assert block.stride == (2, 2) and block.kernel_size == (2, 2)
    assert block(torch.randn(1, 16, 3, 5)).shape == (1, 8, 6, 10)


def test_interpolate_upsample_is_upsample_then_conv_and_doubles() -> None:
    block = block_factory("decoder", "upsample")(16, 8)
    assert isinstance(block, InterpolateUpsample)
    upsample, conv = list(block.children())
    assert isinstance(upsample, nn.Upsample) and upsample.scale_factor == 2 and upsample.mode == "bilinear"
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (16, 8)
    x = torch.randn(1, 16, 3, 5)
    expected = conv(nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    assert torch.allclose(block(x), expected)


@pytest.mark.parametrize(
    ("group", "option", "cls"),
    [
        ("encoder", "maxpool", MaxPoolDownsample),
        ("encoder", "strided", StridedConvDownsample),
        ("decoder", "transpose", TransposeUpsample),
        ("decoder", "upsample", InterpolateUpsample),
    ],
)
def test_config_instantiates_a_partial_of_the_block(group: str, option: str, cls: type) -> None:
    factory = block_factory(group, option)
    assert isinstance(factory, partial) and factory.func is cls


def test_unet_uses_its_skip_connections() -> None:
    """Shifting only the skip that the last decoder step receives changes the output."""
    model = build_unet("maxpool", "transpose").eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        base = model(x)
        hook = model.ups[-1].register_forward_pre_hook(lambda module, args: (args[0], args[1] + 1.0))
        shifted = model(x)
        hook.remove()
        again = model(x)
    assert not torch.allclose(base, shifted)
    assert torch.equal(base, again)
