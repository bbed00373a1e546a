#!/usr/bin/env bash
# One device call to verify and time the sequential forward's first-step peel (M2S2L_SCAN_CFG=peel=0 turns it off):
#   bash bench/gpu_peel.sh OUT_DIR
# 1. the last_only scan tests on CUDA, 2. scan_ab peel=0 vs default (twice each, interleaved) on the video model's
# last-only scans and the temporal16 shape, 3. fps (m2s2l_paper, bf16, graphs, channels_last, branches) with the
# peel off / on, each in its own process. Each stage prints as it ends, so a call cut short returns what ran.
set -u
OUT=${1:?OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
M2S2L_TEST_GPU=1 timeout 150 python3 -m pytest -q -x tests/triton_kernels/test_selective_scan.py -k last_only \
  > "$OUT/tests.txt" 2>&1
echo "== last_only GPU tests rc=$?"; tail -3 "$OUT/tests.txt"
timeout 120 python3 bench/scan_ab.py --shapes temporal8 --dims "524288,64,4;524288,64,2;131072,128,4" --modes fwd \
  --last-only --cfgs peel=0 default peel=0 default > "$OUT/ab_last.txt" 2>&1
echo "== scan_ab last_only rc=$?"; tail -12 "$OUT/ab_last.txt"
timeout 90 python3 bench/scan_ab.py --shapes temporal8,temporal16 --modes fwd --cfgs peel=0 default peel=0 default \
  > "$OUT/ab_full.txt" 2>&1
echo "== scan_ab full rc=$?"; tail -8 "$OUT/ab_full.txt"
for p in 0 1 0 1; do
  M2S2L_SCAN_CFG=peel=$p timeout 100 python3 bench/fps.py --preset m2s2l_paper --amp --cuda-graphs --channels-last \
    --modes stream,batched --seconds 2 --branches > "$OUT/fps_peel$p.txt" 2>&1
  echo "== fps peel=$p rc=$?"; grep -iE "stream|batched" "$OUT/fps_peel$p.txt" | tail -3
done
