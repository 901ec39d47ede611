"""Session fixture ``embedded_sketch_dir``: a 4-bit, 4-groups-per-row sketch artifact of the embedded
SmolLM2-135M, calibrated on 16 x 256 tokens of CPython's pydoc text (offline), for every test that needs a
real sketch (compress, finetune, eval, export).

It is built once through the real CLI and cached in the pytest cache (``.pytest_cache``), under a key
that hashes the sources that shape a sketch (compress/, sketch/, the code packing) and the settings, so a
code change rebuilds it. Tests using it should be marked ``@pytest.mark.embedded``.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKETCH_ARGS = ["--bits", "4", "--groups-per-row", "4", "--calib", "builtin", "--num-samples", "16",
               "--seq-len", "256", "--device", "cpu",
               "compress.lut_refit_rounds=1"]  # the tests check the machinery; the quality default (6) is benchmarked
SOURCES = ["sketchtune_cli/compress", "sketchtune_cli/sketch", "kernels/sketchtune_kernels/packing.py", "sketchtune_cli/models.py"]


def _source_key() -> str:
    h = hashlib.sha256(" ".join(SKETCH_ARGS).encode())
    for rel in SOURCES:
        root = REPO / rel
        for p in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            h.update(p.relative_to(REPO).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _is_complete(path: Path) -> bool:
    from sketchtune_cli.artifacts import is_artifact, read_manifest
    from sketchtune_cli.errors import UserError

    if not is_artifact(path):
        return False
    try:
        read_manifest(path, stage="sketch", verify=True)
    except UserError:
        return False
    return True


def build_embedded_sketch(out: Path) -> Path:
    """Compress the embedded model into ``out`` through the CLI entry point (in-process)."""
    from sketchtune_cli.artifacts import partial_dir
    from sketchtune_cli.cli import main

    shutil.rmtree(partial_dir(out), ignore_errors=True)
    try:
        main(["--quiet", "compress", "smollm2-135m", "-o", str(out), "--overwrite", *SKETCH_ARGS])
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"building the embedded sketch failed with exit code {e.code}") from None
    return out


@pytest.fixture(scope="session")
def embedded_sketch_dir(request, embedded_dir) -> Path:
    """Path of a sketch artifact of the embedded model (4-bit, G=4, builtin calibration 16 x 256)."""
    from filelock import FileLock

    root = Path(request.config.cache.mkdir("sketchtune-embedded-sketch"))
    key = _source_key()
    out = root / f"smollm2-135m-b4g4-{key}"
    # Several pytest sessions may share the checkout: one builds, the others wait and reuse.
    with FileLock(str(root / f"{key}.lock")):
        if not _is_complete(out):
            for stale in root.glob("smollm2-135m-b4g4-*"):  # finished sketches of older code
                if stale.name != out.name and not stale.name.endswith(".partial"):
                    shutil.rmtree(stale, ignore_errors=True)
            build_embedded_sketch(out)
    return out
