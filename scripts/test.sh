#!/usr/bin/env bash
# Set up (see scripts/setup_env.sh) and run the default test suite. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m slow          # the slow suites too
#   bash scripts/test.sh tests/kernels    # one folder
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-test}" source scripts/setup_env.sh

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Pre-convert the embedded model once so test timings don't include it.
python -c "from sketchtune_cli.models import embedded_model_dir; embedded_model_dir()"

set +e
python -m pytest -q -ra --durations=15 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$status"
