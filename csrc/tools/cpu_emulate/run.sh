#!/usr/bin/env bash
# CPU emulation of the csrc CUDA kernels (no GPU): the real .cuh sources compiled with g++ and AddressSanitizer
# through shim.h (one std::thread per CUDA thread, barriers for __syncthreads, lock-step warp shuffles, mutex
# atomics; <<<>>> launches rewritten to emu_launch), driven by harness.py against the float64 references.
#   bash csrc/tools/cpu_emulate/run.sh [scan|conv|all]        (~2 min build, ~1-2 min run on 2 cores)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); CSRC=$HERE/../..
W=$(mktemp -d); mkdir -p "$W/src/selective_scan" "$W/src/causal_conv1d"
for f in common.cuh selective_scan/selective_scan.h selective_scan/selective_scan_fwd.cuh \
         selective_scan/selective_scan_bwd.cuh causal_conv1d/causal_conv1d.h causal_conv1d/causal_conv1d.cuh; do
  python3 - "$CSRC/$f" "$W/src/$f" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
s = re.sub(r"(\w+<[^<>;]*>)<<<(.+?), (\w+), 0, s>>>\(p\);", r"emu_launch(\2, \3, [&] { \1(p); });", s)
open(sys.argv[2], "w").write(s.replace("#include <cuda_fp16.h>", '#include "shim.h"', 1))
PY
done
CUDA_INC=${CUDA_HOME:-/usr/local/cuda}/include
g++ -std=c++20 -O1 -g -fsanitize=address -fno-omit-frame-pointer -shared -fPIC -I"$HERE" -I"$W/src" -I"$CUDA_INC" \
  "$HERE/driver.cpp" -o "$W/libemu.so"
EMU_LIB=$W/libemu.so LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)" \
  ASAN_OPTIONS=detect_leaks=0 python "$HERE/harness.py" "${1:-all}"
