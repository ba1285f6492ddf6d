"""The model summary (s18exp/model_summary.py): parameter totals, output shapes, FLOPs, and the command."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import DictConfig
from torch import nn

from s18exp.paths import CONFIG_DIR
from s18exp.model_summary import count_flops, example_input, layers, main, totals


def composed(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def unet(*overrides: str) -> tuple[DictConfig, object, nn.Module]:
    cfg = composed("model.width=4", "model.depth=2", "data.image_size=32", *overrides)
    task = get_class(cfg.task._target_)(cfg)
    return cfg, task, task.build_model()


@pytest.mark.parametrize("experiment", ["mp_tr_bce", "strconv_ups_dice"])
def test_parameter_totals(experiment: str) -> None:
    cfg, task, model = unet(f"experiment={experiment}")
    model.head.weight.requires_grad_(False)
    rows, total = layers(model, example_input(cfg, task, model))
    assert total.params == sum(p.numel() for p in model.parameters())
    assert sum(row.params for row in rows) == total.params  # each parameter listed once, with its module
    assert total.trainable == total.params - model.head.weight.numel()
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert total.size_mb == pytest.approx(weights / 2**20)


def test_output_shapes_match_a_forward_pass() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
    )
    x = torch.randn(1, 3, 16, 16)
    rows, _ = layers(model, (x,))
    expected = []
    with torch.no_grad():
        model.eval()
        for layer in model:  # the forward pass, one layer at a time
            x = layer(x)
            expected.append(list(x.shape))
    assert [row.name for row in rows] == [str(i) for i in range(len(model))]
    assert [row.shape for row in rows] == [str(shape) for shape in expected]
    assert [row.kind for row in rows] == [type(m).__name__ for m in model]


def test_unet_shapes_follow_its_levels() -> None:
    cfg, task, model = unet("model.depth=3", "model.width=4")
    inputs = example_input(cfg, task, model)
    model.train()
    running_mean = model.stem[1].running_mean.clone()
    rows, _ = layers(model, inputs)
    assert model.training and torch.equal(model.stem[1].running_mean, running_mean)  # no trace left
    shapes = {row.name: row.shape for row in rows}
    size = cfg.data.image_size
    assert shapes["head"] == str(list(model.eval()(*inputs).shape)) == str([1, 3, size, size])
    for level in range(3):  # the last conv of each down step: width * 2**(level+1) channels at size / 2**(level+1)
        side = size // 2 ** (level + 1)
        assert shapes[f"downs.{level}.1.3"] == str([1, 4 * 2 ** (level + 1), side, side])
    assert all(row.shape != "-" for row in rows)


@pytest.mark.parametrize("stride, padding, bias", [(1, 0, False), (2, 1, True)])
def test_conv_flops_match_the_hand_formula(stride: int, padding: int, bias: bool) -> None:
    cin, cout, k, side = 3, 8, 3, 17
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias)
    out = (side + 2 * padding - k) // stride + 1
    assert count_flops(conv, (torch.zeros(1, cin, side, side),)) == 2 * cin * cout * k * k * out * out
    # per image: a batch of one, so a UNet's count scales with its input area
    cfg, task, model = unet()
    small = totals(model, example_input(cfg, task, model)).flops
    cfg2 = composed("model.width=4", "model.depth=2", "data.image_size=64")
    assert totals(model, example_input(cfg2, task, model)).flops == 4 * small


def test_summary_command(capsys: pytest.CaptureFixture[str]) -> None:
    main(["experiment=mp_tr_bce", "data.image_size=64", "model.width=4", "model.depth=2"])
    out = capsys.readouterr().out
    cfg, task, model = unet("experiment=mp_tr_bce")
    params = sum(p.numel() for p in model.parameters())
    assert f"{params:,}" in out and "FLOPs per image at 64x64" in out and "TransposeUpsample" in out


@pytest.mark.parametrize("argument, message", [("encoder=avgpool", "maxpool"), ("data.image_size=100", "data.image_size")])
def test_summary_command_bad_input(argument: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([argument])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
