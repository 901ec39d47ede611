"""The `sketchtune` command: a thin Typer layer. Each stage module exposes ``register(app)``; commands
print the artifact path they wrote on stdout and log to stderr. Bad input exits 2 with one line
(a traceback only with --debug)."""
from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

from .errors import UserError

app = typer.Typer(
    name="sketchtune",
    help="Compress an LLM into fine-tunable 4-bit sketches, fine-tune only the sketches, evaluate, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# One module per command group; each has register(app). Listed here once its command works.
STAGE_MODULES = [
    "sketchtune_cli.compress.command",
    "sketchtune_cli.finetune.command",
    "sketchtune_cli.evaluate.command",
    "sketchtune_cli.export.command",
    "sketchtune_cli.run_cmd",
    "sketchtune_cli.inspect_cmd",
    "sketchtune_cli.config_cmd",
]

_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks on errors"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug-level logs on stderr"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="only warnings and errors on stderr"),
):
    _state["debug"] = debug
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    setup_logging(level)


def setup_logging(level: int) -> None:
    from rich.logging import RichHandler

    from rich.console import Console

    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    for noisy in ("transformers", "datasets", "accelerate", "urllib3", "httpx", "filelock", "lm_eval"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


for _name in STAGE_MODULES:
    importlib.import_module(_name).register(app)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app, turning user errors into one line and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, standalone_mode=False)
    except UserError as e:
        if debug:
            raise
        for line in getattr(e, "problems", None) or [_one_line(e)]:  # a PreflightError: one line per problem
            print(f"error: {line}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors and the like carry their own exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        from .failures import user_caused

        message = user_caused(e)
        if message is not None:  # the user's environment or files, not a bug: one line, exit 2
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        print(f"error: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
