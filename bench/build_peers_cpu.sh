#!/usr/bin/env bash
# Build the peers (mamba-ssm's selective scan, causal-conv1d) for the GPU box on THIS CPU-only machine, so that no
# device time goes to their ~7-minute build: a Python 3.12 venv with the device's torch (2.11.0, CUDA 13.0 build
# from PyPI), this machine's nvcc 13.0, ../shared/peers/peers.py with the GPU's compute capability given instead of
# read from a GPU (sm_90: H100 / H200). ~15 min on 2 cores. The site is then packed as `gpu_kernels.sh` expects
# (15 MiB pieces of peers_site.tgz): the scan in _carry/peers_site, the conv in _carry/peers_conv (the two do not
# fit the 64 MiB carry together with the tree; carry one, and pass PEERS_SITE_DIR=_carry/peers_conv for the conv).
#   bash bench/build_peers_cpu.sh [SHARED_PEERS_DIR] [PY312]
# Session 12 (2026-12-07): built here, loaded and timed on an H100 box (docs/BENCHMARKS.md).
set -euo pipefail
PEERS=$(cd "${1:-../shared/peers}" && pwd)
PY=${2:-}
if [ -z "$PY" ]; then  # a pyenv shim may exist without a selected 3.12: try it, else pyenv's own install
  if python3.12 --version >/dev/null 2>&1; then PY=python3.12; else PY=$(ls -d /root/.pyenv/versions/3.12*/bin/python | tail -1); fi
fi
VENV=${PEERS_VENV:-/tmp/m2s2l_peers_py312}
SITE=${PEERS_BUILD_SITE:-/tmp/m2s2l_peers_build}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.11.0 numpy ninja
mkdir -p "$SITE"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${ARCH:-9.0} MAX_JOBS=${MAX_JOBS:-2} \
  PATH="$VENV/bin:$PATH" "$VENV/bin/python" - "$PEERS" "$SITE" "${ARCH:-9.0}" <<'PY'
import sys
import torch
peers, site, arch = sys.argv[1], sys.argv[2], sys.argv[3]
major, minor = (int(x) for x in arch.split("."))
torch.cuda.get_device_capability = lambda *a, **k: (major, minor)  # no GPU here: the target's capability
sys.path.insert(0, peers)
import peers as p  # noqa: E402
p.build(peers + "/sdists", site)
PY
mkdir -p _carry/peers_site _carry/peers_conv
rm -f _carry/peers_site/peers_site.tgz.* _carry/peers_conv/peers_site.tgz.*
(cd "$SITE" && tar -czf - selective_scan_cuda.so mamba_ssm) | split -b 15m - _carry/peers_site/peers_site.tgz.
(cd "$SITE" && tar -czf - causal_conv1d_cuda.so causal_conv1d) | split -b 15m - _carry/peers_conv/peers_site.tgz.
du -sh _carry/peers_site _carry/peers_conv
