#!/usr/bin/env bash
# One device call for the streaming state's (B, H, W, T, C) memory order (StreamStep.STATE_ORDER):
#   bash bench/gpu_state_layout.sh OUT_DIR
# 1. the streaming GPU tests (scorer vs offline, graphs, branches, compile) and the fuse GPU tests, 2. fps
# (m2s2l_paper, bf16, graphs, channels_last, branches) with --contiguous-state vs default, alternated. Each stage
# prints as it ends.
set -u
OUT=${1:?OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
M2S2L_TEST_GPU=1 timeout 120 python3 -m pytest -q tests/engine/test_stream.py tests/models/test_fuse.py -k "gpu or roll" \
  > "$OUT/tests.txt" 2>&1
echo "== GPU tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/tests.txt" | tail -8
A="--preset m2s2l_paper --amp --cuda-graphs --channels-last --modes stream,batched --seconds 2 --branches"
for f in --contiguous-state "" --contiguous-state ""; do
  # shellcheck disable=SC2086
  timeout 70 python3 bench/fps.py $A $f > "$OUT/fps.txt" 2>&1
  echo "== fps [$f] rc=$?"; grep -E "frames/s" "$OUT/fps.txt" | tail -2
done
