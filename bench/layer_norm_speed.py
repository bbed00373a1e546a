"""LayerNorm speed on the video model's rows: m2s2l's Triton kernel vs F.layer_norm (PyTorch's kernel).

    python bench/layer_norm_speed.py [--modes fwd,fwdbwd] [--dtypes bf16] [--small] [--json PATH]
    TRITON_INTERPRET=1 python bench/layer_norm_speed.py --device cpu --backend triton --small   # CPU smoke run

Shapes: the (rows, C) pre-norm inputs of the temporal Mamba blocks of m2s2l_paper for 32 streams (rows =
32 * H_l * W_l * T at T = 4, C = the level's width): (2097152, 32), (524288, 64), (131072, 128), (32768, 256).
``--small`` divides the rows by 4096 (a smoke test of the script and the kernels, not a measurement).
Implementations: "m2s2l" (m2s2l.ops.layer_norm) vs "F.layer_norm", y in x's dtype; on CUDA with bf16/fp16 also the
model's AMP case, "m2s2l>fp32" (out_dtype=float32: m2s2l.modules.LayerNorm under autocast) vs "F.ln@amp"
(nn.LayerNorm under autocast: x cast to float32 by autocast, then PyTorch's float32 kernel; what the profile saw).
Prints one row per (shape, dtype, mode, impl): ms p50/p20/p80, GB/s (ideal bytes / p50: fwd reads x and writes y;
fwd+bwd also reads x and dy again and writes dx; the (C,) parameters are negligible), % of the copy-bandwidth
floor and the speed-up over the peer. Timing: triton.testing.do_bench on a GPU, a timer loop on CPU.
Run the tests first (tests/triton_kernels/test_layer_norm.py): a speed-up counts only for a kernel that passes.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's m2s2l
from common import DTYPES, copy_bandwidth, device_name, time_ms, write_json  # noqa: E402

from m2s2l.ops import layer_norm  # noqa: E402

SHAPES = [(32 * 128 * 128 * 4, 32), (32 * 64 * 64 * 4, 64), (32 * 32 * 32 * 4, 128), (32 * 16 * 16 * 4, 256)]


def impls(rows, C, dtype, mode, device, backend):
    """{name: (zero-argument callable, peer name, bytes per element of y)} for one case; fwd+bwd calls backward
    on a fixed dy. "m2s2l" / "F.layer_norm": y in x's dtype. With a half dtype on CUDA also the model's AMP case,
    "m2s2l>fp32" (out_dtype=float32, as m2s2l.modules.LayerNorm under autocast) vs "F.ln@amp" (nn.LayerNorm's
    path under autocast: x cast to float32, then PyTorch's float32 kernel)."""
    g = torch.Generator(device=device).manual_seed(0)
    grad = mode == "fwdbwd"
    x = torch.randn(rows, C, device=device, dtype=dtype, generator=g).requires_grad_(grad)
    w = torch.randn(C, device=device, generator=g).requires_grad_(grad)   # float32 parameters, as in the model
    b = torch.randn(C, device=device, generator=g).requires_grad_(grad)
    esz = x.element_size()
    fns = {"m2s2l": (lambda: layer_norm(x, w, b, backend=backend), "F.layer_norm", esz),
           "F.layer_norm": (lambda: F.layer_norm(x, (C,), w.to(dtype), b.to(dtype)), "F.layer_norm", esz)}
    if dtype != torch.float32 and device.type == "cuda":
        def amp():
            with torch.autocast("cuda", dtype=dtype):
                return F.layer_norm(x, (C,), w, b)
        fns["m2s2l>fp32"] = (lambda: layer_norm(x, w, b, backend=backend, out_dtype=torch.float32), "F.ln@amp", 4)
        fns["F.ln@amp"] = (amp, "F.ln@amp", 4)
    if mode == "fwd":
        return fns
    dys = {n: torch.randn(rows, C, device=device, generator=g).to(torch.float32 if o == 4 else dtype)
           for n, (_, _, o) in fns.items()}

    def fwdbwd(name, f):
        def run():
            x.grad = w.grad = b.grad = None
            f().backward(dys[name])
        return run
    return {n: (fwdbwd(n, f), peer, o) for n, (f, peer, o) in fns.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto", help="backend of m2s2l.ops.layer_norm (auto = Triton on CUDA)")
    ap.add_argument("--small", action="store_true", help="rows / 4096, few repetitions (smoke test)")
    ap.add_argument("--json", default=None, help="write every row here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    modes = [m for m in args.modes.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [m for m in modes if m not in ("fwd", "fwdbwd")] + [d for d in dtypes if d not in DTYPES]
    if bad:
        ap.error(f"unknown mode/dtype {bad}")
    bw = copy_bandwidth(device, quick=args.small)
    name = device_name(device)
    print(f"# device: {name}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write); torch {torch.__version__}")
    print(f"{'rows':>9s} {'C':>4s} {'dt':4s} {'mode':6s} {'impl':12s}{'p50 ms':>10s}{'p20':>9s}{'p80':>9s}"
          f"{'GB/s':>9s}{'%floor':>8s}{'vs peer':>9s}")
    rows_out = []
    for rows, C in SHAPES:
        rows = max(1, rows // 4096) if args.small else rows
        for dt in dtypes:
            dtype = DTYPES[dt]
            for mode in modes:
                xsz = torch.tensor([], dtype=dtype).element_size()
                res = {}
                for impl, (fn, peer, ysz) in impls(rows, C, dtype, mode, device, args.backend).items():
                    # fwd: x read, y written; bwd: x and dy read, dx written
                    nbytes = rows * C * (xsz + ysz + (0 if mode == "fwd" else 2 * xsz + ysz))
                    p50, p20, p80 = time_ms(fn, device, quick=args.small)
                    res[impl] = dict(rows=rows, C=C, dtype=dt, mode=mode, impl=impl, peer=peer, ms_p50=p50,
                                     ms_p20=p20, ms_p80=p80, bytes=nbytes, gbps=nbytes / (p50 * 1e-3) / 1e9,
                                     pct_floor=100.0 * nbytes / bw / (p50 * 1e-3))
                for r in res.values():
                    r["vs_peer"] = res[r["peer"]]["ms_p50"] / r["ms_p50"]
                    print(f"{r['rows']:9d} {C:4d} {dt:4s} {mode:6s} {r['impl']:12s}{r['ms_p50']:10.3f}"
                          f"{r['ms_p20']:9.3f}{r['ms_p80']:9.3f}{r['gbps']:9.1f}{r['pct_floor']:7.1f}%"
                          f"{r['vs_peer']:8.2f}x", flush=True)
                    rows_out.append(r)
    print("# vs peer = peer p50 / p50 (higher is faster): m2s2l vs F.layer_norm, m2s2l>fp32 vs F.ln@amp (CUDA,\n"
          "# half dtypes: the model under autocast). Bytes: x, y (its dtype), and for fwd+bwd x, dy, dx again.")
    if args.json:
        write_json(args.json, name, bw, rows_out)
    return rows_out


if __name__ == "__main__":
    main()
