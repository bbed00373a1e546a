"""One small call of one CUDA-extension op per process, for csrc/build_and_test.sh: a crash (segfault, abort,
illegal address) then names the op and the shape instead of taking a whole test session down.

    python csrc/tools/smoke.py --list          # case names, smallest first
    python csrc/tools/smoke.py CASE            # run one case: prints "OK max_rel_err=..." or raises

Each case calls ``m2s2l.ops._cuda`` (the raw extension wrappers) or a public function with backend="cuda",
synchronises, and compares against the float64 reference (same tolerances as tests/test_cuda_ext.py).
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from m2s2l.ops import _cuda, causal_conv1d_fn, selective_scan_fn  # noqa: E402
from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_ref  # noqa: E402
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref  # noqa: E402

TOL = {torch.float32: 2e-3, torch.float16: 6e-3, torch.bfloat16: 3e-2}
DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _err(name, got, ref):
    got, ref = got.double(), ref.double()
    if not torch.isfinite(got).all():
        raise AssertionError(f"{name}: non-finite values")
    return (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6) if ref.numel() else 0.0


def _scan_inputs(batch, dim, L, N, dtype, bc):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device="cuda").to(dt)  # noqa: E731
    shape = {"fixed": (dim, N), "var3": (batch, N, L), "var": (batch, 1, N, L)}[bc]
    bdt = torch.float32 if bc == "fixed" else dtype
    return dict(u=r(batch, dim, L), delta=(0.5 * r(batch, dim, L, dt=torch.float32) - 1).to(dtype),
                A=-torch.rand(dim, N, generator=g, device="cuda") * 2 - 0.1, B=r(*shape, dt=bdt),
                C=r(*shape, dt=bdt), D=r(dim, dt=torch.float32), z=r(batch, dim, L),
                delta_bias=0.3 * r(dim, dt=torch.float32), initial_state=r(batch, dim, N, dt=torch.float32))


def _scan_ref(inp, dout, dlast):
    lv = {k: v.detach().double().requires_grad_() for k, v in inp.items()}
    out, last = selective_scan_ref(lv["u"], lv["delta"], lv["A"], lv["B"], lv["C"], lv["D"], lv["z"],
                                   lv["delta_bias"], True, True, lv["initial_state"])
    if dout is not None:
        ((out * dout.double()).sum() + (last * dlast.double()).sum()).backward()
    return out, last, {k: v.grad for k, v in lv.items()}


def scan(mode, batch, dim, L, N, dt, bc="var"):
    dtype = DT[dt]
    inp = _scan_inputs(batch, dim, L, N, dtype, bc)
    g = torch.Generator(device="cuda").manual_seed(1)
    dout = torch.randn(batch, dim, L, generator=g, device="cuda").to(dtype)
    dlast = torch.randn(batch, dim, N, generator=g, device="cuda")
    errs = {}
    if mode == "public":
        lv = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
        out, last = selective_scan_fn(*(lv[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                                      delta_softplus=True, return_last_state=True,
                                      initial_state=lv["initial_state"], backend="cuda")
        ((out.float() * dout.float()).sum() + (last * dlast).sum()).backward()
        torch.cuda.synchronize()
        grads = {k: v.grad for k, v in lv.items()}
    else:
        out, last, saved = _cuda.selective_scan_fwd(**inp, delta_softplus=True, save_states=mode == "bwd")
        torch.cuda.synchronize()
        grads = {}
        if mode == "bwd":
            names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
            res = _cuda.selective_scan_bwd(dout, dlast, *(inp[k] for k in names), saved, True)
            torch.cuda.synchronize()
            grads = dict(zip(names, res))
    ref_out, ref_last, ref_g = _scan_ref(inp, dout if grads else None, dlast)
    errs["out"], errs["last"] = _err("out", out, ref_out), _err("last", last, ref_last)
    for k, v in grads.items():
        errs["d" + k] = _err("d" + k, v, ref_g[k]) / 2
    return errs, TOL[dtype]


def conv(mode, batch, dim, L, W, dt):
    dtype = DT[dt]
    g = torch.Generator(device="cuda").manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    x, w, b, init = r(batch, dim, L).to(dtype), r(dim, W) / math.sqrt(W), r(dim), r(batch, dim, W - 1).to(dtype)
    dout, dfin = r(batch, dim, L).to(dtype), r(batch, dim, W - 1).to(dtype)
    if mode == "public":
        lv = [t.detach().clone().requires_grad_() for t in (x, w, b, init)]
        out, fin = causal_conv1d_fn(lv[0], lv[1], lv[2], "silu", lv[3], True, backend="cuda")
        ((out.float() * dout.float()).sum() + (fin.float() * dfin.float()).sum()).backward()
        grads = [t.grad for t in lv]
    else:
        out, fin = _cuda.causal_conv1d_fwd(x, w, b, init, "silu", True)
        torch.cuda.synchronize()
        grads = list(_cuda.causal_conv1d_bwd(x, w, b, init, dout, dfin, "silu")) if mode == "bwd" else []
    torch.cuda.synchronize()
    ref = [t.detach().double().requires_grad_() for t in (x, w, b, init)]
    ro, rf = causal_conv1d_ref(ref[0], ref[1], ref[2], "silu", ref[3], True)
    errs = {"out": _err("out", out, ro), "final": _err("final", fin, rf)}
    if grads:
        ((ro * dout.double()).sum() + (rf * dfin.double()).sum()).backward()
        for name, got, leaf in zip(["dx", "dweight", "dbias", "dinit"], grads, ref):
            errs[name] = _err(name, got, leaf.grad) / 2
    return errs, TOL[dtype]


# smallest first: the first failing case is the one compute-sanitizer gets
CASES = {
    "conv_fwd_fp32_tiny": lambda: conv("fwd", 2, 6, 9, 4, "fp32"),
    "conv_bwd_fp32_tiny": lambda: conv("bwd", 2, 6, 9, 4, "fp32"),
    "conv_bwd_bf16_w11": lambda: conv("bwd", 2, 6, 33, 11, "bf16"),
    "scan_fwd_fp32_N1_L1": lambda: scan("fwd", 2, 5, 1, 1, "fp32"),
    "scan_bwd_fp32_N1_L1": lambda: scan("bwd", 2, 5, 1, 1, "fp32"),
    "scan_fwd_fp32_N4_lanes4x4": lambda: scan("fwd", 2, 24, 7, 4, "fp32"),
    "scan_bwd_fp32_N4_lanes4x4": lambda: scan("bwd", 2, 24, 7, 4, "fp32"),
    "scan_fwd_fp32_N16_lanes16x1": lambda: scan("fwd", 1, 40, 70, 16, "fp32"),
    "scan_bwd_fp32_N16_lanes16x1": lambda: scan("bwd", 1, 40, 70, 16, "fp32"),
    "scan_fwd_fp32_N33_lanes16x4": lambda: scan("fwd", 2, 5, 70, 33, "fp32"),
    "scan_bwd_fp32_N33_lanes16x4": lambda: scan("bwd", 2, 5, 70, 33, "fp32"),
    "scan_fwd_fp32_N256_lanes32x8": lambda: scan("fwd", 1, 3, 65, 256, "fp32"),
    "scan_bwd_fp32_N256_lanes32x8": lambda: scan("bwd", 1, 3, 65, 256, "fp32"),
    "scan_bwd_fp16_fixedBC": lambda: scan("bwd", 2, 8, 40, 16, "fp16", bc="fixed"),
    "scan_bwd_bf16_var3": lambda: scan("bwd", 2, 8, 40, 16, "bf16", bc="var3"),
    "scan_public_fp32": lambda: scan("public", 2, 8, 70, 16, "fp32"),
    "conv_public_bf16": lambda: conv("public", 2, 8, 40, 4, "bf16"),
    "conv_bwd_bf16_video": lambda: conv("bwd", 16384, 128, 8, 4, "bf16"),
    "scan_bwd_bf16_video": lambda: scan("bwd", 16384, 128, 8, 16, "bf16", bc="var3"),
}


def main(argv):
    if not argv or argv[0] == "--list":
        print("\n".join(CASES))
        return 0
    name = argv[0]
    print(f"smoke {name}: device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    errs, tol = CASES[name]()
    worst = max(errs.values())
    print(f"smoke {name}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)
    if worst > tol:
        print(f"smoke {name}: FAIL max_rel_err={worst:.2e} > {tol:.0e}", flush=True)
        return 1
    print(f"smoke {name}: OK max_rel_err={worst:.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
