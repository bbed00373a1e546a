#!/usr/bin/env bash
# One-shot GPU diagnosis of the optional CUDA extension m2s2l._C, from the repository root, no pip install:
#   LOG_DIR=$OUT bash csrc/build_and_test.sh    (SKIP_BUILD=1 reuses an in-place build; ~4-6 min on an H100/H200)
# Stages, each with a header, everything on stdout:
#   1 environment   2 build (setup.py build_ext --inplace, MAX_JOBS=nproc, timed)   3 import under faulthandler
#   4 smoke: one op call per process (csrc/tools/smoke.py, CUDA_LAUNCH_BLOCKING=1), so one crash hides nothing
#   5 pytest tests/test_cuda_ext.py -x -v; 5b the first scan tests in the plain environment of the first GPU run
#   6 the public-function (backend="cuda") tests without -x (only when 5 failed) and the Triton suites' cases
#   with "cuda" in their id   7 compute-sanitizer memcheck of the smallest failing case, when something failed
#   and the tool exists.
# Stages share a time budget (BUDGET seconds, default 570) so that the SUMMARY is always printed; full logs are
# written to $LOG_DIR/m2s2l_cuda/ (pass LOG_DIR=$OUT on the device machine to get them back).
# Exit code = the number of failed stages and smoke cases (0 = all good).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
export M2S2L_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} M2S2L_TEST_GPU=1 M2S2L_REQUIRE_CUDA_EXT=1 TRITON_INTERPRET=0
LOG=${LOG_DIR:-/tmp}/m2s2l_cuda
mkdir -p "$LOG"
FAILS=0
FAILED=()
BUDGET=${BUDGET:-570}
FIRST_FAIL=""   # "smoke CASE" or "pytest NODEID": what compute-sanitizer reruns
T_START=$(date +%s)
hdr() { echo; echo "==================== $* ($(($(date +%s) - T_START)) s)"; }
fail() { FAILS=$((FAILS + 1)); FAILED+=("$*"); echo "!!! FAILED: $*"; }
left() { echo $((BUDGET - ($(date +%s) - T_START))); }
# timeout for a stage: min(wanted, what is left of the budget minus a reserve for the summary)
tmo() { local l=$(($(left) - ${2:-15})); ((l < $1)) && echo $((l > 5 ? l : 5)) || echo "$1"; }
summary() {
  hdr "SUMMARY"
  echo "failures: $FAILS${FIRST_FAIL:+ (first: $FIRST_FAIL)}; logs in $LOG"
  for f in "${FAILED[@]}"; do echo "  - $f"; done
  exit "$FAILS"
}
# rc of a python process: 0 ok, 1 failure, >128 killed by a signal (segfault 139, abort 134), 124 timeout
describe_rc() {
  case $1 in 0) echo ok;; 124) echo "TIMEOUT";; 134) echo "ABORT (SIGABRT, rc 134)";; 139) echo "SEGFAULT (rc 139)";;
    *) if (($1 > 128)); then echo "killed by signal $(($1 - 128)) (rc $1)"; else echo "failed (rc $1)"; fi;; esac
}

hdr "1 environment"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| torch cuda', torch.version.cuda, '| gpu', torch.cuda.is_available())"
echo "nvcc: $(command -v nvcc || echo none) $(nvcc --version 2>/dev/null | tail -1)"
echo "CUDA_HOME=${CUDA_HOME:-unset}  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset: setup.py takes the local GPU arch}  MAX_JOBS=$MAX_JOBS"
if command -v ninja >/dev/null || python -c "import ninja" 2>/dev/null; then echo "ninja: yes"
else echo "ninja: NO (torch compiles the sources one at a time: slower build)"; fi
SAN=$(command -v compute-sanitizer || true)
for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
  [[ -z $SAN && -n $d && -x $d/bin/compute-sanitizer ]] && SAN=$d/bin/compute-sanitizer
done
echo "compute-sanitizer: ${SAN:-not found}"

hdr "2 build"
if [[ ${SKIP_BUILD:-0} == 1 ]] && ls m2s2l/_C*.so >/dev/null 2>&1; then
  echo "SKIP_BUILD=1: reusing $(ls m2s2l/_C*.so)"
else
  rm -f m2s2l/_C*.so
  t0=$(date +%s)
  timeout "$(tmo 420 120)" python setup.py build_ext --inplace > "$LOG/build.log" 2>&1
  rc=$?
  echo "build: rc=$rc in $(($(date +%s) - t0)) s (log: $LOG/build.log)"
  if ((rc != 0)); then
    grep -n -E "error|Error" "$LOG/build.log" | head -40
    tail -30 "$LOG/build.log"
    fail "build"
    summary
  fi
  grep -E "registers|smem" "$LOG/build.log" | head -5
fi
ls -la m2s2l/_C*.so

hdr "3 import"
if ! python -X faulthandler -c "import torch, m2s2l._C as C; print('imported', C.__file__); print([n for n in dir(C) if not n.startswith('_')])"; then
  fail "import m2s2l._C"
  summary
fi

hdr "4 smoke: one op call per process (CUDA_LAUNCH_BLOCKING=1)"
for case in $(python csrc/tools/smoke.py --list); do
  if (($(left) < 150)); then fail "smoke $case: not run (time budget)"; continue; fi
  CUDA_LAUNCH_BLOCKING=1 timeout "$(tmo 120 120)" python -X faulthandler csrc/tools/smoke.py "$case" \
    > "$LOG/smoke_$case.log" 2>&1
  rc=$?
  if ((rc == 0)); then grep "OK max_rel_err" "$LOG/smoke_$case.log" || tail -1 "$LOG/smoke_$case.log"
  else  # details of the first three failures only (the rest are in the logs)
    echo "--- $case: $(describe_rc $rc)"
    ((FAILS < 3)) && grep -v "^smoke $case: device" "$LOG/smoke_$case.log" | tail -25
  fi
  if ((rc != 0)); then
    fail "smoke $case: $(describe_rc $rc)"
    [[ -z $FIRST_FAIL ]] && FIRST_FAIL="smoke $case"
  fi
done

hdr "5 pytest tests/test_cuda_ext.py -x -v"
timeout "$(tmo 300 90)" python -X faulthandler -m pytest tests/test_cuda_ext.py -x -v -p no:cacheprovider -o addopts="" -rfE \
  > "$LOG/pytest_ext.log" 2>&1
rc=$?
grep -E "FAILED|ERROR|Fatal|^E |passed|failed" "$LOG/pytest_ext.log" | tail -30
echo "tests passed: $(grep -c ' PASSED' "$LOG/pytest_ext.log"); last line: $(tail -1 "$LOG/pytest_ext.log")"
if ((rc != 0)); then
  fail "pytest test_cuda_ext.py: $(describe_rc $rc)"
  if ((rc > 128 || rc == 124)); then  # crashed: the last test that started is the culprit
    node=$(grep -o "^tests/test_cuda_ext.py::[^ ]*" "$LOG/pytest_ext.log" | tail -1)
    echo "crashed in: $node"; tail -40 "$LOG/pytest_ext.log"
  else
    node=$(grep -o "^FAILED tests/test_cuda_ext.py::[^ ]*" "$LOG/pytest_ext.log" | head -1 | cut -d' ' -f2)
  fi
  [[ -z $FIRST_FAIL && -n $node ]] && FIRST_FAIL="pytest $node"
fi

hdr "5b the first GPU run's invocation: plain pytest env (conftest then sets TRITON_INTERPRET=1), first scan tests"
env -u M2S2L_TEST_GPU -u TRITON_INTERPRET timeout "$(tmo 90 60)" python -X faulthandler -m pytest \
  tests/test_cuda_ext.py -x -v -p no:cacheprovider -o addopts="" -rfE -k "B2-D5-L1-N1 or B2-D24-L7-N4" \
  > "$LOG/pytest_plainenv.log" 2>&1
rc5b=$?
grep -E "FAILED|ERROR|Fatal|^E |passed|failed" "$LOG/pytest_plainenv.log" | tail -15
((rc5b != 0)) && fail "plain-env pytest (TRITON_INTERPRET=1 from conftest): $(describe_rc $rc5b)"

hdr "6 public functions with backend=cuda (no -x; only when 5 failed) and the Triton suites' cuda cases"
if [[ -n $(grep -l "FAILED\|Fatal" "$LOG/pytest_ext.log" 2>/dev/null) || $rc != 0 ]]; then
  timeout "$(tmo 180 60)" python -X faulthandler -m pytest tests/test_cuda_ext.py -v -p no:cacheprovider \
    -o addopts="" -rfE -k "public or opcheck" > "$LOG/pytest_public.log" 2>&1
  rc=$?
  grep -E "FAILED|ERROR|Fatal|passed|failed" "$LOG/pytest_public.log" | tail -20
  ((rc != 0)) && fail "public-function tests: $(describe_rc $rc)"
else echo "stage 5 passed completely (public tests included): skipped"; fi
timeout "$(tmo 120 60)" python -m pytest tests/triton_kernels/test_selective_scan.py \
  tests/triton_kernels/test_causal_conv1d.py -q -p no:cacheprovider -o addopts="" -k cuda > "$LOG/pytest_k_cuda.log" 2>&1
rc=$?
echo "triton suites -k cuda: $(tail -1 "$LOG/pytest_k_cuda.log")"
((rc != 0 && rc != 5)) && fail "triton suites -k cuda: $(describe_rc $rc)"  # 5 = no cuda cases there

hdr "7 compute-sanitizer"
if [[ -z $FIRST_FAIL ]]; then echo "nothing failed: skipped"
elif [[ -z $SAN ]]; then echo "first failure: $FIRST_FAIL; compute-sanitizer not found: skipped"
else
  echo "memcheck of: $FIRST_FAIL (caching allocator off, so out-of-bounds accesses are exact)"
  kind=${FIRST_FAIL%% *} what=${FIRST_FAIL#* }
  if [[ $kind == smoke ]]; then cmd=(python csrc/tools/smoke.py "$what")
  else cmd=(python -m pytest -x -q -p no:cacheprovider -o addopts="" "$what"); fi
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(tmo 300 10)" "$SAN" --tool memcheck --print-limit 10 --show-backtrace device \
    "${cmd[@]}" > "$LOG/sanitizer.log" 2>&1
  echo "sanitizer rc=$?"; grep -v "^smoke .*device" "$LOG/sanitizer.log" | head -50
fi

summary
