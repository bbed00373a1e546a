#!/usr/bin/env bash
# Device call after `bench/gpu_ped2_train.sh` (GPU box, repo root), once runs/ped2/model.pt exists and the test
# parts are unpacked (`bash bench/gpu_pack_ped2.sh --unpack` in the calls that carried them):
#   1. the validation signal first: pseudo-anomaly AUC of every score variant on the held-out training clips
#      (bench/select_score.py --device cuda), before anything touches the test set;
#   2. the test set once with the checkpoint's default score, without and with sigma-3 smoothing;
#   3. results and the float16 weights (15 MiB parts) into $OUT: `cat model.pt.part* > model.pt` here.
#   CKPT=runs/ped2/model.pt bash bench/gpu_ped2_eval.sh
set -u
OUT=${OUT:-/tmp/m2s2l_out}; CKPT=${CKPT:-runs/ped2/model.pt}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
[ -e _data ] || ln -sfn /tmp/m2s2l_data _data   # the sync of the working tree can drop the link between calls
[ -f "$CKPT" ] || { echo "gpu_ped2_eval.sh: $CKPT not found"; exit 2; }
echo "== validation (pseudo-anomalies on the held-out training clips)"
timeout 240 python3 bench/select_score.py --ckpt "$CKPT" --data _data/ped2 --seed 0 --device cuda \
  --json "$OUT/select.json" 2>&1 | grep -v "^scoring:" | tail -14
echo "== test set, default score"
for s in 0 3; do
  timeout 240 python3 -m m2s2l eval --data _data/ped2_test --ckpt "$CKPT" --out "/tmp/ev_s$s" --smooth $s 2>&1 \
    | tr '\r' '\n' | grep "^eval:"
done
tar -czf "$OUT/eval.tgz" -C /tmp ev_s0 ev_s3 2>/dev/null
mkdir -p "$OUT/m" && split -b 15M "$CKPT" "$OUT/m/model.pt.part" && ls -la "$OUT/m"
