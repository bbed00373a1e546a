#!/usr/bin/env bash
# After bench/gpu_ped2_ablate.sh (GPU box, repo root; training and test parts unpacked): for every finished run
# runs/abl_<name>/model.pt, in this order,
#   1. validation: pseudo-anomaly AUC of every score variant on the run's held-out training clips
#      (bench/select_score.py --device cuda, seed 0), before the test set is touched;
#   2. the test set with the run's default score, without and with sigma-3 smoothing (m2s2l eval);
# then a summary table, everything in $OUT/ablate.tgz, and the float16 weights (15 MiB parts) of the run with the
# best validation micro AUC under $OUT/m (whether it is shipped is decided by the rule in docs/RESULTS.md).
# DIFFICULTIES="standard hard" also runs validation on the hard pseudo-anomaly preset (select_hard/select_*.json);
# SHIPPED=1 evaluates checkpoints/ped2_m2s2l_paper.pt the same way, as run "shipped" (same call, same card).
set -u
OUT=${OUT:-/tmp/m2s2l_out}; R=/tmp/m2s2l_ablate; mkdir -p "$OUT" "$R"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
[ -e _data ] || ln -sfn /tmp/m2s2l_data _data
if [ "${SHIPPED:-0}" = 1 ]; then
  mkdir -p runs/abl_shipped && cp checkpoints/ped2_m2s2l_paper.pt runs/abl_shipped/model.pt
fi
runs=$(ls -d runs/abl_*/ 2>/dev/null)
for d in $runs; do
  v=$(basename "$d"); v=${v#abl_}; [ -f "$d/model.pt" ] || { echo "$v: no model.pt"; continue; }
  for dif in ${DIFFICULTIES:-standard}; do
    suf=$([ "$dif" = standard ] && echo "" || echo "_$dif")
    timeout 240 python3 bench/select_score.py --ckpt "$d/model.pt" --data _data/ped2 --seed 0 --device cuda \
      --difficulty "$dif" --json "$R/select$suf/select_$v.json" > "$R/select_$v$suf.txt" 2>&1 \
      || echo "$v: select_score failed ($dif)"
  done
done
for d in $runs; do
  v=$(basename "$d"); v=${v#abl_}; [ -f "$d/model.pt" ] || continue
  for s in 0 3; do
    timeout 240 python3 -m m2s2l eval --data _data/ped2_test --ckpt "$d/model.pt" --out "$R/ev_${v}_s$s" \
      --smooth $s --no-plot > "$R/ev_${v}_s$s.txt" 2>&1 || echo "$v: eval failed (smooth $s)"
  done
  cp "$d/metrics.jsonl" "$R/metrics_$v.jsonl" 2>/dev/null
done
cp /tmp/m2s2l/train_*.log "$R/" 2>/dev/null
python3 - "$R" <<'EOF'
import glob, json, os, sys
R = sys.argv[1]
rows = []
hard = {}
for f in sorted(glob.glob(f"{R}/select_hard/select_*.json")):
    hard[os.path.basename(f)[7:-5]] = json.load(open(f))["variants"]["default"]["micro_auc"]
for f in sorted(glob.glob(f"{R}/select/select_*.json")):
    v = os.path.basename(f)[7:-5]
    sel = json.load(open(f))["variants"]["default"]
    ev = {}
    for s in (0, 3):
        p = f"{R}/ev_{v}_s{s}/metrics.json"
        ev[s] = json.load(open(p)) if os.path.isfile(p) else {}
    vl = [json.loads(l) for l in open(f"{R}/metrics_{v}.jsonl") if '"val_loss"' in l] if os.path.isfile(f"{R}/metrics_{v}.jsonl") else []
    rows.append((v, len(vl), vl[-1]["val_loss"] if vl else float("nan"), sel["micro_auc"], sel["macro_auc"],
                 ev[0].get("micro_auc"), ev[0].get("macro_auc"), ev[3].get("micro_auc"), ev[3].get("macro_auc"),
                 hard.get(v)))
cand = [r for r in rows if r[0] != "shipped"]
best = max(cand, key=lambda r: (r[9] or 0, r[3]))[0] if cand else ""
open(f"{R}/best_val.txt", "w").write(best)
print("| variant | epochs | val loss | val pseudo micro | val pseudo macro | val hard micro | test micro | test macro "
      "| test micro s3 | test macro s3 |")
pc = lambda x: "-" if x is None else f"{100 * x:.2f}"
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.5f} | {pc(r[3])} | {pc(r[4])} | {pc(r[9])} | {pc(r[5])} | {pc(r[6])} | {pc(r[7])} "
          f"| {pc(r[8])} |")
print("best validation (hard pseudo micro, then standard pseudo micro; 'shipped' excluded):", best)
EOF
best=$(cat "$R/best_val.txt" 2>/dev/null)
tar -czf "$OUT/ablate.tgz" -C /tmp m2s2l_ablate
if [ -n "$best" ] && [ -f "runs/abl_$best/model.pt" ]; then
  mkdir -p "$OUT/m" && split -b 15M "runs/abl_$best/model.pt" "$OUT/m/model_$best.pt.part" && ls -la "$OUT/m"
fi
