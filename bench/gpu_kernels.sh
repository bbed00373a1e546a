#!/usr/bin/env bash
# One device call (GPU box, repo root): environment facts, the GPU correctness suite, the peers' CUDA build
# (in the background, ~7 min on 16 cores), then `bench/speed.py` against the peers.
#   bash bench/gpu_kernels.sh PEERS_DIR OUT_DIR [speed.py args...]
# Env: BENCH_OPS (default "scan conv mamba"), PEERS_SAVE / PEERS_SITE_DIR (save / reuse the built peers: below),
# WHILE_BUILDING (a command run after the tests, while the peers build),
# PEERS_DEADLINE_S / TOTAL_S (seconds into the call to stop waiting for the build / to end the bench), GPU_TESTS /
# TESTS_S (the test paths, default tests/triton_kernels tests/modules tests/models, and their time limit, 200 s).
# PEERS_DIR holds shared/peers/peers.py and the two sdists (copy them into a git-ignored folder and carry it).
set -u
PEERS=${1:-_carry/peers}; OUT=${2:-${OUT:-/tmp/m2s2l_out}}; shift 2 || true
mkdir -p "$OUT"
SITE=/tmp/m2s2l_peers_site
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
for m in sklearn PIL tqdm matplotlib scipy cv2 onnx onnxruntime fvcore pytest pytest_timeout; do
  python3 -c "import $m" 2>/dev/null && echo "have $m" || echo "MISSING $m"; done | tee -a "$OUT/gpu.txt"
# The build runs in its own session (setsid) with its log under $SITE, so that it survives the end of this call and a
# later call on the same (still warm) machine finds it running or done; a second call does not start a second build.
# A site saved by an earlier build (PEERS_SAVE=1 writes it to OUT_DIR as peers_site.tgz.* pieces of 15 MiB; keep
# them in a git-ignored folder and carry it) is unpacked instead of building: PEERS_SITE_DIR (default
# _carry/peers_site). It only fits the same torch / CUDA / GPU as the build.
mkdir -p "$SITE"
SAVED=${PEERS_SITE_DIR:-_carry/peers_site}
if [ ! -f "$SITE/selective_scan_cuda.so" ] && ls "$SAVED"/peers_site.tgz.* > /dev/null 2>&1; then
  cat "$SAVED"/peers_site.tgz.* | tar -xzf - -C "$SITE" && touch "$SITE/build.started" "$SITE/build.done" \
    && echo "rc=0 (unpacked from $SAVED)" > "$SITE/build.log"
fi
if [ ! -f "$SITE/selective_scan_cuda.so" ] && [ -f "$PEERS/peers.py" ] && [ ! -f "$SITE/build.started" ]; then
  touch "$SITE/build.started"
  setsid nohup nice -n 10 bash -c "python3 '$PEERS/peers.py' build '$PEERS' '$SITE' > '$SITE/build.log' 2>&1; \
    echo rc=\$? >> '$SITE/build.log'; touch '$SITE/build.done'" > /dev/null 2>&1 &
fi
if ! M2S2L_BUILD_CUDA=0 pip install -q -e . --no-deps --no-build-isolation > "$OUT/install.log" 2>&1; then
  echo "editable install failed; falling back to a source-tree link"; ln -sfn ../triton_kernels m2s2l/triton_kernels
  export PYTHONPATH=$PWD:${PYTHONPATH:-}
fi
START=$SECONDS
M2S2L_TEST_GPU=1 timeout ${TESTS_S:-200} python3 -m pytest ${GPU_TESTS:-tests/triton_kernels tests/modules tests/models} -q -x -p no:cacheprovider \
  > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests rc=$? ($((SECONDS-START)) s)"; tail -5 "$OUT/gpu_tests.log"
# optional work while the peers build (e.g. a same-run A/B of launch configs): WHILE_BUILDING="cmd"
if [ -n "${WHILE_BUILDING:-}" ]; then eval "$WHILE_BUILDING"; echo "while-building rc=$? ($SECONDS s)"; fi
# wait for the peers' build, but leave time for the bench inside one 10-minute command
while [ -f "$SITE/build.started" ] && [ ! -f "$SITE/build.done" ] && [ $SECONDS -lt ${PEERS_DEADLINE_S:-430} ]; do
  sleep 5; done
cp "$SITE/build.log" "$OUT/peers_build.log" 2>/dev/null; tail -2 "$OUT/peers_build.log" 2>/dev/null
if [ -n "${PEERS_SAVE:-}" ] && [ -f "$SITE/selective_scan_cuda.so" ]; then  # the built site, for later sessions
  (cd "$SITE" && tar -czf - selective_scan_cuda.so causal_conv1d_cuda.so mamba_ssm causal_conv1d) \
    | split -b 15m - "$OUT/peers_site.tgz." && ls -la "$OUT"/peers_site.tgz.*
fi
for op in ${BENCH_OPS:-scan conv mamba}; do
  PYTHONPATH=$SITE:${PYTHONPATH:-} timeout $(( ${TOTAL_S:-585} - SECONDS )) python3 bench/speed.py --ops $op \
    --json "$OUT/speed_$op.json" "$@" > "$OUT/speed_$op.txt" 2>&1; echo "speed $op rc=$?"
done
for op in ${BENCH_OPS:-scan conv mamba}; do cat "$OUT/speed_$op.txt" | grep -v -i warn | tail -40; done
