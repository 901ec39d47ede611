"""User-facing errors: the CLI prints their message as one line and exits 2 (traceback only with --debug)."""


def one_line(text: object, limit: int = 200) -> str:
    """One line, bounded: messages never carry unbounded user data."""
    return " ".join(str(text).split())[:limit]


def describe(err: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an exception a message quotes, its text made :func:`one_line`."""
    return f"{type(err).__name__}: {one_line(err, limit)}"


class UserError(Exception):
    """Bad input from the user: message says what is wrong and how to fix it."""

    exit_code = 2


class PreflightError(UserError):
    """Every problem the preflight found, one line each (the CLI prints each on its own line, exit 2)."""

    def __init__(self, problems: list[str]):
        self.problems = [" ".join(p.split()) for p in problems]
        super().__init__("; ".join(self.problems))
