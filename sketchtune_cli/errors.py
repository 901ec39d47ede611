"""User-facing errors: the CLI prints their message as one line and exits 2 (traceback only with --debug)."""


class UserError(Exception):
    """Bad input from the user: message says what is wrong and how to fix it."""

    exit_code = 2
