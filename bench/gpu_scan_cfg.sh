#!/usr/bin/env bash
# One device call to verify and time selective-scan launch configs (M2S2L_SCAN_CFG values), e.g.
#   bash bench/gpu_scan_cfg.sh OUT_DIR peel=0 default          (the first-step peel off / on)
#   bash bench/gpu_scan_cfg.sh OUT_DIR short_last=0,fast_sp=0 short_last=0 default
# 1. the scan's CUDA tests (pytest -k "$SCAN_TESTS", default last_only; "" skips) under every config,
# 2. bench/scan_ab.py: the configs (alternated twice) on the video model's last-only scans (SCAN_DIMS) and the
#    temporal8 / temporal16 shapes with every output (modes SCAN_MODES, default fwd; e.g. fwd,fwdbwd),
# 3. bench/fps.py (m2s2l_paper, bf16, graphs, channels_last, branches) under each config (or those of FPS_CFGS,
#    space-separated; "none" skips; alternated twice), each in its own process.
# Each stage prints as it ends, so a call cut short returns what ran.
set -u
OUT=${1:?OUT_DIR}; shift
CFGS=("$@")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
TESTS=${SCAN_TESTS-last_only}
env_of() { if [ "$1" = default ]; then echo ""; else echo "$1"; fi; }
fname() { echo "$1" | tr '=,' '-_'; }  # (file names without = or ,)
if [ -n "$TESTS" ]; then
  for c in "${CFGS[@]}"; do
    M2S2L_SCAN_CFG=$(env_of "$c") M2S2L_TEST_GPU=1 timeout 200 python3 -m pytest -q -x \
      tests/triton_kernels/test_selective_scan.py -k "$TESTS" > "$OUT/tests_$(fname "$c").txt" 2>&1
    echo "== GPU scan tests [$c] rc=$?"; tail -1 "$OUT/tests_$(fname "$c").txt"
  done
fi
DIMS=${SCAN_DIMS:-524288,64,4;524288,64,2;131072,128,4;131072,128,2;32768,256,4}
timeout 150 python3 bench/scan_ab.py --shapes temporal8 --dims "$DIMS" --modes fwd --last-only \
  --cfgs "${CFGS[@]}" "${CFGS[@]}" > "$OUT/ab_last.txt" 2>&1
echo "== scan_ab last_only rc=$?"; grep -E "^[0-9]+," "$OUT/ab_last.txt"
timeout 150 python3 bench/scan_ab.py --shapes temporal8,temporal16 --modes "${SCAN_MODES:-fwd}" \
  --cfgs "${CFGS[@]}" "${CFGS[@]}" \
  > "$OUT/ab_full.txt" 2>&1
echo "== scan_ab full rc=$?"; grep -E "^temporal" "$OUT/ab_full.txt"
read -r -a FCFGS <<< "${FPS_CFGS:-${CFGS[*]}}"
for rep in 1 2; do
  for c in "${FCFGS[@]}"; do
    [ "$c" = none ] && continue
    M2S2L_SCAN_CFG=$(env_of "$c") timeout 100 python3 bench/fps.py --preset m2s2l_paper --amp --cuda-graphs \
      --channels-last --modes stream,batched --seconds 2 --branches > "$OUT/fps_$(fname "$c")_$rep.txt" 2>&1
    echo "== fps [$c] rc=$?"; grep -E "^streaming" "$OUT/fps_$(fname "$c")_$rep.txt" | tail -2
  done
done
