"""The wheel a user installs holds every module and data file of the checkout.

An editable install (what the tests and the demo use) reads the source tree, so a package missing from
pyproject's explicit `packages` list goes unnoticed there; `pip install .` or a wheel would lack it and fail
at import. This builds the wheel from a copy of the tree and compares file lists.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Source folder -> the name it is installed under (pyproject's package-dir).
INSTALLED_AS = {"sketchtune_cli": "sketchtune_cli", "kernels/sketchtune_kernels": "sketchtune_kernels",
                "configs": "sketchtune_configs"}


def _source_files() -> set[str]:
    files = set()
    for src, name in INSTALLED_AS.items():
        for path in (ROOT / src).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(f"{name}/{path.relative_to(ROOT / src).as_posix()}")
    return files


def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for src in INSTALLED_AS:
        shutil.copytree(ROOT / src, tree / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # No build isolation: no index needed; setuptools comes with torch's dependencies in the test venv.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(tree)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("sketchtune-*.whl")
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n}
    expected = _source_files()
    assert any(f.startswith("sketchtune_cli/training/") for f in expected)  # the package that once went missing
    assert sorted(expected - in_wheel) == []
    assert sorted(in_wheel - expected) == []
