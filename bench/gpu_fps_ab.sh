#!/usr/bin/env bash
# Issue 7 on the GPU box (repo root): fps of m2s2l_paper for an older tree and this one, in
# the same call (bf16, CUDA graphs, channels_last; `python bench/fps.py ... --modes stream,batched`, two interleaved
# rounds); a profile of this tree's batched step (no graphs); the GPU tests of the session-8 changes. JSON under
# $OUT; table last.
#   here:    rm -rf _carry/old && mkdir -p _carry/old && git archive REV | tar -x -C _carry/old --exclude=checkpoints
#   device:  bash bench/gpu_fps_ab.sh          (carry _carry/old and _carry/wheels)
# STAGES (default "fps profile tests", ~8 min in all; e.g. STAGES="fps" then STAGES="profile tests") picks the parts.
set -u
OUT=${OUT:-/tmp/m2s2l_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name --format=csv,noheader
t() { timeout "$@" 2>&1 | grep -v -i warn; }
STAGES=" ${STAGES:-fps profile tests} "
on() { [[ "$STAGES" == *" $1 "* ]]; }
common="--preset m2s2l_paper --amp --cuda-graphs --channels-last --modes stream,batched --seconds 2"
on fps && for round in 1 2; do   # two rounds, interleaved: old, new
  if [ -d _carry/old/m2s2l ]; then
    (cd _carry/old && PYTHONPATH=$PWD t 90 python3 bench/fps.py $common --json "$OUT/fps_old_$round.json" | tail -2)
  fi
  t 90 python3 bench/fps.py $common --json "$OUT/fps_new_$round.json" | tail -2
done
if on profile; then
  t 90 python3 bench/fps.py --preset m2s2l_paper --amp --channels-last --modes batched --seconds 1 --profile 20 | \
    tail -18 > "$OUT/profile_batched.txt"
fi
on tests && pip install -q --no-index --find-links _carry/wheels pytest 2>/dev/null | tail -1
on tests && M2S2L_TEST_GPU=1 t 200 python3 -m pytest -q tests/modules/test_layer_norm_module.py \
  tests/modules/test_mamba.py tests/models/test_m2s2l.py tests/engine/test_stream.py \
  tests/triton_kernels/test_selective_scan.py tests/triton_kernels/test_selective_scan_cseq.py \
  -k "out_dtype or last_only or cuda_graph" | tail -3
cat "$OUT/profile_batched.txt" 2>/dev/null
python3 - "$OUT" <<'PY'
import glob, json, os, sys
print("\n# fps (frames/s), m2s2l_paper, bf16, CUDA graphs, channels_last")
for f in sorted(glob.glob(f"{sys.argv[1]}/fps_*.json")):
    r = json.load(open(f))["modes"]
    print(f"{os.path.basename(f)[4:-5]:<8} " + "  ".join(f"{k} {v['fps']:8.1f}" if "fps" in v else f"{k} {v}"
                                                    for k, v in r.items()))
PY
echo "== done at $SECONDS s"
