"""`python -m sketchtune_cli` run from the checkout's root: the root's `kernels/` (installed as
sketchtune_kernels) must not shadow Hugging Face's `kernels` package, which transformers >= 5.25 imports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_python_m_from_the_checkout_root_loads_transformers_models():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}  # as a user's shell would have it
    proc = subprocess.run([sys.executable, "-m", "sketchtune_cli", "inspect", "--estimate", "smollm2-135m", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sketched_layers"] == 210  # 30 blocks x 7 projections
