"""Reference selective scan (S6): a plain PyTorch loop over time, computed in float32 (or float64 when the
inputs are float64). It is the test oracle and the CPU path of ``m2s2l.ops.selective_scan_fn``."""
import torch
import torch.nn.functional as F


def _expand_bc(X, dim, L):
    """B or C of shape (dim, N), (batch, N, L) or (batch, G, N, L) -> broadcastable (batch|1, dim, N, L)."""
    if X.dim() == 2:  # fixed per channel
        return X[None, :, :, None].expand(1, dim, X.shape[1], L)
    if X.dim() == 3:  # (batch, N, L), shared by all channels
        return X[:, None]
    G = X.shape[1]
    return X.repeat_interleave(dim // G, dim=1)  # channel c uses group c // (dim // G)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, initial_state=None):
    """Same contract as ``m2s2l.ops.selective_scan_fn`` (shapes documented there).

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t ; y_t = sum_n C_t h_t + D u_t ; out = y * silu(z).
    Returns out in u's dtype and, with return_last_state, the float32 (or float64) final state.
    """
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta = u.to(ct), delta.to(ct)
    batch, dim, L = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(ct)
    Bx, Cx = _expand_bc(B.to(ct), dim, L), _expand_bc(C.to(ct), dim, L)
    N = A.shape[1]
    h = u.new_zeros(batch, dim, N) if initial_state is None else initial_state.to(ct)
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * A)                       # (batch, dim, N)
        dBu = delta[:, :, t, None] * Bx[..., t] * u[:, :, t, None]     # (batch, dim, N)
        h = dA * h + dBu
        ys.append((h * Cx[..., t]).sum(-1))                             # (batch, dim)
    y = torch.stack(ys, dim=-1) if L > 0 else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(ct)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One-token step of ``selective_scan_ref``, in place on ``state`` (batch, dim, dstate).

    x, dt, z (batch, dim); A (dim, dstate); B, C (batch, dstate) or (batch, groups, dstate); D, dt_bias (dim,).
    Computed in float32 (float64 for float64 inputs); returns out (batch, dim) in x's dtype.
    """
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    dim = x.shape[1]
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    Bx = B.to(ct) if B.dim() == 3 else B.to(ct)[:, None]
    Cx = C.to(ct) if C.dim() == 3 else C.to(ct)[:, None]
    Bx = Bx.repeat_interleave(dim // Bx.shape[1], dim=1)  # (batch, dim, dstate)
    Cx = Cx.repeat_interleave(dim // Cx.shape[1], dim=1)
    xc = x.to(ct)
    h = state.to(ct) * torch.exp(dt[..., None] * A.to(ct)) + (dt * xc)[..., None] * Bx
    state.copy_(h)
    y = (h * Cx).sum(-1)
    if D is not None:
        y = y + xc * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype)
