#!/usr/bin/env bash
# One device call (GPU box, repo root): the sequential scan kernels' 2-D vs 3-D state tiles (scan_config.use_3d),
# same process per table: bench/scan_ab.py on the video shapes (fwd, fwd+bwd) and on the temporal model's
# last-only shapes, then bench/fps.py (m2s2l_paper, bf16, CUDA graphs, channels_last, branches) alternating the
# old layouts and the defaults, bench/speed.py's scan table against mamba-ssm (if _carry/peers_site is carried), then
# the scan's GPU tests in the time left. Tables printed last.
#   bash bench/gpu_layout3d.sh OUT_DIR
set -u
OUT=${1:?OUT_DIR}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
OLD="last3d=0,seq3d=0,seq_bwd3d=0"
timeout 120 python3 bench/scan_ab.py --shapes temporal8,temporal16 --modes fwd,fwdbwd \
  --cfgs "$OLD" default "seq_bwd3d=1" "$OLD" --json "$OUT/ab_video.json" > "$OUT/ab_video.txt" 2>&1
echo "ab video rc=$? ($SECONDS s)"
timeout 90 python3 bench/scan_ab.py --shapes temporal8 --modes fwd --last-only \
  --dims "524288,64,4;524288,64,2;131072,128,4;32768,256,4;8192,512,2" \
  --cfgs "$OLD" default "$OLD" default --json "$OUT/ab_last.json" > "$OUT/ab_last.txt" 2>&1
echo "ab last rc=$? ($SECONDS s)"
# the same-run table against mamba-ssm (its CUDA build saved by an earlier call, carried as _carry/peers_site)
SITE=/tmp/m2s2l_peers_site; mkdir -p "$SITE"
if ls _carry/peers_site/peers_site.tgz.* > /dev/null 2>&1; then
  cat _carry/peers_site/peers_site.tgz.* | tar -xzf - -C "$SITE"
  PYTHONPATH=$SITE:${PYTHONPATH:-} timeout 200 python3 bench/speed.py --ops scan --dtypes bf16 --impls triton \
    --json "$OUT/speed_scan.json" > "$OUT/speed_scan.txt" 2>&1
  echo "speed scan rc=$? ($SECONDS s)"
fi
FPS_TIMEOUT=110 bash bench/gpu_fps_flags.sh "$OUT/fps" "--branches --scan-cfg $OLD" "--branches" \
  "--branches --scan-cfg $OLD" "--branches" > "$OUT/fps.txt" 2>&1
echo "fps rc=$? ($SECONDS s)"
M2S2L_TEST_GPU=1 timeout $(( ${TOTAL_S:-570} - SECONDS )) python3 -m pytest -q -x -p no:cacheprovider \
  tests/triton_kernels/test_selective_scan.py tests/triton_kernels/test_selective_scan_cseq.py > "$OUT/tests.txt" 2>&1
echo "tests rc=$? ($SECONDS s)"; grep -E "^FAILED|passed|failed|error" "$OUT/tests.txt" | tail -5
grep -v -i warn "$OUT/ab_video.txt" | tail -20
grep -v -i warn "$OUT/ab_last.txt" | tail -24
tail -6 "$OUT/fps.txt"
grep -v -i warn "$OUT/speed_scan.txt" 2>/dev/null | tail -14
