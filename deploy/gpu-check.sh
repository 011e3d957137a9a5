#!/usr/bin/env bash
# The GPU checks of issue 19 in one prepared run on a CUDA machine (an H200): the CUDA tests, then the
# paper-scale analysis benchmark (128x256x69, latent 32x64, random weights of the intended size).
# Every result lands under $OUT (default ./gpu-results) as text and JSON; each step runs even if an
# earlier one failed, and summary.txt holds every step's exit code.
#   OUT=/tmp/gpu bash deploy/gpu-check.sh            # on the GPU machine, from the repository root
#   GRID=16x32x3 STEPS_PAPER=2 COMPILE=0 MEMBERS=1,2 bash deploy/gpu-check.sh   # a CPU dry run at reduced size
set -u
OUT=${OUT:-gpu-results}
GRID=${GRID:-128x256x69}
STEPS_PAPER=${STEPS_PAPER:-128}
COMPILE=${COMPILE:-1}
MEMBERS=${MEMBERS:-1,8,32}
mkdir -p "$OUT"
: > "$OUT/summary.txt"

step() {  # step NAME COMMAND...: run, keep its output, record its exit code
    local name=$1; shift
    local t0=$SECONDS
    "$@" > "$OUT/$name.txt" 2>&1
    echo "$name rc=$? seconds=$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
if [ "$GRID" = "128x256x69" ]; then
    step pytest-gpu python -m pytest -m gpu -q -p no:cacheprovider
fi
bench=(align-da bench sampler --paper-only --paper-grid "$GRID" --guidance dps --flops)
# our fast sampler: 8 deterministic steps; fp32 and bf16; 1, 8 and 32 members
step fast "${bench[@]}" --steps 8 --members "$MEMBERS" --dtype fp32,bf16 --json "$OUT/fast.json" --profile "$OUT/profile-fast.txt"
[ "$COMPILE" = 1 ] && step fast-compiled "${bench[@]}" --steps 8 --members "$MEMBERS" --dtype fp32,bf16 --compile --json "$OUT/fast-compiled.json"
# the paper's sampler: 128 predictor steps x 2 corrections
step paper "${bench[@]}" --steps "$STEPS_PAPER" --corrections 2 --members "${MEMBERS%,*}" --dtype bf16,fp32 --json "$OUT/paper.json" --profile "$OUT/profile-paper.txt"
cat "$OUT/summary.txt"
