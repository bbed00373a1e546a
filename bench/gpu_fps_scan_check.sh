#!/usr/bin/env bash
# One device call (GPU box, repo root; _carry/wheels carried for pytest): the GPU tests of the short-row LayerNorm
# and of the opt-in short-sequence scan backward, then in one run on one card: LayerNorm Triton vs PyTorch,
# scan backward default vs short_bwd=1 (tune_scan), fps with the LayerNorm modules on PyTorch's kernel vs Triton,
# and the host-side optical-flow cost of a flow model. Tables in $OUT/*.txt, printed at the end.
set -u
OUT=${OUT:-/tmp/m2s2l_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import pytest" 2>/dev/null || pip install -q --no-deps _carry/wheels/*.whl > /dev/null 2>&1
M2S2L_TEST_GPU=1 timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/triton_kernels/test_layer_norm.py \
  tests/triton_kernels/test_selective_scan_short.py > "$OUT/gpu_tests.txt" 2>&1; echo "gpu tests rc=$? at $SECONDS s"
timeout 90 python3 bench/layer_norm_speed.py --dtypes bf16 > "$OUT/ln.txt" 2>&1; echo "ln rc=$? at $SECONDS s"
timeout 170 python3 bench/tune_scan.py --shapes temporal8,temporal16 --modes fwdbwd --budget-s ${TUNE_S:-100} \
  > "$OUT/tune.txt" 2>&1; echo "tune rc=$? at $SECONDS s"
for ln in torch auto; do
  timeout 100 python3 bench/fps.py --preset m2s2l_paper --amp --cuda-graphs --channels-last --modes stream,batched \
    --seconds 2 --ln-backend $ln > "$OUT/fps_ln_$ln.txt" 2>&1; echo "fps ln=$ln rc=$? at $SECONDS s"
done
timeout 40 python3 bench/fps.py --device cpu --preset m2s2l_paper --set in_channels=1 --modes flow --seconds 2 \
  --threads 1 > "$OUT/fps_flow.txt" 2>&1
for f in gpu_tests ln tune fps_ln_torch fps_ln_auto fps_flow; do echo "=== $f"; grep -v -i "warn" "$OUT/$f.txt" | tail -${TAIL:-28}; done
