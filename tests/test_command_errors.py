"""How every command ends on bad input: the UserError as one line on stderr and exit status 2, no traceback;
any other error keeps its traceback."""

from __future__ import annotations

import pytest

from s18exp import cli
from s18exp.errors import UserError


def user_error() -> None:
    raise UserError("n=0 must be at least 1")


def wrapped_user_error() -> None:
    """A UserError as hydra's instantiate hands it on: the cause of another exception."""
    try:
        raise UserError("data.image_size=100 is not divisible by 8; use data.image_size=96")
    except UserError as exc:
        raise RuntimeError("Error in call to target 'PetsData'") from exc


def test_command_returns_the_status_of_its_main() -> None:
    assert cli.command(lambda: 0)() == 0
    assert cli.command(lambda code: code)(3) == 3


@pytest.mark.parametrize("fail", [user_error, wrapped_user_error])
def test_a_user_error_is_one_line_and_status_2(fail, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.command(fail)() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        cli.exit_on_user_error(fail)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == err


def test_other_errors_keep_their_traceback() -> None:
    def bug() -> int:
        raise KeyError("not a user's mistake")

    with pytest.raises(KeyError):
        cli.command(bug)()
    with pytest.raises(KeyError):
        cli.exit_on_user_error(bug)
