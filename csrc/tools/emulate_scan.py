# Python port of the csrc/selective_scan backward (64-step chunks, 8-step sub-chunks, reverse recurrence), vs
# autograd on the reference, in float64. A CPU check of the algorithm, not of the CUDA code: python csrc/tools/emulate_scan.py
import torch, torch.nn.functional as F, sys
sys.path.insert(0, __import__('os').path.join(__import__('os').path.dirname(__file__), '..', '..'))
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref
torch.manual_seed(0)
kSub, kSPC = 8, 8; kChunk = kSub * kSPC
b, dim, L, N, G = 2, 4, 150, 5, 2
dt_ = torch.float64
u = torch.randn(b, dim, L, dtype=dt_); delta = torch.randn(b, dim, L, dtype=dt_) * .5 - 1
A = -torch.rand(dim, N, dtype=dt_) - .1; B = torch.randn(b, G, N, L, dtype=dt_); C = torch.randn(b, G, N, L, dtype=dt_)
D = torch.randn(dim, dtype=dt_); z = torch.randn(b, dim, L, dtype=dt_); bias = torch.randn(dim, dtype=dt_) * .3
h0 = torch.randn(b, dim, N, dtype=dt_)
Bx = B.repeat_interleave(dim // G, 1); Cx = C.repeat_interleave(dim // G, 1)   # (b, dim, N, L)
sp = True
def dtf(raw): return F.softplus(raw) if sp else raw
# forward with saved chunk states
nch = -(-L // kChunk); saved = torch.zeros(b, dim, nch, N, dtype=dt_); h = h0.clone(); outs = []
for t in range(L):
    if t % kChunk == 0: saved[:, :, t // kChunk] = h
    dt = dtf(delta[..., t] + bias)
    h = torch.exp(dt[..., None] * A) * h + dt[..., None] * Bx[..., t] * u[..., t, None]
    y = (Cx[..., t] * h).sum(-1) + D * u[..., t]
    outs.append(y * F.silu(z[..., t]))
out = torch.stack(outs, -1); last = h
dout = torch.randn_like(out); dlast = torch.randn_like(last)
# backward as in the kernel
g = dlast.clone(); dA = torch.zeros_like(A); dB = torch.zeros_like(Bx); dC = torch.zeros_like(Cx)
dD = torch.zeros(dim, dtype=dt_); dbias = torch.zeros(dim, dtype=dt_)
du = torch.zeros_like(u); ddelta = torch.zeros_like(u); dz = torch.zeros_like(u)
for c in range(nch - 1, -1, -1):
    t0 = c * kChunk; h = saved[:, :, c].clone(); sub = [None] * kSPC
    for s in range(kSPC):
        sub[s] = h.clone()
        if s == kSPC - 1: break
        for k in range(kSub):
            t = t0 + s * kSub + k
            if t >= L: break
            dt = dtf(delta[..., t] + bias)
            h = torch.exp(dt[..., None] * A) * h + dt[..., None] * Bx[..., t] * u[..., t, None]
    for s in range(kSPC - 1, -1, -1):
        ts = t0 + s * kSub
        if ts >= L: continue
        h = sub[s].clone(); hist = [None] * kSub; dts = [None] * kSub; raws = [None] * kSub
        for k in range(kSub):
            t = ts + k; hist[k] = h.clone()
            if t < L:
                raws[k] = delta[..., t] + bias; dts[k] = dtf(raws[k])
                h = torch.exp(dts[k][..., None] * A) * h + dts[k][..., None] * Bx[..., t] * u[..., t, None]
        for k in range(kSub - 1, -1, -1):
            t = ts + k
            if t >= L: continue
            dt = dts[k][..., None]; uu = u[..., t, None]; zz = z[..., t]; sz = torch.sigmoid(zz)
            dy = dout[..., t] * zz * sz
            a = torch.exp(dt * A); hp = hist[k]; hc = a * hp + dt * Bx[..., t] * uu
            ypart = (Cx[..., t] * hc).sum(-1)
            dC[..., t] += dy[..., None] * hc
            g = g + dy[..., None] * Cx[..., t]
            ddt = (g * (A * a * hp + Bx[..., t] * uu)).sum(-1)
            dA += (g * dt * a * hp).sum(0)
            dB[..., t] += g * dt * uu
            dui = (g * dt * Bx[..., t]).sum(-1)
            g = g * a
            dui = dui + dy * D; dD += (dy * u[..., t]).sum(0)
            if sp: ddt = ddt * torch.sigmoid(raws[k])
            dbias += ddt.sum(0)
            du[..., t] = dui; ddelta[..., t] = ddt
            dz[..., t] = dout[..., t] * (ypart + D * u[..., t]) * sz * (1 + zz * (1 - sz))
dBg = dB.reshape(b, G, dim // G, N, L).sum(2); dCg = dC.reshape(b, G, dim // G, N, L).sum(2)
# autograd
leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias, h0)]
ro, rl = selective_scan_ref(*leaves[:5], leaves[5], leaves[6], leaves[7], sp, True, leaves[8])
((ro * dout).sum() + (rl * dlast).sum()).backward()
print("out", (ro - out).abs().max().item(), "last", (rl - last).abs().max().item())
for n, mine, lf in zip("u delta A B C D z bias h0".split(), [du, ddelta, dA, dBg, dCg, dD, dz, dbias, g], leaves):
    print(n, (mine - lf.grad).abs().max().item() / lf.grad.abs().max().item())
