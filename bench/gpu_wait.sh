#!/usr/bin/env bash
# Keep a warm device machine busy until WAIT_S seconds into this command (or until runs/ped2/model.pt appears
# when STOP_ON_MODEL=1), printing training progress; copies the finished peers' build to $OUT (15 MiB parts).
#   bash bench/gpu_wait.sh [WAIT_S]
set -u
OUT=${OUT:-/tmp/m2s2l_out}; LOG=/tmp/m2s2l; WAIT_S=${1:-560}; mkdir -p "$OUT"
while [ $SECONDS -lt "$WAIT_S" ]; do
  [ "${STOP_ON_MODEL:-0}" = 1 ] && grep -q "^rc=" $LOG/train.log 2>/dev/null && break
  sleep 10
done
echo "== train.log (tail) at $SECONDS s"; tr '\r' '\n' < $LOG/train.log 2>/dev/null | grep -v "^\s*$" | tail -12
echo "== builds"; tail -1 $LOG/peers_build.log $LOG/cuda_ext_build.log 2>/dev/null
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
cp runs/ped2/metrics.jsonl "$OUT/" 2>/dev/null
if grep -q "^rc=0" $LOG/peers_build.log 2>/dev/null && [ ! -f $LOG/peers_site_sent ]; then
  tar -C /tmp -czf /tmp/peers_site.tgz m2s2l_peers_site && mkdir -p "$OUT/peers" \
    && split -b 15M /tmp/peers_site.tgz "$OUT/peers/site.tgz.part" && touch $LOG/peers_site_sent && ls -la "$OUT/peers"
fi
true
