#!/usr/bin/env bash
# The whole pipeline on the embedded default model (SmolLM2-135M-Instruct), offline, on CPU, in minutes:
# set up what is missing, then compress -> finetune -> eval -> export with configs/demo.yaml.
# Running it again skips the finished stages. Extra arguments are config overrides, e.g.
#   bash scripts/demo.sh train.max_steps=20
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
sketchtune run --config demo "$@"
