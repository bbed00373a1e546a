#!/usr/bin/env bash
# Ped2 ablations on one GPU (GPU box, repo root, after the training parts are unpacked with
# `bash bench/gpu_pack_ped2.sh --unpack`): several `m2s2l train` runs of m2s2l_paper side by side, each in its own
# process session (they outlive this 10-minute command on the warm machine), all with the same recipe as
# docs/RESULTS.md except the one thing the variant changes, and the same --fit-minutes budget:
#   control  the recipe as is (motion target = frame difference, T = 4, scales (1, 2), w_motion 1)
#   flow     motion target = optical flow (OpenCV DIS, needs cv2: CV2_WHEEL=path installs it first)
#   wmot2    loss weight w_motion = 2 (FFP's weight of its motion term)
#   t8       T = 8 past frames with temporal scales (1, 2, 4)
#   flow_wmot2 / flow_s124 / flow_t8   the flow recipe with w_motion 2 / scales (1, 2, 4) / T = 8 and scales (1, 2, 4)
#   VARIANTS="control flow" FIT_MIN=17 bash bench/gpu_ped2_ablate.sh
# CUDA MPS is started when the box allows it (the runs then share the GPU instead of time-slicing it).
# Runs go to runs/abl_<name>/, logs to /tmp/m2s2l/train_<name>.log; follow with `bash bench/gpu_ablate_wait.sh`
# and `bash bench/gpu_ped2_ablate_eval.sh`.
# CHAIN_EVAL=1: when every run has ended, the device itself starts `bench/gpu_ped2_ablate_eval.sh` (with the same
# SHIPPED / DIFFICULTIES), writing to /tmp/m2s2l_chain; `gpu_ablate_wait.sh` then waits for it too and copies its
# results into the calling command's $OUT. Unpack the test parts BEFORE this call: a finished run's evaluation then
# needs no further call (a machine handed back between calls loses everything on its disk; session 7 lost a
# trained run that way).
set -u
OUT=${OUT:-/tmp/m2s2l_out}; LOG=/tmp/m2s2l; mkdir -p "$OUT" "$LOG"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
[ -e _data ] || ln -sfn /tmp/m2s2l_data _data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -n "${CV2_WHEEL:-}" ]; then
  pip install -q --no-deps "$CV2_WHEEL" 2>&1 | tail -2
fi
python3 -c "import cv2; print('cv2', cv2.__version__)" || echo "cv2 missing: the flow variant will fail"
declare -A SETS=(
  [control]=""
  [flow]="--set motion_target=flow"
  [wmot2]="--set w_motion=2.0"
  [t8]="--set clip_len=8 --set temporal_scales=[1,2,4]"
  [flow_wmot2]="--set motion_target=flow --set w_motion=2.0"
  [flow_s124]="--set motion_target=flow --set temporal_scales=[1,2,4]"
  [flow_t8]="--set motion_target=flow --set clip_len=8 --set temporal_scales=[1,2,4]"
)
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d 2>&1
  if timeout 60 python3 -c "import torch; x = torch.ones(4, device='cuda'); print('MPS client ok', float(x.sum()))"; then
    echo "MPS on"
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS unavailable: the runs time-slice the GPU"
  fi
fi
for v in ${VARIANTS:-control flow wmot2}; do
  setsid nohup bash -c "python3 -m m2s2l train --data _data/ped2 --config m2s2l_paper --out runs/abl_$v \
    --set in_channels=1 ${SETS[$v]} --epochs 200 --batch-size 16 --lr 2e-4 --warmup-epochs 1 --val-clips 2 \
    --save-half --fit-minutes ${FIT_MIN:-17} --backend triton --seed 0 --log-every 50 --workers 4 \
    > $LOG/train_$v.log 2>&1; echo rc=\$? >> $LOG/train_$v.log" > /dev/null 2>&1 &
  echo "started $v: ${SETS[$v]:-(recipe as is)}"
done
if [ "${CHAIN_EVAL:-0}" = 1 ]; then
  [ -d _data/ped2_test ] || echo "CHAIN_EVAL: _data/ped2_test is missing: the chained evaluation will fail"
  rm -rf /tmp/m2s2l_chain; mkdir -p /tmp/m2s2l_chain
  setsid nohup bash -c "while ls $LOG/train_*.log > /dev/null 2>&1 && \
      [ \$(grep -L '^rc=' $LOG/train_*.log | wc -l) -gt 0 ]; do sleep 10; done; \
    OUT=/tmp/m2s2l_chain bash bench/gpu_ped2_ablate_eval.sh > /tmp/m2s2l_chain/eval.log 2>&1; \
    echo rc=\$? > /tmp/m2s2l_chain/done" > /dev/null 2>&1 &
  echo "chained evaluation armed"
fi
bash bench/gpu_ablate_wait.sh "${WAIT_S:-500}"
