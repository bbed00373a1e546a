#!/usr/bin/env bash
# Ped2 on the device machine when it does not fit one call's carry (64 MiB with the tracked tree, whose shipped
# checkpoint alone is 19 MB): split the frames into tar parts of whole clips, carry one part per call, unpack each
# on the device into a folder that outlives the call, and link _data to it.
#   here:    bash bench/gpu_pack_ped2.sh [SRC=../shared/datasets/ped2] [MAX_MB=38]   -> _carry/ped2_part_*.tar
#   device:  bash bench/gpu_pack_ped2.sh --unpack      (in every call that carries a part; idempotent)
# Parts: whole clips, training then testing, filled up to MAX_MB each (ped2_part_1.tar, ...; the real Ped2 makes
# three parts at 38 (largest 38.8 MiB + the 19.3 MiB tree), so three calls instead of four), ped2.mat +
# frame_labels_ped2.npy in the last. On the device the tree is /tmp/m2s2l_data/{ped2,ped2_test}, and
# _data -> /tmp/m2s2l_data, so `m2s2l train --data _data/ped2` / `m2s2l eval --data _data/ped2_test` work once
# all parts of a split have been unpacked (keep the machine warm between calls: it goes back after ~30 s idle).
set -euo pipefail
if [ "${1:-}" = "--unpack" ]; then
  mkdir -p /tmp/m2s2l_data
  for t in _carry/ped2_*.tar; do [ -f "$t" ] && tar -xf "$t" -C /tmp/m2s2l_data && echo "unpacked $t"; done
  [ -L _data ] || [ ! -e _data ] && ln -sfn /tmp/m2s2l_data _data
  du -sh /tmp/m2s2l_data/* 2>/dev/null
  exit 0
fi
SRC=$(realpath "${1:-../shared/datasets/ped2}"); MAX=$(( ${2:-38} * 1024 * 1024 ))
OUTD=$PWD/_carry; mkdir -p "$OUTD"; rm -f "$OUTD"/ped2_*.tar
part=1; size=0; entries=()   # entries of the part being filled: "split<TAB>prefix<TAB>clip"
flush() {  # write the entries into ped2_part_$part.tar (one tar append per split, each with its own path prefix)
  local tarf="$OUTD/ped2_part_$part.tar" e split prefix clip
  for e in "${entries[@]}"; do
    IFS=$'\t' read -r split prefix clip <<< "$e"
    tar -rf "$tarf" --transform "s,^,$prefix/$split/frames/," -C "$SRC/$split/frames" "$clip"
  done
  part=$((part + 1)); size=0; entries=()
}
for sp in "training ped2" "testing ped2_test"; do
  read -r split prefix <<< "$sp"
  for clip in "$SRC/$split/frames"/*/; do
    c=$(du -sb "$clip" | cut -f1)
    (( size > 0 && size + c > MAX )) && flush
    entries+=("$split"$'\t'"$prefix"$'\t'"$(basename "$clip")"); size=$((size + c))
  done
done
flush
last=$(ls "$OUTD"/ped2_part_*.tar | sort -V | tail -1)
tar -rf "$last" --transform "s,^,ped2_test/," -C "$SRC" ped2.mat frame_labels_ped2.npy
ls -la "$OUTD"/ped2_*.tar
