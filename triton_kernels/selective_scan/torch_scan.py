"""Fast plain-PyTorch selective scan (S6): the CPU path of ``m2s2l.ops.selective_scan_fn`` (backend "torch").

Same contract and numerics as ``naive.selective_scan_ref`` (the test oracle, kept as the plain loop), arranged for
speed: time-major contiguous per-step slices; the state held as (batch, groups, dstate, dim // groups) so group
B/C broadcast instead of being repeated per channel and the channel axis is the long contiguous one; the C
contraction as a batched matmul. Without autograd the batch is processed in cache-sized chunks with in-place
updates; with autograd the same math runs out of place over the whole batch. Threads are torch's.
"""
import torch
import torch.nn.functional as F

_CHUNK_ELEMS = 1 << 19  # state elements per no-grad chunk (2 MiB in float32): keeps one chunk's state in cache


def _time_major_bc(X, G, Dg, ct):
    """B or C -> (False, fixed (G, N, Dg)) or (True, input-dependent (L, batch, G|1, N)), contiguous in ct."""
    if X.dim() == 2:  # (dim, N): channel c = g * Dg + j
        return False, X.to(ct).view(G, Dg, X.shape[1]).transpose(1, 2).contiguous()
    if X.dim() == 3:  # (batch, N, L), shared by every channel
        return True, X.to(ct).permute(2, 0, 1).unsqueeze(2).contiguous()
    return True, X.to(ct).permute(3, 0, 1, 2).contiguous()  # (batch, G, N, L)


def _groups(B, C):
    for X in (B, C):
        if X.dim() == 4:
            return X.shape[1]
    return 1


def _scan(dl, du, AT, B, C, h, ys, inplace):
    """Run the recurrence over dl, du (L, b, G, 1, Dg) from the state h (b, G, N, Dg), None for zeros.

    ``inplace``: h is updated in place and y_t (b, G, 1, Dg) written into ys[t]; returns ([], final h).
    Otherwise (autograd) everything is out of place; returns (list of y_t, final h)."""
    (b_dep, Bx), (c_dep, Cx) = B, C
    L = dl.shape[0]
    outs = []
    b, G, _, Dg = dl.shape[1:]
    dA = torch.empty(b, G, AT.shape[1], Dg, dtype=dl.dtype, device=dl.device) if inplace else None  # exp(delta A)
    for t in range(L):
        Bt = Bx[t].unsqueeze(-1) if b_dep else Bx  # (b, G, N, 1) or (G, N, Dg)
        if h is None:  # zero initial state: h_0 = delta_0 B_0 u_0, no decay to apply
            h = du[t] * Bt  # (b, G, N, Dg) in every B form
        elif inplace:
            torch.mul(dl[t], AT, out=dA).exp_()
            h.mul_(dA).addcmul_(du[t], Bt)
        else:
            h = torch.addcmul(torch.exp(dl[t] * AT) * h, du[t], Bt)
        if inplace and c_dep and Cx.shape[2] == h.shape[1]:
            torch.matmul(Cx[t].unsqueeze(-2), h, out=ys[t])  # (b, G, 1, N) @ (b, G, N, Dg)
            continue
        y = torch.matmul(Cx[t].unsqueeze(-2), h) if c_dep else (h * Cx).sum(-2, keepdim=True)
        if inplace:
            ys[t].copy_(y)
        else:
            outs.append(y)
    return outs, h


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, initial_state=None):
    """Same contract as ``selective_scan_ref`` / ``m2s2l.ops.selective_scan_fn`` (shapes documented there);
    differentiable by autograd in every tensor input. Computed in float32 (float64 for float64 u).

    Returns out (batch, dim, seqlen) contiguous in u's dtype and, with return_last_state, the final state
    (batch, dim, dstate) in the compute dtype.
    """
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, L = u.shape
    N = A.shape[1]
    G = _groups(B, C)
    Dg = dim // G
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)

    uc = u.to(ct)
    like = dict(dtype=ct, device=u.device)
    dl = delta.to(ct)
    if delta_bias is not None:
        dl = dl + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        dl = F.softplus(dl)
    dl = dl.permute(2, 0, 1).contiguous()                       # (L, batch, dim)
    du = dl * uc.permute(2, 0, 1)                               # (L, batch, dim)
    dl, du = dl.view(L, batch, G, 1, Dg), du.view(L, batch, G, 1, Dg)
    AT = A.to(ct).view(G, Dg, N).transpose(1, 2).contiguous()  # (G, N, Dg)
    Bx, Cx = _time_major_bc(B, G, Dg, ct), _time_major_bc(C, G, Dg, ct)

    def state_in(lo, hi):  # initial state rows lo:hi as (b, G, N, Dg), a fresh tensor
        if initial_state is None:  # no-grad: skip the decay of a zero state; autograd: keep it, so dA is 0, not None
            return uc.new_zeros(hi - lo, G, N, Dg) if grad else None
        h0 = initial_state[lo:hi].to(ct).view(hi - lo, G, Dg, N).transpose(2, 3)
        return h0.contiguous() if grad else torch.empty_like(h0, memory_format=torch.contiguous_format).copy_(h0)

    if grad:
        outs, h = _scan(dl, du, AT, Bx, Cx, state_in(0, batch), None, inplace=False)
        y = torch.stack([o.reshape(batch, dim) for o in outs], dim=-1)  # (batch, dim, L)
        last = h.transpose(2, 3).reshape(batch, dim, N) if return_last_state else None
        if D is not None:
            y = y + uc * D.to(ct)[None, :, None]
        if z is not None:
            y = y * F.silu(z.to(ct))
    else:
        ys = torch.empty(L, batch, G, 1, Dg, **like)
        last = torch.empty(batch, dim, N, **like) if return_last_state else None
        cs = max(1, _CHUNK_ELEMS // (dim * N))
        for lo in range(0, batch, cs):
            hi = min(batch, lo + cs)
            Bc, Cc = ((dep, X[:, lo:hi] if dep else X) for dep, X in (Bx, Cx))
            _, h = _scan(dl[:, lo:hi], du[:, lo:hi], AT, Bc, Cc, state_in(lo, hi), ys[:, lo:hi], True)
            if return_last_state:
                last[lo:hi].view(hi - lo, G, Dg, N).copy_(h.transpose(2, 3))
        y = torch.empty(batch, dim, L, **like).copy_(ys.view(L, batch, dim).permute(1, 2, 0))
        if D is not None:
            y.addcmul_(uc, D.to(ct)[None, :, None])
        if z is not None:
            y.mul_(F.silu(z.to(ct)))
    out = y.to(dtype_in)
    return (out, last) if return_last_state else out
