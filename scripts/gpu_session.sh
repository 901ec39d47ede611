#!/usr/bin/env bash
# The standing GPU check, as one command for a lent GPU machine (a short lease: every step has its own
# time limit, so one that hangs cannot eat the others' time, and each step's log is kept as it goes).
#   1. scripts/gpu_check.py           every Triton kernel against its PyTorch reference on CUDA, then timed
#   2. scripts/time_compress_block.py a Llama-3-8B-shaped block compressed, G=4 then G=1 (4 bits, 128 x 2048)
#   3. scripts/time_finetune_block.py a fine-tuning step on two such blocks: sketch G=4/G=1 vs matched LoRA, full
#
#   bash scripts/gpu_session.sh OUT_DIR
#
# Writes OUT_DIR/{env.txt, session.log, gpu_check.json, block_g4.json, block_g1.json, finetune_block.json}: few
# files, because the device tool brings back at most 8 of a call (two runs lost gpu_check's files to that);
# `python scripts/report_gpu.py OUT_DIR` renders them as OUT_DIR/gpu.md. Assumes the repository root as
# working directory and the package importable (installed, or PYTHONPATH=.:kernels).
set -uo pipefail
out=${1:?usage: bash scripts/gpu_session.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

{ date -u; nvidia-smi -L; $py -c "import torch, triton, transformers; print('torch', torch.__version__, '| triton', \
triton.__version__, '| transformers', transformers.__version__)"; } >"$out/env.txt" 2>&1
cat "$out/env.txt"

step() {  # step NAME SECONDS CMD...: runs CMD under a time limit, log appended to OUT/session.log, says how it ended
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$out/session.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/session.log"
}

step gpu_check "${GPU_CHECK_LIMIT:-270}" $py scripts/gpu_check.py --out "$out/gpu_check.json"
step block_g4 "${BLOCK_LIMIT:-150}" $py scripts/time_compress_block.py --groups-per-row 4 --out "$out/block_g4.json"
step block_g1 "${BLOCK_LIMIT:-150}" $py scripts/time_compress_block.py --groups-per-row 1 --out "$out/block_g1.json"
step finetune_block "${FINETUNE_LIMIT:-150}" $py scripts/time_finetune_block.py --out "$out/finetune_block.json"
