"""The settings every data set shares: each config group's keys are named parameters of its data set, so that
the command line's key checks see them, and nothing else gets through."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_class

from s18exp.data.settings import DataSettings
from s18exp.errors import UserError
from s18exp.keys import check_command_line
from s18exp.paths import CONFIG_DIR

DATA_CONFIGS = sorted((Path(CONFIG_DIR) / "data").glob("*.yaml"))


@pytest.mark.parametrize("config", DATA_CONFIGS, ids=lambda path: path.stem)
def test_every_key_of_a_data_config_is_a_named_parameter_of_its_data_set(config: Path) -> None:
    node = yaml.safe_load(config.read_text())
    parameters = inspect.signature(get_class(node.pop("_target_"))).parameters
    assert set(node) | {"cache_dir"} | {field.name for field in fields(DataSettings)} <= set(parameters)
    assert all(p.kind is not p.VAR_KEYWORD for p in parameters.values())


@pytest.mark.parametrize("group", ["pets", "mnist", "cifar10", "imagefolder"])
def test_a_mistyped_data_key_gets_a_suggestion_and_an_unlisted_setting_the_plus(group: str) -> None:
    with pytest.raises(UserError, match="data.limit_trian is not a setting; did you mean data.limit_train"):
        check_command_line([f"data={group}", "data.limit_trian=5"])
    with pytest.raises(UserError, match="takes cache_dir; add it with [+]data.cache_dir=/x"):
        check_command_line([f"data={group}", "data.cache_dir=/x"])


def test_from_config_expands_the_home_folder_and_cache_off_means_no_cache_folder() -> None:
    settings = DataSettings.from_config("~/data", 32, "mnist", limit_train=5, cache=False, cache_dir="/tmp/cache")
    assert settings.root == Path.home() / "data"
    assert (settings.limit_train, settings.limit_val, settings.split_seed, settings.val_fraction) == (5, None, 0, 0.1)
    assert settings.cache_folder is None
    assert DataSettings.from_config("data", 32, "mnist", cache_dir="/tmp/cache").cache_folder == "/tmp/cache"


def test_an_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="limit_trian"):
        DataSettings.from_config("data", 32, "mnist", limit_trian=5)
