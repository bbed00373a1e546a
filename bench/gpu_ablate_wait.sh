#!/usr/bin/env bash
# Keep a warm device machine busy until WAIT_S seconds into this command, or until every ablation run of
# bench/gpu_ped2_ablate.sh has finished; prints each run's latest progress line.
#   bash bench/gpu_ablate_wait.sh [WAIT_S]
set -u
LOG=/tmp/m2s2l; WAIT_S=${1:-560}
while [ $SECONDS -lt "$WAIT_S" ]; do
  busy=0
  for f in $LOG/train_*.log; do grep -q "^rc=" "$f" 2>/dev/null || busy=1; done
  [ -d /tmp/m2s2l_chain ] && [ ! -f /tmp/m2s2l_chain/done ] && busy=1   # the chained evaluation (CHAIN_EVAL=1)
  [ $busy = 0 ] && break
  sleep 10
done
echo "== at $SECONDS s"
for f in $LOG/train_*.log; do
  echo "-- $(basename "$f" .log): $(tr '\r' '\n' < "$f" | grep -v '^\s*$' | grep -E 'epoch|done|rc=|Error|error' | tail -2 | tr '\n' ' ')"
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
if [ -f /tmp/m2s2l_chain/done ]; then   # the chained evaluation finished: its table and files come back with $OUT
  OUT=${OUT:-/tmp/m2s2l_out}; mkdir -p "$OUT"; cat /tmp/m2s2l_chain/done
  tail -8 /tmp/m2s2l_chain/eval.log; cp -r /tmp/m2s2l_chain/. "$OUT/" 2>/dev/null
fi
true
