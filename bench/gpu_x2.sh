#!/usr/bin/env bash
# One 10-minute device call on a 2-GPU host (repo root, PYTHONPATH=$PWD, no install), everything this session
# still had to measure, arranged so both GPUs stay busy:
#   background: the peers' CUDA build (mamba-ssm, causal-conv1d; _carry/peers) and our CUDA extension's build;
#   both GPUs:  bench/gpu_ddp.sh (issue 9: 2-GPU step == 1-GPU doubled batch, 1 vs 2 GPU frames/s);
#   then GPU 0: tune_scan backward sweep (video + training shapes), speed.py scan/mamba rows vs mamba-ssm;
#        GPU 1: csrc/build_and_test.sh (CUDA extension), fps.py with CUDA graphs, tune_conv vs causal-conv1d.
# All logs are packed into $OUT/x2.tgz (the device returns only a few files); summaries go to stdout.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
OUT=${OUT:-/tmp/m2s2l_out}; L=/tmp/x2; SITE=/tmp/m2s2l_peers_site; mkdir -p "$OUT" "$L"
T0=$SECONDS; el() { echo "$((SECONDS - T0))"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$L/gpu.txt"
( python3 _carry/peers/peers.py build _carry/peers "$SITE" > "$L/peers_build.log" 2>&1
  echo "rc=$? at $(el) s" >> "$L/peers_build.log" ) &
( M2S2L_BUILD_CUDA=1 MAX_JOBS=8 nice -n 19 python3 setup.py build_ext --inplace > "$L/ext_build.log" 2>&1
  echo "rc=$? at $(el) s" >> "$L/ext_build.log" ) &
echo "== DDP ($(el) s)"
OUT=$L/ddp BENCH_S=${BENCH_S:-45} timeout 330 bash bench/gpu_ddp.sh > "$L/ddp.txt" 2>&1; echo "ddp rc=$? ($(el) s)"
tail -14 "$L/ddp.txt"
wait_for() { while ! grep -q "^rc=" "$1" 2>/dev/null && [ $((SECONDS - T0)) -lt "$2" ]; do sleep 3; done; tail -1 "$1"; }
(   # GPU 0
  export CUDA_VISIBLE_DEVICES=0
  timeout 110 python3 bench/tune_scan.py --shapes temporal8,temporal16,train64,train128,train256 --modes bwd \
    --budget-s 80 --json "$L/tune_scan_bwd.json" > "$L/tune_scan_bwd.txt" 2>&1; echo "tune_scan rc=$? ($(el) s)"
  wait_for "$L/peers_build.log" 420 > /dev/null
  PYTHONPATH=$SITE:$PYTHONPATH timeout $(( (575 - SECONDS + T0) > 10 ? (575 - SECONDS + T0) : 10 )) python3 bench/speed.py --ops scan,mamba --dtypes bf16 \
    --json "$L/speed.json" > "$L/speed.txt" 2>&1; echo "speed rc=$? ($(el) s)"
) > "$L/gpu0.txt" 2>&1 &
P0=$!
(   # GPU 1
  export CUDA_VISIBLE_DEVICES=1
  timeout 60 python3 bench/fps.py --preset m2s2l_paper --amp --cuda-graphs --seconds 3 --json "$L/fps_graphs.json" \
    > "$L/fps_graphs.txt" 2>&1; echo "fps rc=$? ($(el) s)"
  wait_for "$L/ext_build.log" 380 > /dev/null
  for c in scan_ok scan_dstate_300 scan_delta_shape scan_cpu_u conv_weight_shape; do
    timeout 60 python3 -X faulthandler csrc/tools/probe_throw.py $c 2>&1 | grep -v "^  File\|^Extension modules" | tail -4
    echo "   rc=${PIPESTATUS[0]}"; done > "$L/probe.txt" 2>&1
  if command -v gdb > /dev/null; then timeout 90 gdb -batch -ex run -ex bt --args python3 csrc/tools/probe_throw.py \
    scan_dstate_300 > "$L/probe_gdb.txt" 2>&1; else echo "no gdb" > "$L/probe_gdb.txt"; fi
  SKIP_BUILD=1 BUDGET=100 LOG_DIR=$L bash csrc/build_and_test.sh > "$L/ext_test.txt" 2>&1; echo "ext rc=$? ($(el) s)"
  wait_for "$L/peers_build.log" 450 > /dev/null
  PYTHONPATH=$SITE:$PYTHONPATH timeout $(( (580 - SECONDS + T0) > 10 ? (580 - SECONDS + T0) : 10 )) python3 bench/tune_conv.py \
    --budget-s $(( (520 - SECONDS + T0) > 30 ? (520 - SECONDS + T0) : 30 )) --json "$L/tune_conv.json" > "$L/tune_conv.txt" 2>&1; echo "tune_conv rc=$? ($(el) s)"
) > "$L/gpu1.txt" 2>&1 &
P1=$!
wait $P0 $P1
cat "$L/gpu0.txt" "$L/gpu1.txt"; tail -1 "$L/peers_build.log" "$L/ext_build.log"
tar -czf "$OUT/x2.tgz" --exclude='*.so' --exclude='*.pt' --exclude='x2/ddp/data' -C /tmp x2 2>/dev/null; ls -la "$OUT/x2.tgz"
echo "== probe"; cat "$L/probe.txt"; grep -A12 "SIGSEGV\|^#[0-9]" "$L/probe_gdb.txt" | head -24
echo "== ext";  grep -A25 "SUMMARY" "$L/ext_test.txt" | head -30
echo "== fps";  tail -4 "$L/fps_graphs.txt"
echo "== tune_scan bwd"; tail -12 "$L/tune_scan_bwd.txt"
echo "== tune_conv"; tail -14 "$L/tune_conv.txt"
echo "== speed"; grep -v -i warn "$L/speed.txt" | grep -E "temporal|video|bi-spatial|^op" | head -40
echo "total $(el) s"
