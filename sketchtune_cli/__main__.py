"""`python -m sketchtune_cli` (and `accelerate launch -m sketchtune_cli ...`)."""
import os
import sys
from pathlib import Path

# Run from a source checkout's root, `python -m` puts that root first on sys.path, where the checkout's
# `kernels/` (installed as sketchtune_kernels) would shadow Hugging Face's `kernels` package, which
# transformers >= 5.25 imports (failing with "cannot import name 'CUDAProperties' from 'kernels'").
_root = Path(sys.path[0] or os.getcwd()) if sys.path else None
if _root is not None and (_root / "kernels" / "dispatch.py").is_file() and (_root / "sketchtune_cli").is_dir():
    sys.path.pop(0)

from sketchtune_cli.cli import entry  # noqa: E402  (after the sys.path fix above)

entry()
