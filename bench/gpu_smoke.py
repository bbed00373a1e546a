"""GPU smoke check of the Triton kernels against the torch reference (fwd + every gradient), at the shapes the
Ped2 training run uses and at odd ones; exits non-zero on a mismatch so the training script can fall back.

    python bench/gpu_smoke.py            # on a CUDA machine, from the repo root
"""
import sys

import torch

from m2s2l import ops


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def check_scan(b, d, L, G, dtype):
    dev = "cuda"
    leaf = lambda *s, f=torch.randn: f(*s, device=dev).to(dtype).requires_grad_()  # noqa: E731
    u, dt, z = leaf(b, d, L), leaf(b, d, L, f=torch.rand), leaf(b, d, L)
    A = (-torch.rand(d, 16, device=dev) - 0.1).requires_grad_()
    Bm, Cm = leaf(b, G, 16, L), leaf(b, G, 16, L)
    Dv, db = torch.randn(d, device=dev, requires_grad=True), torch.randn(d, device=dev, requires_grad=True)
    h0 = torch.randn(b, d, 16, device=dev, requires_grad=True)
    ins = (u, dt, A, Bm, Cm, Dv, z, db, h0)
    # fixed random upstream gradients: cos(out) of a bf16 output would differ between backends by rounding alone
    w, wl = torch.randn(b, d, L, device=dev), torch.randn(b, d, 16, device=dev)
    res = []
    for be in ("triton", "torch"):
        o, last = ops.selective_scan_fn(u, dt, A, Bm, Cm, Dv, z, db, True, True, initial_state=h0, backend=be)
        loss = (o.float() * w).sum() + (last * wl).sum()
        res.append((o, torch.autograd.grad(loss, ins)))
    errs = [rel(res[0][0], res[1][0])] + [rel(a, r) for a, r in zip(res[0][1], res[1][1])]
    return max(errs)


def check_conv(b, d, L, dtype):
    x = torch.randn(b, d, L, device="cuda").to(dtype).requires_grad_()
    w = torch.randn(d, 4, device="cuda", requires_grad=True)
    bias = torch.randn(d, device="cuda", requires_grad=True)
    g = torch.randn(b, d, L, device="cuda")
    res = []
    for be in ("triton", "torch"):
        o = ops.causal_conv1d_fn(x, w, bias, "silu", backend=be)
        res.append((o, torch.autograd.grad((o.float() * g).sum(), (x, w, bias))))
    return max([rel(res[0][0], res[1][0])] + [rel(a, r) for a, r in zip(res[0][1], res[1][1])])


def main():
    torch.manual_seed(0)
    bad = 0
    for (b, d, L, G), dtype in [((70000, 16, 4, 1), torch.float32), ((262144, 64, 4, 1), torch.bfloat16),
                                ((4096, 64, 2, 1), torch.float32), ((512, 96, 33, 2), torch.float32),
                                ((8, 96, 300, 2), torch.float32), ((2, 128, 256, 2), torch.bfloat16)]:
        tol = 1e-3 if dtype == torch.float32 else 2e-2
        e = check_scan(b, d, L, G, dtype)
        ok = e < tol
        bad += not ok
        print(f"scan {(b, d, L, G)} {str(dtype)[6:]}: max rel err {e:.2e} {'ok' if ok else 'FAIL'}", flush=True)
        e = check_conv(b, d, L, dtype)
        ok = e < tol
        bad += not ok
        print(f"conv {(b, d, L)} {str(dtype)[6:]}: max rel err {e:.2e} {'ok' if ok else 'FAIL'}", flush=True)
        torch.cuda.empty_cache()
    print("SMOKE OK" if not bad else f"SMOKE FAILED ({bad})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
