#!/usr/bin/env bash
# One device call: the fused temporal block's launch configurations (M2S2L_BLOCK_CFG, read at import) at 32 streams,
# each in its own process, `bench/fps_parts.py --blocks-only --fused-block on` (the temporal blocks' rows: per level
# the unfused pieces and the fused kernel, ms a call in a CUDA graph).
#   bash bench/gpu_block_sweep.sh OUT_DIR ["block_m=16,warps=8" ...]
set -u
OUT=${1:?OUT_DIR}; shift
mkdir -p "$OUT"
[ $# -gt 0 ] || set -- "block_m=16,warps=8" "block_m=16,warps=4" "block_m=32,warps=8" "block_m=32,warps=16" \
  "block_m=16,warps=8,chunk=32" "block_m=16,warps=8,chunk=128"
for cfg in "$@"; do
  echo "== M2S2L_BLOCK_CFG=$cfg"
  M2S2L_BLOCK_CFG="$cfg" timeout 100 python3 bench/fps_parts.py --streams 32 --blocks-only --fused-block on \
    --reps 20 2>&1 | grep "whole block\|rror" | head -24
done
