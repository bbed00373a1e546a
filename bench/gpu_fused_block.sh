#!/usr/bin/env bash
# One device call to verify and measure the fused temporal block (m2s2l.ops.mamba_block_last) on a GPU:
#   bash bench/gpu_fused_block.sh OUT_DIR
# 1. its GPU tests (every test of tests/triton_kernels/test_mamba_block.py runs on CUDA there), 2. the paper model's
# temporal outputs and predictions fused vs unfused (bench/fused_block_check.py), 3. fps with the blocks unfused /
# fused, with branches (bench/gpu_fps_flags.sh), 4. the step's parts with the fused blocks (bench/fps_parts.py),
# 5. the streaming GPU tests (tests/engine/test_stream.py, *_gpu). Each stage prints its result as it ends, so a
# call cut by the device's time limit still returns what ran. Env: FPS_TIMEOUT (seconds a flag set, default 100).
set -u
OUT=${1:?OUT_DIR}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
M2S2L_TEST_GPU=1 timeout 150 python3 -m pytest -q -x tests/triton_kernels/test_mamba_block.py > "$OUT/tests.txt" 2>&1
echo "== op tests rc=$?"; tail -4 "$OUT/tests.txt"
timeout 90 python3 bench/fused_block_check.py > "$OUT/check.txt" 2>&1
echo "== check rc=$?"; tail -4 "$OUT/check.txt"
FPS_TIMEOUT=${FPS_TIMEOUT:-100} bash bench/gpu_fps_flags.sh "$OUT/fps" "--fused-block off --branches" \
  "--fused-block on --branches" > "$OUT/flags.txt" 2>&1
echo "== fps"; cat "$OUT/flags.txt"
timeout 110 python3 bench/fps_parts.py --streams 1,32 --fused-block on > "$OUT/parts.txt" 2>&1
echo "== parts rc=$?"; cat "$OUT/parts.txt"
M2S2L_TEST_GPU=1 timeout 90 python3 -m pytest -q tests/engine/test_stream.py -k gpu > "$OUT/stream_tests.txt" 2>&1
echo "== stream GPU tests rc=$?"; tail -4 "$OUT/stream_tests.txt"
