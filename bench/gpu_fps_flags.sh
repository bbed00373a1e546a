#!/usr/bin/env bash
# One device call: `bench/fps.py` (m2s2l_paper, bf16, CUDA graphs, channels_last, streaming batch 1 and 32 streams)
# once per flag set, in the order given, each in its own process; a summary table last (with a StreamScorer column
# when FPS_ARGS asks for --modes ...,scorer).
#   bash bench/gpu_fps_flags.sh OUT_DIR "FLAGS_1" "FLAGS_2" ...     (e.g. "" "--branches")
# A flag set "@DIR FLAGS" runs DIR's bench/fps.py (another tree, e.g. `git archive REV` unpacked into a git-ignored
# folder and carried) with FLAGS: trees A/B'd in one call, e.g. "@_carry/old --branches" "--branches".
# Env: FPS_ARGS (default: --preset m2s2l_paper --amp --cuda-graphs --channels-last --modes stream,batched
# --seconds 2), FPS_TIMEOUT (seconds a flag set, default 240), GPU_TESTS (pytest arguments: run these with
# M2S2L_TEST_GPU=1 first, e.g. "tests/models/test_fuse.py -k gpu"; its summary is printed).
set -u
OUT=${1:?OUT_DIR}; shift
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
if [ -n "${GPU_TESTS:-}" ]; then
  nvidia-smi --query-gpu=name --format=csv,noheader
  eval "M2S2L_TEST_GPU=1 timeout 200 python3 -m pytest -q $GPU_TESTS" > "$OUT/tests.txt" 2>&1  # (quotes kept)
  echo "== GPU tests rc=$?"; grep -E "^FAILED|passed|failed" "$OUT/tests.txt" | tail -8
fi
ARGS=${FPS_ARGS:---preset m2s2l_paper --amp --cuda-graphs --channels-last --modes stream,batched --seconds 2}
i=0
for flags in "$@"; do
  i=$((i + 1))
  dir=.; f=$flags
  case "$flags" in @*) dir=${flags%% *}; dir=${dir#@}; f=${flags#"@$dir"}; f=${f# };; esac
  # shellcheck disable=SC2086
  (cd "$dir" && timeout "${FPS_TIMEOUT:-240}" python3 bench/fps.py $ARGS $f --json "$OUT/fps_$i.json") \
    > "$OUT/fps_$i.txt" 2>&1
  echo "flags [$flags] rc=$?"
done
i=0
echo "| flags | streaming, batch 1 | 32 streams batched | StreamScorer (--streams) |"
for flags in "$@"; do
  i=$((i + 1))
  python3 - "$OUT/fps_$i.json" "$flags" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))["modes"]
except Exception as e:
    print(f"| {sys.argv[2]} | failed: {e} | |"); sys.exit()
cell = lambda m: (f"{r[m]['fps']:.1f} frames/s ({r[m]['ms_per_call']:.2f} ms)" if "fps" in r.get(m, {})
                  else r.get(m, {}).get("error", "-")[:80])
print(f"| {sys.argv[2] or '(baseline)'} | {cell('stream')} | {cell('batched')} | {cell('scorer')} |")
PY
done
