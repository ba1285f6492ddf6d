"""Strict keys on the command line, and value errors whose examples come from the key's default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env
from hydra import compose, initialize_config_dir

from s18exp.config import validate
from s18exp.errors import UserError
from s18exp.keys import check_command_line
from s18exp.paths import CONFIG_DIR


def refusal(*argv: str) -> str:
    with pytest.raises(UserError) as info:
        check_command_line(list(argv))
    return str(info.value)


@pytest.mark.parametrize("written", ["trainer.max_epoch=1", "+trainer.max_epoch=1", "++trainer.max_epoch=1"])
def test_a_misspelt_key_is_named_with_the_closest_one_with_or_without_plus(written: str) -> None:
    assert refusal(written) == "trainer.max_epoch is not a setting; did you mean trainer.max_epochs?"


def test_a_key_of_another_task_is_not_a_setting_of_this_one() -> None:
    assert refusal("model.condition=both").startswith("model.condition is not a setting")
    check_command_line(["task=vae", "model.condition=both"])
    # in a sweep every job composes its own config: the unet job has no model.condition
    assert refusal("--multirun", "task=vae,unet", "model.condition=both").startswith("model.condition is not a setting")


def test_known_keys_groups_and_hydra_keys_pass() -> None:
    check_command_line([
        "--multirun", "experiment=mp_tr_bce,strconv_ups_dice", "seed=0,1", "trainer.max_epochs=1", "data.image_size=64",
        "~augment", "hydra.sweep.dir=somewhere", "hydra/launcher=basic",
    ])


def test_a_constructor_argument_needs_the_plus_and_must_exist() -> None:
    check_command_line(["+trainer.optimizer.betas=[0.9,0.95]"])  # AdamW takes betas
    assert refusal("trainer.optimizer.betas=[0.9,0.95]") == (
        "trainer.optimizer.betas is not in the config but torch.optim.AdamW takes betas; add it with +trainer.optimizer.betas=[0.9,0.95]"
    )
    assert refusal("+trainer.optimizer.beta=[0.9,0.95]") == "trainer.optimizer.beta is not a setting; did you mean trainer.optimizer.betas?"


def test_a_misspelt_group_option_is_named_with_the_closest_one() -> None:
    assert refusal("encoder=strid") == "encoder=strid is not an option of encoder; did you mean encoder=strided? the options are maxpool, strided"
    assert refusal("--multirun", "loss=bce,dise") == (
        "loss=dise is not an option of loss; did you mean loss=dice? the options are bce, dice, dice_ce, lovasz_ce, mse"
    )
    assert refusal("task=gan") == "task=gan is not an option of task; the options are unet, vae"
    check_command_line(["experiment=null", "augment=flip", "task=vae"])


def test_plus_on_an_existing_key_says_to_drop_it() -> None:
    assert refusal("+trainer.lr=0.01") == "trainer.lr is already a setting; write trainer.lr=0.01 without the +"


def test_the_command_line_stops_in_one_line_before_any_work(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "s18exp", "+trainer.max_epoch=1", "wandb.mode=disabled"],
        cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: trainer.max_epoch is not a setting; did you mean trainer.max_epochs?"]
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


@pytest.mark.parametrize(
    ("override", "example"),
    [("trainer.lr=abc", "trainer.lr=0.001"), ("trainer.max_epochs=0", "trainer.max_epochs=60"), ("data.image_size=-1", "data.image_size=128")],
)
def test_value_errors_suggest_the_default(override: str, example: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[override])
    with pytest.raises(UserError) as info:
        validate(cfg)
    assert str(info.value).endswith(f"e.g. {example}")


def test_value_errors_suggest_the_default_of_the_selected_group(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "s18exp", "task=vae", "trainer.lr=abc", "wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: trainer.lr='abc' must be a positive float; e.g. trainer.lr=0.003"]
