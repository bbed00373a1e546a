#!/usr/bin/env bash
# Device call 1 of the Ped2 reproduction (GPU box, repo root). Starts, each in its own process session so that
# they outlive this 10-minute command on the warm machine:
#   * `m2s2l train` of m2s2l_paper on Ped2 training frames (carried in _data/ped2/training), --fit-minutes $FIT_MIN,
#     after a GPU smoke check of the Triton kernels (fwd+bwd vs the torch reference) that picks the backend;
#   * niced background builds: the peers' CUDA kernels (mamba-ssm, causal-conv1d) and our optional CUDA extension.
# Ablations: EXTRA_SET="--set w_motion=2.0 --set temporal_scales=[1,2,4]" (passed to `m2s2l train`).
# Then it prints progress until $WAIT_S seconds into the command. Follow with `bash bench/gpu_wait.sh` calls and
# `bash bench/gpu_ped2_eval.sh` once runs/ped2/model.pt exists. Logs live in /tmp/m2s2l/ on the device.
set -u
OUT=${OUT:-/tmp/m2s2l_out}; LOG=/tmp/m2s2l; mkdir -p "$OUT" "$LOG"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -f _carry/peers/peers.py ] && [ ! -f /tmp/m2s2l_peers_site/selective_scan_cuda.so ]; then
  setsid nohup bash -c "nice -n 19 python3 _carry/peers/peers.py build _carry/peers /tmp/m2s2l_peers_site \
    > $LOG/peers_build.log 2>&1; echo rc=\$? >> $LOG/peers_build.log" > /dev/null 2>&1 &
fi
setsid nohup bash -c "M2S2L_BUILD_CUDA=1 MAX_JOBS=6 nice -n 19 python3 setup.py build_ext --inplace \
  > $LOG/cuda_ext_build.log 2>&1; echo rc=\$? >> $LOG/cuda_ext_build.log" > /dev/null 2>&1 &
BACKEND=triton
timeout 150 python3 bench/gpu_smoke.py > "$OUT/smoke.txt" 2>&1 || BACKEND=torch
tail -9 "$OUT/smoke.txt"; echo "training backend: $BACKEND ($SECONDS s)"
setsid nohup bash -c "python3 -m m2s2l train --data _data/ped2 --config m2s2l_paper --out runs/ped2 \
  --set in_channels=1 ${EXTRA_SET:-} --epochs ${EPOCHS:-200} --batch-size ${BATCH:-16} --lr ${LR:-2e-4} --warmup-epochs 1 \
  --val-clips 2 --save-half --fit-minutes ${FIT_MIN:-17} --backend $BACKEND --seed 0 --log-every 50 --workers 12 \
  > $LOG/train.log 2>&1; echo rc=\$? >> $LOG/train.log" > /dev/null 2>&1 &
bash bench/gpu_wait.sh "${WAIT_S:-555}"
