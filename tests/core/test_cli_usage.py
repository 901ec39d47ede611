"""The CLI as a Unix tool: every usage error of every command exits 2 with one line on stderr and nothing on
stdout; --version; shell completion; `config copy`; stage commands refuse to run without their input."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import pytest
import typer

from sketchtune_cli import __version__
from sketchtune_cli.cli import app, main
from sketchtune_cli.config import bundled_config_dir


def run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code or 0
    return code, out.getvalue(), err.getvalue()


def command_paths() -> list[tuple[str, ...]]:
    """Every leaf command of the app, walked from the click tree typer builds (so a new command is covered)."""
    paths = []

    def walk(cmd, prefix):
        subs = getattr(cmd, "commands", None)
        if subs is None:
            paths.append(prefix)
            return
        for name, sub in subs.items():
            walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return sorted(paths)


ALL = command_paths()

# Per command: arguments missing a required input, and a bad value for one of its options or arguments.
MISSING = {
    ("compress",): [],  # no MODEL and no config model
    ("finetune",): [],  # no base sketch, no training data
    ("eval",): [],
    ("export",): [],
    ("run",): [],
    ("inspect",): [],
    ("config", "show"): ["--config"],
    ("config", "list"): None,
    ("config", "reference"): None,
    ("config", "copy"): ["demo"],
}
BAD_VALUE = {
    ("compress",): ["smollm2-135m", "--num-samples", "many"],
    ("finetune",): ["--max-steps", "ten"],
    ("eval",): ["runs/x", "--limit", "0"],
    ("export",): ["runs/x", "-o", "out", "--format", "onnx"],
    ("run",): ["--config", "demo", "--from", "deploy"],
    ("inspect",): ["--estimate", "smollm2-135m", "--bits", "four"],
    ("config", "show"): ["--config", "demo", "train.lr=fast"],
    ("config", "list"): ["extra"],
    ("config", "reference"): ["extra"],
    ("config", "copy"): ["no-such-recipe", "x.yaml"],
}


def assert_usage_error(code, stdout, stderr, *, needle: str | None = None):
    assert code == 2, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    # one line per problem: a usage error is one, a preflight may list several (`finetune` with nothing
    # given: no base sketch and no data)
    assert lines and all(ln.startswith("error: ") for ln in lines) and len(set(lines)) == len(lines), stderr
    assert len(lines) <= 2, stderr
    assert "Traceback" not in stderr
    if needle:
        assert any(needle in ln for ln in lines), stderr


def test_the_tables_cover_every_command():
    assert set(ALL) == set(BAD_VALUE) == set(MISSING)


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_unknown_option(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(*run_cli(*path, "--no-such-option"), needle="--no-such-option")


@pytest.mark.parametrize("path", [p for p in ALL if MISSING[p] is not None], ids=" ".join)
def test_missing_argument(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(*run_cli(*path, *MISSING[path]))
    assert list(tmp_path.iterdir()) == []  # nothing written: no compress of a default model, no runs/


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_bad_value(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(*run_cli(*path, *BAD_VALUE[path]))
    assert list(tmp_path.iterdir()) == []


def test_compress_without_model_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(*run_cli("compress", "compress.bits=3"), needle="give the MODEL")


def test_version_matches_the_package_and_manifests(tmp_path):
    code, stdout, _ = run_cli("--version")
    assert code == 0 and stdout == f"sketchtune {__version__}\n"
    from importlib.metadata import version

    from sketchtune_cli.artifacts import read_manifest, write_artifact

    with write_artifact(tmp_path / "a", "eval", {}) as w:
        (w.path / "x").write_text("x")
    assert read_manifest(tmp_path / "a").tool_version == __version__ == version("sketchtune")


def test_shell_completion_is_installable_and_completes():
    code, stdout, _ = run_cli("--help")
    assert code == 0 and "--install-completion" in stdout and "75" in stdout  # exit codes documented
    env = {**os.environ, "_SKETCHTUNE_COMPLETE": "complete_bash", "COMP_WORDS": "sketchtune con", "COMP_CWORD": "1"}
    as_installed = "import sys; sys.argv[0] = 'sketchtune'; from sketchtune_cli.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", as_installed], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["config"], proc.stderr
    code, stdout, _ = run_cli("--show-completion", "bash")
    assert code == 0 and "complete_bash" in stdout and "complete -o default" in stdout


def test_config_copy_keeps_comments_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "mine.yaml"
    code, stdout, err = run_cli("config", "copy", "math", target)
    assert code == 0, err
    assert stdout == f"{target}\n"
    assert target.read_text() == (bundled_config_dir() / "math.yaml").read_text() and "#" in target.read_text()
    target.write_text("edited: yes\n")
    assert_usage_error(*run_cli("config", "copy", "math", target), needle="--force")
    assert target.read_text() == "edited: yes\n"
    code, _, _ = run_cli("config", "copy", "demo", target, "--force")
    assert code == 0 and target.read_text() == (bundled_config_dir() / "demo.yaml").read_text()
    code, stdout, _ = run_cli("config", "copy", "demo", tmp_path)  # a directory: DIR/NAME.yaml
    assert code == 0 and stdout == f"{tmp_path / 'demo.yaml'}\n"
