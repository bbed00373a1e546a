#!/usr/bin/env bash
# Same-call A/B of two code trees with bench/scan_ab.py (GPU box, repo root): OLD_DIR's scan_ab.py (its own m2s2l and
# kernels: m2s2l/__init__.py maps a checkout's own triton_kernels/) and this tree's, alternately, ROUNDS times each.
#   bash bench/gpu_tree_ab.sh OLD_DIR ROUNDS OUT_DIR "OLD_CFGS" "NEW_CFGS" [scan_ab.py args...]
# e.g. (the session-10 tree as the baseline, carried as _carry/old = `git archive 720e38d`):
#   bash bench/gpu_tree_ab.sh _carry/old 2 "$OUT" "default" "default tile_bwd_steps=16" --shapes LM,spatial --modes fwdbwd
# Each run's table goes to OUT_DIR/tree_ab_{old,new}_R.txt (+ .json); the tables are printed last.
set -u
OLD=$1; ROUNDS=$2; OUT=$3; OLD_CFGS=$4; NEW_CFGS=$5; shift 5
mkdir -p "$OUT"
NEW=$PWD
for r in $(seq 1 "$ROUNDS"); do
  # shellcheck disable=SC2086
  (cd "$OLD" && python3 bench/scan_ab.py "$@" --cfgs $OLD_CFGS --json "$OUT/tree_ab_old_$r.json") \
    > "$OUT/tree_ab_old_$r.txt" 2>&1; echo "old round $r rc=$? ($SECONDS s)"
  # shellcheck disable=SC2086
  (cd "$NEW" && python3 bench/scan_ab.py "$@" --cfgs $NEW_CFGS --json "$OUT/tree_ab_new_$r.json") \
    > "$OUT/tree_ab_new_$r.txt" 2>&1; echo "new round $r rc=$? ($SECONDS s)"
done
for r in $(seq 1 "$ROUNDS"); do
  for t in old new; do echo "== $t tree ($([ $t = old ] && echo "$OLD" || echo this), round $r)"
    grep -v -i warn "$OUT/tree_ab_${t}_$r.txt" | tail -14; done; done
