#!/usr/bin/env bash
# Issue 7 on the GPU box (repo root), one call: where the streaming step's time goes and whether torch.compile
# helps, same machine, same call. (1) the baseline (bf16, CUDA graphs, channels_last); (2) the same step under
# torch.compile (inductor: fuses the elementwise/norm kernels around the convolutions; the m2s2l:: ops stay opaque);
# (3) a kernel profile of the batched step without graphs; (4) if time is left, compile with the plain-PyTorch
# Mamba ops (inductor fuses the short scan loops too). JSON results under $OUT.
#   bash bench/gpu_fps_compile.sh [DEADLINE_S=540]
set -u
OUT=${OUT:-/tmp/m2s2l_out}; mkdir -p "$OUT"; DEADLINE=${1:-540}
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name --format=csv,noheader
git log --oneline -1 2>/dev/null || true
left() { echo $(( DEADLINE - SECONDS )); }
common="--preset m2s2l_paper --amp --channels-last --modes stream,batched --seconds 2"
timeout 150 python3 bench/fps.py $common --cuda-graphs --json "$OUT/fps_base.json" 2>&1 | grep -v Warning | tail -6
timeout $(( $(left) - 150 )) python3 bench/fps.py $common --cuda-graphs --compile --json "$OUT/fps_compile.json" 2>&1 | \
  grep -v Warning | tail -8
timeout 90 python3 bench/fps.py --preset m2s2l_paper --amp --channels-last --modes batched --seconds 1 --profile 2 2>&1 | \
  grep -v Warning | tail -22
[ "$(left)" -gt 60 ] && timeout $(( $(left) - 5 )) python3 bench/fps.py $common --cuda-graphs --compile --pure-torch \
  --json "$OUT/fps_compile_pure.json" 2>&1 | grep -v Warning | tail -8
echo "== done at $SECONDS s"
