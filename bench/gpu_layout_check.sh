#!/usr/bin/env bash
# Issue 7 / 2 on the GPU box (repo root), one call (~5 min): the session-6 inference changes measured against their
# baselines in the same call -- (1) GPU tests of the Mamba "channel" layout, BatchNorm folding and StreamScorer's
# CUDA graphs; (2) fps of m2s2l_paper (bf16, CUDA graphs, channels_last) with Mamba.layout time vs auto and
# BatchNorm folded vs not; (3) the Mamba block table (speed.py --ops mamba: "triton" = time layout, "triton-chan" = channel layout). JSON under $OUT.
#   bash bench/gpu_layout_check.sh
set -u
OUT=${OUT:-/tmp/m2s2l_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name --format=csv,noheader
pip install -q --no-index --find-links _carry/wheels pytest 2>/dev/null | tail -1
M2S2L_TEST_GPU=1 timeout 240 python3 -m pytest -q tests/modules/test_mamba.py tests/models/test_fuse.py \
  tests/engine/test_stream.py -k "layout or fuse or cuda_graph" 2>&1 | tail -3
common="--preset m2s2l_paper --amp --cuda-graphs --channels-last --modes stream,batched --seconds 2"
for v in "--no-fuse-bn --mamba-layout time" "--mamba-layout time" "--mamba-layout auto"; do
  tag=$(echo "$v" | tr -d ' -'); timeout 120 python3 bench/fps.py $common $v --json "$OUT/fps_$tag.json" 2>&1 | \
    grep -v Warn | tail -3
done
timeout 200 python3 bench/speed.py --ops mamba --dtypes bf16 --json "$OUT/mamba.json" 2>&1 | grep -v Warn | tail -12
echo "== done at $SECONDS s"
