"""A checkout's root on sys.path (``python -m sketchtune_cli``, ``python -m pytest``, ``python -c`` run there)
must not shadow Hugging Face's ``kernels`` package, which transformers >= 5.25 imports: the project's
``kernels/`` folder holds the ``sketchtune_kernels`` package and is not a package itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}  # as a user's shell would have it


def test_the_bare_name_kernels_never_resolves_into_the_checkout():
    code = "import importlib.util as u; s = u.find_spec('kernels'); print(s.origin if s else '')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=USER_ENV, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    # Hugging Face's package (possibly in a .venv inside the checkout), or none: never the checkout's kernels/
    assert not proc.stdout.strip().startswith(str(REPO / "kernels")), proc.stdout


def test_python_m_from_the_checkout_root_loads_transformers_models():
    proc = subprocess.run([sys.executable, "-m", "sketchtune_cli", "inspect", "--estimate", "smollm2-135m", "--json"],
                          cwd=REPO, env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sketched_layers"] == 210  # 30 blocks x 7 projections
