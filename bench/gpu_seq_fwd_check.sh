#!/usr/bin/env bash
# Issues 2 / 7 on the GPU box (repo root), one call (~7 min): the session-8 changes measured in one call --
# (1) the persistent sequential scan forward (`seq_fwd_progs_per_sm`; default: one program per row) swept on the
#     video/stream shapes (channel- and seqlen-contiguous inputs; bench/tune_scan.py --progs); (2) fps of
#     m2s2l_paper (bf16, CUDA graphs, channels_last) for the session-7 code (a `git archive` of it carried in
#     _carry/old), this code (the temporal blocks' gate z on the last step only, the LayerNorm writing bf16 under
#     autocast) and this code with the sweep's best stream64 config if that is not the default; (3) GPU tests of
#     the changed paths. JSON under $OUT; a table last.
#   git archive a2da70b | tar -x -C _carry/old --exclude=checkpoints   (here), then on the device:
#   bash bench/gpu_seq_fwd_check.sh
set -u
OUT=${OUT:-/tmp/m2s2l_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name --format=csv,noheader
t() { timeout "$@" 2>&1 | grep -v -i warn; }
t 120 python3 bench/tune_scan.py --shapes temporal8,stream64,stream128 --modes fwd --progs \
  --layout channel --budget-s 60 --json "$OUT/tune_chan.json" | tail -44
t 60 python3 bench/tune_scan.py --shapes temporal8,temporal16 --modes fwd --progs --budget-s 35 \
  --json "$OUT/tune_time.json" | tail -5
best=$(python3 -c "import json; b = json.load(open('$OUT/tune_chan.json'))['best'].get('stream64/fwd', 'default'); \
print('' if b == 'default' else b)" 2>/dev/null)
common="--preset m2s2l_paper --amp --cuda-graphs --channels-last --modes stream,batched --seconds 1.5"
if [ -d _carry/old/m2s2l ]; then
  (cd _carry/old && PYTHONPATH=$PWD t 60 python3 bench/fps.py $common --json "$OUT/fps_old.json" | tail -2)
fi
t 60 python3 bench/fps.py $common --json "$OUT/fps_new.json" | tail -2
if [ -n "$best" ]; then
  M2S2L_SCAN_CFG=$best t 60 python3 bench/fps.py $common --json "$OUT/fps_new_best.json" | tail -2
fi
pip install -q --no-index --find-links _carry/wheels pytest 2>/dev/null | tail -1
M2S2L_TEST_GPU=1 t 110 python3 -m pytest -q tests/modules/test_layer_norm_module.py tests/modules/test_mamba.py \
  tests/triton_kernels/test_selective_scan.py tests/triton_kernels/test_selective_scan_cseq.py \
  -k "out_dtype or last_only or fwd_programs or programs_rule or gpu_bench_sizes" | tail -3
python3 - "$OUT" "$best" <<'PY'
import glob, json, os, sys
out, best = sys.argv[1], sys.argv[2]
print(f"\n# fps (frames/s; stream b1 / 32 streams); best stream64 config: {best or 'default'}")
for f in sorted(glob.glob(f"{out}/fps_*.json")):
    r = json.load(open(f))["modes"]
    print(f"{os.path.basename(f)[4:-5]:<10} " + "  ".join(f"{k} {v['fps']:8.1f}" if "fps" in v else f"{k} {v}"
                                                      for k, v in r.items()))
for f in ("tune_chan", "tune_time", "tune_cseq"):
    p = f"{out}/{f}.json"
    if os.path.isfile(p):
        for r in json.load(open(p))["rows"]:
            if r.get("status") == "ok":
                print(f"{f:<10} {r['shape']:<10} {r['cfg']:<28} {r['ms']:8.4f} ms {r.get('speedup') or 1:6.2f}x")
PY
echo "== done at $SECONDS s"
