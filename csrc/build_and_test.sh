#!/usr/bin/env bash
# Build the optional CUDA extension m2s2l._C and run its tests, in one go, on a GPU machine:
#   bash csrc/build_and_test.sh            (from the repository root)
# Prints a SUMMARY block at the end; exit code 0 only if the build and every test passed.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${LOG_DIR:-/tmp}/m2s2l_cuda_build.log
export M2S2L_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} M2S2L_TEST_GPU=1 M2S2L_REQUIRE_CUDA_EXT=1
echo "== environment"
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.is_available())"
nvcc --version 2>/dev/null | tail -1 || echo "nvcc not found"
echo "nvcc: $(command -v nvcc) | CUDA_HOME=${CUDA_HOME:-unset (setup.py picks a toolkit with include/cuda_runtime.h)}"
if command -v ninja >/dev/null || python -c "import ninja" 2>/dev/null; then echo "ninja: yes (parallel build, MAX_JOBS=$MAX_JOBS)"
else echo "ninja: NO (torch compiles the sources one by one: slower)"; fi

echo "== build (log: $LOG)"
t0=$(date +%s)
pip install -e . --no-build-isolation --no-deps -v > "$LOG" 2>&1
rc=$?
if ! python -c "import m2s2l._C" 2>/dev/null; then
  echo "pip install -e . did not give an importable m2s2l._C (rc=$rc); trying setup.py build_ext --inplace"
  python setup.py build_ext --inplace >> "$LOG" 2>&1
fi
t1=$(date +%s)
if python -c "import m2s2l._C as C; print('built', C.__file__)"; then BUILD="ok in $((t1 - t0)) s"
else
  BUILD="FAILED after $((t1 - t0)) s"
  grep -n -E "error|Error" "$LOG" | head -40
  tail -30 "$LOG"
fi

echo "== tests"
TESTS="not run"
if [[ $BUILD == ok* ]]; then
  TO=""; python -c "import pytest_timeout" 2>/dev/null && TO="--timeout 900"
  python -m pytest tests/test_cuda_ext.py -q -rf --maxfail=60 $TO -p no:cacheprovider 2>&1 \
    | tee /tmp/m2s2l_cuda_tests.log | grep -v "^SKIPPED" | tail -80
  TESTS=$(tail -1 /tmp/m2s2l_cuda_tests.log)
fi
echo "== SUMMARY"
echo "build: $BUILD"
echo "tests: $TESTS"
[[ $BUILD == ok* ]] && [[ $TESTS == *passed* ]] && [[ $TESTS != *failed* ]] && [[ $TESTS != *error* ]]
