#!/usr/bin/env bash
# Ped2 on the device machine when it does not fit one call's carry (64 MiB with the tracked tree, whose shipped
# checkpoint alone is 19 MB): split the frames into tar parts of whole clips, carry one part per call, unpack each
# on the device into a folder that outlives the call, and link _data to it.
#   here:    bash bench/gpu_pack_ped2.sh [SRC=../shared/datasets/ped2] [MAX_MB=30]   -> _carry/ped2_*.tar
#   device:  bash bench/gpu_pack_ped2.sh --unpack      (in every call that carries a part; idempotent)
# Parts: training clips in groups up to MAX_MB (ped2_train_1.tar, ...), then testing clips + ped2.mat +
# frame_labels_ped2.npy (ped2_test_1.tar, ...). On the device the tree is /tmp/m2s2l_data/{ped2,ped2_test}, and
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
SRC=$(realpath "${1:-../shared/datasets/ped2}"); MAX=$(( ${2:-30} * 1024 * 1024 ))
OUTD=$PWD/_carry; mkdir -p "$OUTD"; rm -f "$OUTD"/ped2_*.tar
pack() {  # pack SPLIT NAME DEST_PREFIX: clips of $SRC/SPLIT/frames into parts of at most MAX bytes
  local split=$1 name=$2 prefix=$3 part=1 size=0 files=()
  for clip in "$SRC/$split/frames"/*/; do
    local c; c=$(du -sb "$clip" | cut -f1)
    if (( size > 0 && size + c > MAX )); then
      tar -cf "$OUTD/ped2_${name}_$part.tar" --transform "s,^,$prefix/$split/frames/," -C "$SRC/$split/frames" "${files[@]}"
      part=$((part + 1)); size=0; files=()
    fi
    files+=("$(basename "$clip")"); size=$((size + c))
  done
  tar -cf "$OUTD/ped2_${name}_$part.tar" --transform "s,^,$prefix/$split/frames/," -C "$SRC/$split/frames" "${files[@]}"
}
pack training train ped2
pack testing test ped2_test
last=$(ls "$OUTD"/ped2_test_*.tar | sort -V | tail -1)
tar -rf "$last" --transform "s,^,ped2_test/," -C "$SRC" ped2.mat frame_labels_ped2.npy
ls -la "$OUTD"/ped2_*.tar
