"""The `sketchtune` command: a thin Typer layer. Each stage module exposes ``register(app)``; commands
print the artifact path they wrote on stdout and log to stderr. Bad input exits 2 with one line
(a traceback only with --debug)."""
from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

from . import __version__
from .errors import UserError
from .preemption import EXIT_INTERRUPTED, Interrupted

EXIT_CODES = f"""Exit codes: 0 done; 1 crash (a bug or an environment failure); 2 bad input or usage (one line
on stderr); {EXIT_INTERRUPTED} interrupted by SIGTERM/SIGUSR1 after writing a checkpoint: run the same command with
--resume to continue (the SLURM scripts in scripts/slurm requeue on it); 130 Ctrl-C."""

app = typer.Typer(
    name="sketchtune",
    help="Compress an LLM into fine-tunable 4-bit sketches, fine-tune only the sketches, evaluate, export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
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

def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sketchtune {__version__}")
        raise typer.Exit()


@app.callback(epilog=EXIT_CODES)
def _main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks on errors"),  # main() reads it from argv
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug-level logs on stderr"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="only warnings and errors on stderr"),
):
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


def _click_exceptions():
    """The ClickException and UsageError classes that can reach main: typer's bundled click (typer >= 0.20
    vendors it as typer._click) and, for older typer, the click package."""
    classes = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        classes.append((mod.ClickException, mod.UsageError, getattr(mod, "NoArgsIsHelpError", ())))
    return classes


def _usage_line(err) -> str:
    """A usage error as one line, with where to read the usage."""
    ctx = getattr(err, "ctx", None)
    where = f"; see `{ctx.command_path} --help`" if ctx is not None else "; see `sketchtune --help`"
    return f"error: {_one_line(err.format_message()).rstrip('.')}{where}"


def entry() -> None:
    """The process entry point (console script, ``python -m sketchtune_cli``): :func:`main`; a worker of a
    multi-process launch then ends at once (see :mod:`sketchtune_cli.processes`: the process group is never
    destroyed, the process's end releases it)."""
    from .processes import end_worker

    try:
        main()
    except SystemExit as e:
        end_worker(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
        raise


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app, turning user errors into one line and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, standalone_mode=False)
    except Interrupted as e:  # a checkpoint is written: `--resume` continues
        print(f"interrupted: {_one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
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
        for click_error, usage_error, no_args_help in _click_exceptions():
            if no_args_help and isinstance(e, no_args_help):  # a bare group or command: its help, exit 2
                if e.format_message().strip():  # (typer's rich help printed itself already)
                    e.show()
                sys.exit(2)
            if isinstance(e, usage_error):
                print(_usage_line(e), file=sys.stderr)
                sys.exit(2)
            if isinstance(e, click_error):
                print(f"error: {_one_line(e.format_message())}", file=sys.stderr)
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
