"""The error types that the command line reports as a single line, without a traceback."""

from typing import Any


class UserError(Exception):
    """Bad input from the user: the message names the bad value and the fix."""


class TrainingError(Exception):
    """Training cannot go on (e.g. a non-finite loss); the message says where and what to change."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (hydra's instantiate, among others, spreads its over several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def find_user_error(exc: BaseException) -> UserError | None:
    """The UserError that `exc` is or was raised from (hydra's instantiate wraps what a constructor raises)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, UserError):
        cause = cause.__cause__
    return cause


def instantiate(node: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, re-raising a UserError from a constructor as itself rather than wrapped."""
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except Exception as exc:
        error = find_user_error(exc)
        if error is None:
            raise
        raise error from None
