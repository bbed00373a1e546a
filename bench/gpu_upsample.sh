#!/usr/bin/env bash
# One device call for the decoders' one-kernel upsample_cat and the spatial scans' chunk-parallel rule:
#   bash bench/gpu_upsample.sh OUT_DIR
# 1. GPU tests (upsample_cat, the cseq scan incl. the rows rule, the streaming GPU tests with torch.compile),
# 2. bench/upsample_speed.py (1 and 32 streams), 3. scan_ab of the spatial scan sizes between the measured ones
# (cseq=0 vs cseq=1), 4. fps (m2s2l_paper, bf16, graphs, channels_last, branches) with the decoders' upsampling as
# PyTorch's two ops vs the kernel (alternated), then the kernel with torch.compile. Each stage prints as it ends.
set -u
OUT=${1:?OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
M2S2L_TEST_GPU=1 timeout 200 python3 -m pytest -q tests/triton_kernels/test_upsample_cat.py \
  tests/triton_kernels/test_selective_scan_cseq.py > "$OUT/tests.txt" 2>&1
echo "== upsample + cseq GPU tests rc=$?"; tail -3 "$OUT/tests.txt"
timeout 90 python3 bench/upsample_speed.py --streams 1,32 > "$OUT/ups.txt" 2>&1
echo "== upsample_speed rc=$?"; cat "$OUT/ups.txt"
timeout 90 python3 bench/scan_ab.py --shapes "" --dims "2,1024,256;4,1024,256;8,1024,256" --modes fwd,fwdbwd \
  --cfgs cseq=0 cseq=1 > "$OUT/ab_rows.txt" 2>&1
echo "== scan_ab rows rc=$?"; grep -A14 "^shape" "$OUT/ab_rows.txt"
FPS_TIMEOUT=80 bash bench/gpu_fps_flags.sh "$OUT/fps" "--branches --upsample-backend torch" "--branches" \
  "--branches --upsample-backend torch" "--branches"
FPS_TIMEOUT=200 bash bench/gpu_fps_flags.sh "$OUT/fps_compile" "--branches --compile"
M2S2L_TEST_GPU=1 timeout 120 python3 -m pytest -q tests/engine/test_stream.py -k gpu > "$OUT/stream_tests.txt" 2>&1
echo "== stream GPU tests rc=$?"; tail -3 "$OUT/stream_tests.txt"
