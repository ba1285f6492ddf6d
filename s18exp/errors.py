"""The one error type that the command line reports as a single line, without a traceback."""


class UserError(Exception):
    """Bad input from the user: the message names the bad value and the fix."""
