"""The Hydra config tree: every group option composes, experiments pick the right combo, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import s18exp.paths
from s18exp.config import validate
from s18exp.errors import UserError
from s18exp.losses import LovaszCELoss, LovaszSoftmaxLoss
from s18exp.tasks.segmentation import SegmentationTask

CONFIG_DIR = s18exp.paths.CONFIG_DIR
# Groups whose options are plain values under the group's own key (not `@package _global_`).
PACKAGED_GROUPS = ["data", "encoder", "decoder", "loss", "trainer", "wandb", "paths", "augment"]
EXPERIMENTS = {
    "mp_tr_bce": ("maxpool", "transpose", "bce"),
    "mp_tr_dice": ("maxpool", "transpose", "dice"),
    "strconv_tr_bce": ("strided", "transpose", "bce"),
    "strconv_ups_dice": ("strided", "upsample", "dice"),
}


def compose_config(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_config_dir_is_the_repository_conf_folder() -> None:
    assert CONFIG_DIR == Path(__file__).resolve().parents[1] / "conf"
    assert (CONFIG_DIR / "config.yaml").is_file()


def assert_contains(actual: object, expected: object, where: str) -> None:
    """Every value that `expected` sets is in `actual` (which may hold more keys, e.g. from a base option)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key}"
            assert_contains(actual[key], value, f"{where}.{key}")
    else:
        assert actual == expected, where


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in PACKAGED_GROUPS for o in group_options(g)]
)
def test_every_group_option_composes_to_its_file(group: str, option: str) -> None:
    cfg = compose_config(f"{group}={option}")
    expected = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml"), resolve=False)
    expected.pop("defaults", None)  # an option may extend another one
    # Compare unresolved, since some values interpolate other groups or the environment.
    assert_contains(OmegaConf.to_container(cfg[group], resolve=False), expected, group)
    if "name" in expected:
        assert cfg[group].name == option


def test_unet_task_is_the_default_and_defines_task_and_model() -> None:
    assert "unet" in group_options("task")
    cfg = compose_config()
    assert cfg == compose_config("task=unet")
    assert cfg.task._target_ == "s18exp.tasks.segmentation.SegmentationTask"
    assert cfg.model._target_ == "s18exp.models.unet.UNet"


def test_experiment_folder_holds_the_four_combos_and_the_longer_recipe() -> None:
    assert group_options("experiment") == sorted([*EXPERIMENTS, "pets_best"])


def test_pets_best_keeps_the_default_parts_at_a_larger_size() -> None:
    cfg = compose_config("experiment=pets_best")
    assert (cfg.encoder.name, cfg.decoder.name, cfg.loss.name, cfg.data.image_size) == ("maxpool", "transpose", "dice_ce", 192)
    assert (cfg.model.width, cfg.trainer.max_epochs) == (32, 130)
    assert (cfg.augment.name, cfg.augment.scale_min, cfg.augment.rotate_degrees) == ("strong", 0.5, 15)
    assert SegmentationTask(cfg).tta_scales == (0.75, 1.0, 1.25)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
def test_experiment_selects_its_encoder_decoder_and_loss(experiment: str) -> None:
    cfg = compose_config(f"experiment={experiment}")
    encoder, decoder, loss = EXPERIMENTS[experiment]
    assert (cfg.encoder.name, cfg.decoder.name, cfg.loss.name) == (encoder, decoder, loss)
    assert cfg.combo == experiment
    assert cfg.run_name == f"{experiment}-s{cfg.seed}"


def test_default_combo_is_named_from_the_group_tags() -> None:
    cfg = compose_config("encoder=strided", "decoder=upsample", "loss=bce", "seed=3")
    assert cfg.combo == "strconv_ups_bce"
    assert cfg.run_name == "strconv_ups_bce-s3"


OVERRIDES = {
    "trainer.max_epochs": 3,
    "trainer.batch_size": 5,
    "trainer.lr": 0.25,
    "trainer.precision": "fp32",
    "seed": 7,
    "data.root": "/some/data",
    "data.image_size": 48,
    "data.limit_train": 6,
    "data.limit_test": 2,
    "model.width": 8,
    "model.depth": 3,
    "wandb.mode": "disabled",
    "wandb.project": "elsewhere",
    "augment.scale_min": 0.5,
    "augment.rotate_degrees": 15,
    "eval.tta": "none",
}


def test_documented_override_keys_exist_and_take_effect() -> None:
    default = compose_config()
    for key in OVERRIDES:
        assert OmegaConf.select(default, key, default="<missing>") != "<missing>", key
    cfg = compose_config(*(f"{k}={v}" for k, v in OVERRIDES.items()))
    for key, value in OVERRIDES.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert cfg.trainer.optimizer.lr == 0.25  # interpolated from trainer.lr
    assert cfg.trainer.scheduler.max_lr == 0.25


def test_data_root_follows_s18exp_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("S18EXP_DATA", str(tmp_path / "elsewhere"))
    assert compose_config().data.root == str(tmp_path / "elsewhere")


def test_data_root_defaults_to_a_folder_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("S18EXP_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    root = Path(compose_config().data.root)
    assert root == tmp_path / ".cache" / "s18exp" / "data"
    assert compose_config().paths.cache_dir.startswith(str(tmp_path))


def test_valid_configs_pass_validation() -> None:
    validate(compose_config())
    validate(compose_config("data.image_size=32", "model.depth=2", "trainer.precision=fp32", "wandb.mode=offline"))
    validate(compose_config("data.image_size=48", "model.depth=4", "trainer.lr=1e-5", "trainer.grad_clip=1.0"))
    validate(compose_config("trainer.ema_decay=0.998", "model.block=residual"))


@pytest.mark.parametrize(
    ("overrides", "key", "value"),
    [
        (["data.image_size=100", "model.depth=4"], "data.image_size", "100"),
        (["data.image_size=32", "model.depth=6"], "data.image_size", "32"),
        (["trainer.max_epochs=0"], "trainer.max_epochs", "0"),
        (["trainer.batch_size=-1"], "trainer.batch_size", "-1"),
        (["trainer.lr=0"], "trainer.lr", "0"),
        (["trainer.lr=nan"], "trainer.lr", "nan"),
        (["trainer.grad_clip=inf"], "trainer.grad_clip", "inf"),
        (["trainer.precision=fp8"], "trainer.precision", "fp8"),
        (["wandb.mode=bogus"], "wandb.mode", "bogus"),
        (["eval.weights=middle"], "eval.weights", "middle"),
        (["data.limit_train=0"], "data.limit_train", "0"),
        (["model.width=2.5"], "model.width", "2.5"),
        (["augment.crop_size=100"], "augment.crop_size", "100"),
        (["augment.crop_size=256"], "augment.crop_size", "256"),
        (["augment.crop_size=0"], "augment.crop_size", "0"),
        (["augment.crop_size=96.5"], "augment.crop_size", "96.5"),
        (["trainer.ema_decay=1"], "trainer.ema_decay", "1"),
        (["trainer.ema_decay=0"], "trainer.ema_decay", "0"),
        (["trainer.ema_decay=-0.5"], "trainer.ema_decay", "-0.5"),
        (["trainer.ema_decay=true"], "trainer.ema_decay", "True"),
        (["trainer.ema_decay=fast"], "trainer.ema_decay", "fast"),
        (["model.block=dense"], "model.block", "dense"),
    ],
)
def test_bad_values_raise_user_error_naming_key_and_value(overrides: list[str], key: str, value: str) -> None:
    cfg = compose_config(*overrides)
    with pytest.raises(UserError) as info:
        validate(cfg)
    message = str(info.value)
    assert key in message and value in message, message
    assert "\n" not in message


def test_image_size_error_suggests_a_size_that_validates() -> None:
    with pytest.raises(UserError) as info:
        validate(compose_config("data.image_size=100", "model.depth=4"))
    suggested = str(info.value).split("use data.image_size=")[1].split()[0]
    assert int(suggested) % 16 == 0
    validate(compose_config(f"data.image_size={suggested}", "model.depth=4"))


@pytest.mark.parametrize("crop", [100, 256])
def test_crop_size_error_suggests_a_size_that_validates(crop: int) -> None:
    """Not a multiple of 2**depth (100) or larger than the 128-px images (256): the suggested window passes."""
    with pytest.raises(UserError) as info:
        validate(compose_config(f"augment.crop_size={crop}"))
    suggested = int(str(info.value).split("use augment.crop_size=")[1].split(",")[0])
    assert suggested % 16 == 0 and suggested <= 128
    validate(compose_config(f"augment.crop_size={suggested}"))


def test_loss_lovasz_ce_builds_the_weighted_lovasz_plus_cross_entropy() -> None:
    cfg = compose_config("loss=lovasz_ce")
    assert (cfg.loss.name, cfg.combo) == ("lovasz_ce", "mp_tr_lovce")
    criterion = SegmentationTask(cfg).criterion
    assert isinstance(criterion, LovaszCELoss) and (criterion.lovasz_weight, criterion.ce_weight) == (1.0, 1.0)
    weighted = SegmentationTask(compose_config("loss=lovasz_ce", "loss.criterion.lovasz_weight=0.25")).criterion
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    lovasz, ce = LovaszSoftmaxLoss()(logits, target).item(), torch.nn.functional.cross_entropy(logits, target).item()
    assert weighted(logits, target).item() == pytest.approx(0.25 * lovasz + ce, rel=1e-6)


# Keyword defaults that may differ from a YAML value, and why: PairAugment's are the identity (augment=none
# writes no values and relies on them; flip and strong set their own); an image folder is never downloaded,
# whatever `download` says (s18exp/data/imagefolder.py), so its shared DataSettings default means nothing there.
DEFAULTS_THAT_MAY_DIFFER = {("s18exp.augment.PairAugment", None), ("s18exp.data.imagefolder.ImageFolderData", "download")}


def yaml_and_constructor_disagreements(node: object, found: list[str]) -> list[str]:
    """Each `_target_` of the project under `node` whose constructor has a keyword default that differs from the
    value the YAML gives the same keyword, as 'target.keyword: default vs yaml'."""
    import inspect

    from hydra.utils import get_object

    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and target.startswith("s18exp.") and (target, None) not in DEFAULTS_THAT_MAY_DIFFER:
            for name, parameter in inspect.signature(get_object(target)).parameters.items():
                default = parameter.default
                if default is inspect.Parameter.empty or name not in node or (target, name) in DEFAULTS_THAT_MAY_DIFFER:
                    continue
                if node[name] != default:
                    found.append(f"{target}.{name}: {default!r} vs {node[name]!r}")
        for value in node.values():
            yaml_and_constructor_disagreements(value, found)
    elif isinstance(node, list):
        for value in node:
            yaml_and_constructor_disagreements(value, found)
    return found


def test_the_yaml_is_the_one_source_of_defaults() -> None:
    """What Hydra builds (models, blocks, losses, tasks, data sets) takes no keyword default that disagrees with
    the YAML: a model built in code from its defaults is the one the config describes, or cannot be built."""
    choices = [["task=unet", f"{group}={option}"] for group in ("augment", "encoder", "decoder", "loss") for option in group_options(group)]
    choices += [["task=vae", f"data={data}", f"loss={loss}"] for data in ("mnist", "cifar10", "imagefolder") for loss in ("bce", "mse")]
    found: list[str] = []
    for overrides in choices:
        cfg = compose_config(*overrides, "data.root=/nonexistent")
        yaml_and_constructor_disagreements(OmegaConf.to_container(cfg, resolve=True), found)
    assert len(choices) > 15
    assert not sorted(set(found)), sorted(set(found))


def test_the_defaults_check_sees_a_disagreement() -> None:
    node = {"model": {"_target_": "s18exp.models.unet.UNet", "block": "residual", "width": 24}}
    assert yaml_and_constructor_disagreements(node, []) == ["s18exp.models.unet.UNet.block: 'double' vs 'residual'"]
