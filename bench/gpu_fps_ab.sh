#!/usr/bin/env bash
# Issues 7 / 2 on the GPU box (repo root): the [N, channels] scan forward (seq_nd) swept against
# the default (bench/tune_scan.py --nd); fps of m2s2l_paper for an older tree, this one, and this one with seq_nd, in
# the same call (bf16, CUDA graphs, channels_last; `python bench/fps.py ... --modes stream,batched`, two interleaved
# rounds); a profile of this tree's batched step (no graphs); the GPU tests of the session-8 changes. JSON under
# $OUT; table last.
#   here:    rm -rf _carry/old && mkdir -p _carry/old && git archive REV | tar -x -C _carry/old --exclude=checkpoints
#   device:  bash bench/gpu_fps_ab.sh          (carry _carry/old and _carry/wheels)
# STAGES (default "tune fps profile tests", ~10 min in all: split over two calls, e.g. STAGES="tune fps" then
# STAGES="profile tests") picks the parts.
set -u
OUT=${OUT:-/tmp/m2s2l_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name --format=csv,noheader
t() { timeout "$@" 2>&1 | grep -v -i warn; }
STAGES=" ${STAGES:-tune fps profile tests} "
on() { [[ "$STAGES" == *" $1 "* ]]; }
common="--preset m2s2l_paper --amp --cuda-graphs --channels-last --modes stream,batched --seconds 2"
# the [N, channels] sequential scan forward (M2S2L_SCAN_CFG seq_nd=1, not yet timed before this script): the issue-2
# shapes and the 32-stream video shapes, forward (+ backward on the short and long bench shapes)
if on tune; then
  t 150 python3 bench/tune_scan.py --shapes temporal8,temporal16,stream64,stream128 --modes fwd --nd \
    --layout channel --budget-s 100 --json "$OUT/tune_nd_chan.json" | tail -8
  t 150 python3 bench/tune_scan.py --shapes temporal8,LM,spatial --modes fwd,fwdbwd --nd --budget-s 110 \
    --json "$OUT/tune_nd_time.json" | tail -10
fi
on fps && for round in 1 2; do   # two rounds, interleaved: old, new, new with seq_nd
  if [ -d _carry/old/m2s2l ]; then
    (cd _carry/old && PYTHONPATH=$PWD t 90 python3 bench/fps.py $common --json "$OUT/fps_old_$round.json" | tail -2)
  fi
  t 90 python3 bench/fps.py $common --json "$OUT/fps_new_$round.json" | tail -2
  M2S2L_SCAN_CFG=seq_nd=1 t 90 python3 bench/fps.py $common --json "$OUT/fps_nd_$round.json" | tail -2
done
if on profile; then
  t 90 python3 bench/fps.py --preset m2s2l_paper --amp --channels-last --modes batched --seconds 1 --profile 20 | \
    tail -18 > "$OUT/profile_batched.txt"
fi
on tests && pip install -q --no-index --find-links _carry/wheels pytest 2>/dev/null | tail -1
on tests && M2S2L_TEST_GPU=1 t 200 python3 -m pytest -q tests/modules/test_layer_norm_module.py \
  tests/modules/test_mamba.py tests/models/test_m2s2l.py tests/engine/test_stream.py \
  tests/triton_kernels/test_selective_scan.py tests/triton_kernels/test_selective_scan_cseq.py \
  -k "out_dtype or last_only or cuda_graph or seq_nd or cseq_nd" | tail -3
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
