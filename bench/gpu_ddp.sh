#!/usr/bin/env bash
# Issue 9 on a host with 2 GPUs, one device call (~6-7 min; timeouts cap it at ~10 min), from the repo root:
#     export PYTHONPATH=$PWD && bash bench/gpu_ddp.sh
# (1) equivalence: bench/ddp_check.py under torchrun on 2 GPUs (NCCL): one fp32 step of m2s2l_paper
#     (in_channels=1, backend triton, TF32 off, deterministic algorithms, no autocast) with per-rank batch $B vs
#     one process with batch 2*$B, BatchNorm frozen and SyncBatchNorm; per tensor within max(1e-4 * max|g|,
#     8 * noise), noise = the reference vs its own rerun and vs a copy with the batch reversed and the weights
#     moved by ~1 ulp (the check's docstring);
#     prints the verdicts, the worst tensors by name, the noise, the negative control. Then (1b) the same with
#     --backend torch (plain-PyTorch scan/conv1d: no kernel atomics; only upsampling backward is nondeterministic),
#     and (1c) the torch backend in float64 (rounding ~1e9 smaller: separates amplified rounding from a real error).
#     CHECK_ONLY=1 stops after (1c).
# (2) throughput: `m2s2l train` of m2s2l_paper (in_channels=1, bf16 autocast, per-GPU batch 16) on synthetic
#     frames for ~$BENCH_S s on 1 GPU, then on 2 GPUs (torchrun); frames/s = median of the metrics.jsonl records
#     after the first two (compile, warm-up); prints the table for docs/BENCHMARKS.md.
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1). Outputs under $OUT.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
export PYTHONPATH=$PWD:${PYTHONPATH:-} OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
OUT=${OUT:-/tmp/m2s2l_ddp}; B=${B:-4}; BENCH_S=${BENCH_S:-70}; BATCH=${BATCH:-16}
rm -rf "$OUT/g1" "$OUT/g2"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
NGPU=$(nvidia-smi -L | wc -l)
[ "$NGPU" -ge 2 ] || { echo "gpu_ddp.sh: needs 2 GPUs, found $NGPU"; exit 2; }
# synthetic training frames (rendered at 128, stored by `m2s2l train` at the model's 256), on the CPU while (1) runs
[ -f "$OUT/data/done" ] || (timeout 200 python3 -c "from m2s2l.data.synthetic import make_dataset
make_dataset('$OUT/data', size=128, n_train=6, n_test=0, n_frames=200)" > "$OUT/data.log" 2>&1 \
  && touch "$OUT/data/done" &)
RUN="python3 -m torch.distributed.run --standalone --nproc_per_node=2"

echo "== (1) one step on 2 GPUs x batch $B == one step on 1 GPU x batch $((2 * B)) (fp32) =="
CHECK="bench/ddp_check.py --config m2s2l_paper --set in_channels=1 --batch $B --bn both"
CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 200 $RUN $CHECK --backend triton --control > "$OUT/check.txt" 2>&1
echo "rc=$? ($SECONDS s)"; grep -E "^bn=|^  (worst|noise|nondet)|DDP CHECK|control|CONTROL|Error|error:" "$OUT/check.txt" | tail -24
echo "== (1b) the same with --backend torch (no kernel atomics) =="
CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 200 $RUN $CHECK --backend torch > "$OUT/check_torch.txt" 2>&1
echo "rc=$? ($SECONDS s)"; grep -E "^bn=|^  (worst|noise|nondet)|DDP CHECK|Error|error:" "$OUT/check_torch.txt" | tail -20
echo "== (1c) the same in float64 (torch backend): rounding shrinks ~1e9, a real error would not =="
CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 200 $RUN $CHECK --backend torch --dtype float64 --control \
  > "$OUT/check_f64.txt" 2>&1
echo "rc=$? ($SECONDS s)"; grep -E "^bn=|^  (worst|noise|nondet)|DDP CHECK|control|CONTROL|Error|error:" \
  "$OUT/check_f64.txt" | tail -24
[ "${CHECK_ONLY:-0}" = 1 ] && exit 0

for i in $(seq 1 30); do [ -f "$OUT/data/done" ] && break; sleep 2; done
MIN=$(python3 -c "print(round(($BENCH_S + 25) / 60, 2))")   # --max-minutes counts data loading + compile too
TRAIN="-m m2s2l train --data $OUT/data --config m2s2l_paper --set in_channels=1 --batch-size $BATCH --epochs 1000
  --max-minutes $MIN --log-every 10 --backend triton --seed 0 --workers 8"
echo "== (2) m2s2l train throughput, per-GPU batch $BATCH, bf16, ~$BENCH_S s each =="
timeout 140 python3 $TRAIN --out "$OUT/g1" > "$OUT/train_g1.log" 2>&1; echo "1 GPU: rc=$? ($SECONDS s)"
timeout 140 $RUN $TRAIN --out "$OUT/g2" > "$OUT/train_g2.log" 2>&1; echo "2 GPUs: rc=$? ($SECONDS s)"
python3 - "$OUT" "$BATCH" <<'PY'
import json, os, statistics, sys
out, batch = sys.argv[1], int(sys.argv[2])
gpu = open(os.path.join(out, "gpu.txt")).readline().split(",")[0].strip()
rows = []
for n in (1, 2):
    path = os.path.join(out, f"g{n}", "metrics.jsonl")
    recs = [json.loads(l) for l in open(path)] if os.path.isfile(path) else []
    fps = [r["frames_per_s"] for r in recs if r.get("event") == "train"][2:]
    rows.append((n, n * batch, statistics.median(fps) if fps else float("nan"), len(fps)))
print(f"\n| card | GPUs | global batch | frames/s (train, bf16) | scaling | records |")
print("|---|---|---|---|---|---|")
for n, g, f, k in rows:
    print(f"| {gpu} | {n} | {g} | {f:.0f} | {f / rows[0][2]:.2f}x | {k} |")
PY
echo "total ${SECONDS} s; logs in $OUT (check.txt, check_torch.txt, train_g1.log, train_g2.log)"
