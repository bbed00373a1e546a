# Python port of the csrc/causal_conv1d kernel indexing (tiles, WMAX left-padding, dinit, dweight), vs autograd
# on the reference, in float64. A CPU check of the algorithm, not of the CUDA code: python csrc/tools/emulate_conv.py
import math, sys
import torch
sys.path.insert(0, __import__('os').path.join(__import__('os').path.dirname(__file__), '..', '..'))
from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_ref
TL = 8
def run(b, dim, L, W, WMAX, silu, use_init):
    dt = torch.float64
    x = torch.randn(b, dim, L, dtype=dt); w = torch.randn(dim, W, dtype=dt); bias = torch.randn(dim, dtype=dt)
    init = torch.randn(b, dim, W - 1, dtype=dt) if use_init else None
    dout = torch.randn(b, dim, L, dtype=dt); dfin = torch.randn(b, dim, W - 1, dtype=dt)
    out = torch.full((b, dim, L), float('nan'), dtype=dt); fin = torch.full((b, dim, W - 1), float('nan'), dtype=dt)
    dx = torch.full_like(out, float('nan')); dinit = torch.zeros(b, dim, W - 1, dtype=dt)
    dw = torch.zeros(dim, W, dtype=dt); db = torch.zeros(dim, dtype=dt)
    sig = torch.sigmoid
    ntiles = -(-L // TL)
    for bi in range(b):
        for d in range(dim):
            wp = [w[d, k - (WMAX - W)].item() if k - (WMAX - W) >= 0 else 0. for k in range(WMAX)]
            def x_at(pos):
                if pos >= 0: return x[bi, d, pos].item() if pos < L else 0.
                if init is not None and pos >= -(W - 1): return init[bi, d, W - 1 + pos].item()
                return 0.
            for tile in range(ntiles):
                p0 = tile * TL
                xw = [x_at(p0 - WMAX + 1 + i) for i in range(TL + WMAX - 1)]
                for o in range(TL):
                    acc = bias[d].item() + sum(wp[k] * xw[o + k] for k in range(WMAX))
                    if silu: acc *= 1 / (1 + math.exp(-acc))
                    if p0 + o < L: out[bi, d, p0 + o] = acc
                if p0 == 0:
                    for j in range(W - 1): fin[bi, d, j] = x_at(L - (W - 1) + j)
                NX, ND = TL + 2 * WMAX - 2, TL + WMAX - 1
                xw = [x_at(p0 - WMAX + 1 + i) for i in range(NX)]
                dacc = []
                for i in range(ND):
                    t = p0 + i; gr = 0.
                    if t < L:
                        gr = dout[bi, d, t].item()
                        if silu:
                            a = bias[d].item() + sum(wp[k] * xw[i + k] for k in range(WMAX))
                            s = 1 / (1 + math.exp(-a)); gr *= s * (1 + a * (1 - s))
                    dacc.append(gr)
                for o in range(TL):
                    pos = p0 + o
                    if pos >= L: continue
                    v = sum(wp[k] * dacc[o + WMAX - 1 - k] for k in range(WMAX))
                    j = pos - L + W - 1
                    if j >= 0: v += dfin[bi, d, j].item()
                    dx[bi, d, pos] = v
                if p0 == 0:
                    for q in range(WMAX - 1):
                        pos = q - (WMAX - 1); ii = W - 1 + pos
                        if ii < 0: continue
                        v = sum(wp[k] * dacc[q - k] for k in range(q + 1))
                        j = pos - L + W - 1
                        if j >= 0: v += dfin[bi, d, j].item()
                        dinit[bi, d, ii] = v
                db[d] += sum(dacc[:TL])
                for k in range(WMAX):
                    s = sum(dacc[o] * xw[o + k] for o in range(TL)); kk = k - (WMAX - W)
                    if kk >= 0: dw[d, kk] += s
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, bias, init)]
    ro, rf = causal_conv1d_ref(leaves[0], leaves[1], leaves[2], "silu" if silu else None, leaves[3], True)
    ((ro * dout).sum() + (rf * dfin).sum()).backward()
    errs = [(out - ro).abs().max().item(), (fin - rf).abs().max().item() if W > 1 else 0,
            (dx - leaves[0].grad).abs().max().item(), (dw - leaves[1].grad).abs().max().item(),
            (db - leaves[2].grad).abs().max().item()]
    if init is not None and W > 1: errs.append((dinit - leaves[3].grad).abs().max().item())
    return max(errs)
worst = 0
for L in (1, 2, 7, 9, 20):
    for W, WM in ((1, 4), (3, 4), (4, 4), (5, 8), (8, 8), (11, 16)):
        for silu in (False, True):
            for ui in (False, True):
                e = run(1, 2, L, W, WM, silu, ui); worst = max(worst, e)
                if e > 1e-9: print("BAD", L, W, WM, silu, ui, e)
print("worst", worst)
