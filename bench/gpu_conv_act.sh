#!/usr/bin/env bash
# One device call for the BN-folded convolutions with their bias / residual / ReLU as one cuDNN call (ConvAct):
#   bash bench/gpu_conv_act.sh OUT_DIR
# 1. GPU tests (tests/models/test_fuse.py, the streaming GPU tests: scores of the fused scorer vs offline),
# 2. fps (m2s2l_paper, bf16, graphs, channels_last, branches) with --no-conv-act vs default, alternated,
# 3. the default with torch.compile (ConvAct runs the plain ops under compile). Each stage prints as it ends.
set -u
OUT=${1:?OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
M2S2L_TEST_GPU=1 timeout 150 python3 -m pytest -q tests/models/test_fuse.py tests/engine/test_stream.py -k "gpu" \
  > "$OUT/tests.txt" 2>&1
echo "== GPU tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/tests.txt" | tail -8
A="--preset m2s2l_paper --amp --cuda-graphs --channels-last --modes stream,batched --seconds 2 --branches"
for f in --no-conv-act "" --no-conv-act ""; do
  # shellcheck disable=SC2086
  timeout 80 python3 bench/fps.py $A $f > "$OUT/fps.txt" 2>&1
  echo "== fps [$f] rc=$?"; grep -E "frames/s" "$OUT/fps.txt" | tail -2
done
# shellcheck disable=SC2086
timeout 150 python3 bench/fps.py $A --compile > "$OUT/fps_compile.txt" 2>&1
echo "== fps compile rc=$?"; grep -E "frames/s" "$OUT/fps_compile.txt" | tail -2
