"""``selective_scan_fn``: the selective scan (S6) of Mamba, a drop-in for mamba-ssm's function of that name.

One custom op per direction serves every backend: ``m2s2l::selective_scan_fwd`` and
``m2s2l::selective_scan_bwd`` (one fvcore node, opaque to torch.compile, one autograd formula). Optional
tensors that a custom op cannot return as None travel as empty tensors of shape (0,). In plain eager mode (no
compile/jit trace/fake tensors/dispatch mode: ``_backend.use_custom_op``) the same implementation and backward
run without the custom-op dispatch (~100 us of host time a call on the dev box, paid by every launch-bound call).

dtype rules (anything else raises TypeError): u, delta, z and input-dependent B/C share one dtype among
float32/float16/bfloat16; A, D, delta_bias, initial_state and fixed (dim, dstate) B/C are float32. All
recurrence math and accumulation is float32; out has u's dtype, last_state is float32.
"""
import os
import weakref
from typing import Optional

import torch

from ._backend import FLOAT_DTYPES, call_op, check_tensor, eager_function, needs_grad, resolve_backend

_F32 = (torch.float32,)


def _none_if_empty(t):
    return None if t is None or t.numel() == 0 else t


def _autograd_inside_op():
    """Re-enable autograd inside a custom op's implementation: a custom op called on inputs that need no grad
    (as the backward op always is) runs below the Autograd dispatch keys, where enable_grad alone records nothing."""
    K = torch._C.DispatchKey
    return (torch._C._SetExcludeDispatchKeyGuard(K.AutogradFunctionality, False),
            torch._C._SetExcludeDispatchKeyGuard(K.ADInplaceOrView, False))


_FINITE_SEEN = {}


def _check_finite_A(A):
    """Raise unless A is finite. On CPU always; on an accelerator only with M2S2L_CHECK_FINITE=1, because the check
    synchronises the device (a Mamba block recomputes A = -exp(A_log) every call, so a per-call check stalled every
    training step and every streamed frame). A tensor already seen at the same version is not re-checked; skipped
    while torch.compile traces."""
    if torch.compiler.is_compiling():
        return
    if A.device.type != "cpu" and os.environ.get("M2S2L_CHECK_FINITE", "0") != "1":
        return
    state = (A._version, A.data_ptr())
    seen = _FINITE_SEEN.get(id(A))
    if seen is not None and seen[0]() is A and seen[1] == state:
        return
    if not bool(torch.isfinite(A).all()):
        raise ValueError("A must be finite (it contains inf or nan)")
    if len(_FINITE_SEEN) > 4096:
        _FINITE_SEEN.clear()
    _FINITE_SEEN[id(A)] = (weakref.ref(A), state)


def _ref(*args, **kw):
    """The "torch" backend: the fast plain-PyTorch scan (same contract as ``naive.selective_scan_ref``)."""
    from m2s2l.triton_kernels.selective_scan.torch_scan import selective_scan_torch
    return selective_scan_torch(*args, **kw)


def _fwd_impl(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
         D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
         initial_state: Optional[torch.Tensor], delta_softplus: bool, return_last_state: bool, save_states: bool,
         last_only: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from m2s2l.triton_kernels.selective_scan.scan import selective_scan_fwd
        out, last, hc = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                           return_last_state, save_states, last_only)
        empty = lambda: u.new_zeros(0, dtype=torch.float32)  # noqa: E731  (outputs may not alias)
        return out, empty() if last is None else last, empty() if hc is None else hc
    if backend == "cuda":
        from ._cuda import selective_scan_fwd as cuda_fwd
        out, last, saved = cuda_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states)
        out = out[:, :, -1:].contiguous() if last_only else out
        return out, last if return_last_state else u.new_zeros(0, dtype=torch.float32), saved
    with torch.no_grad():
        res = _ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)
    out, last = res if return_last_state else (res, None)
    last = last.float().contiguous() if return_last_state else u.new_zeros(0, dtype=torch.float32)
    out = out[:, :, -1:] if last_only else out
    return out.contiguous(), last, u.new_zeros(0, dtype=torch.float32)


_fwd = torch.library.custom_op("m2s2l::selective_scan_fwd", mutates_args=())(_fwd_impl)


@_fwd.register_fake
def _fwd_fake(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state,
              save_states, last_only, backend):
    batch, dim, L = u.shape
    N = A.shape[1]
    last = u.new_empty(batch, dim, N, dtype=torch.float32) if return_last_state else u.new_empty(0,
                                                                                             dtype=torch.float32)
    hc = u.new_empty(0, dtype=torch.float32)
    if backend == "triton" and save_states:
        from m2s2l.triton_kernels.selective_scan.scan import saved_state_count
        ns = saved_state_count(L, N, batch * dim)
        if ns > 0:
            hc = u.new_empty(batch, ns, dim, N, dtype=torch.float32)
    if backend == "cuda" and save_states:  # the state at the start of every 64-step chunk (csrc/README.md)
        hc = u.new_empty(batch, dim, -(-L // 64), N, dtype=torch.float32)
    return u.new_empty((batch, dim, 1) if last_only else (batch, dim, L)), last, hc


def _bwd_impl(dout: torch.Tensor, dlast: Optional[torch.Tensor], u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
         B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
         delta_bias: Optional[torch.Tensor], initial_state: Optional[torch.Tensor], chunk_states: torch.Tensor,
         delta_softplus: bool, backend: str) -> list[torch.Tensor]:
    """Returns [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state]; (0,) where the input is None."""
    opt = [D, z, delta_bias, initial_state]
    if backend == "triton":
        from m2s2l.triton_kernels.selective_scan.scan import selective_scan_bwd
        grads = selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, initial_state,
                                   _none_if_empty(chunk_states), delta_softplus, dlast)
        return [g if g is not None else u.new_zeros(0) for g in grads]
    if backend == "cuda":
        from ._cuda import selective_scan_bwd as cuda_bwd
        grads = cuda_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states,
                         delta_softplus)
        return [g if g is not None else u.new_zeros(0) for g in grads]
    inputs = [t.detach().requires_grad_() for t in (u, delta, A, B, C, *opt) if t is not None]
    it = iter(inputs)
    ur, dr, Ar, Br, Cr = (next(it) for _ in range(5))
    Dr, zr, br, hr = (next(it) if t is not None else None for t in opt)
    g1, g2 = _autograd_inside_op()
    with torch.enable_grad(), g1, g2:
        out, last = _ref(ur, dr, Ar, Br, Cr, Dr, zr, br, delta_softplus, True, hr)
        loss = (out.float() * dout.float()).sum()
        if dlast is not None:
            loss = loss + (last.float() * dlast.float()).sum()
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads = iter([torch.zeros_like(t) if g is None else g.contiguous() for g, t in zip(grads, inputs)])
    res = [next(grads) for _ in range(5)]
    res += [next(grads) if t is not None else u.new_zeros(0) for t in opt]
    return res


_bwd = torch.library.custom_op("m2s2l::selective_scan_bwd", mutates_args=())(_bwd_impl)


@_bwd.register_fake
def _bwd_fake(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states, delta_softplus,
              backend):
    like = lambda t: t.new_empty(t.shape) if t is not None else u.new_empty(0)  # noqa: E731
    return [like(u), like(delta), like(A), like(B), like(C), like(D), like(z), like(delta_bias),
            like(initial_state)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state, _, last_only, backend = \
        inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, output[2])
    ctx.delta_softplus, ctx.return_last_state, ctx.backend = delta_softplus, return_last_state, backend
    ctx.last_only = last_only
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, dout, dlast, _dhc, bwd=None):
    u, delta, A, B, C, D, z, delta_bias, initial_state, hc = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    elif ctx.last_only:  # the gradient of out[..., -1:] alone: the full backward with zeros at the other steps
        dout = torch.cat([dout.new_zeros(*u.shape[:2], u.shape[2] - 1), dout], dim=2)
    dlast = dlast if ctx.return_last_state and dlast is not None else None
    g = (bwd or _bwd)(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, hc, ctx.delta_softplus, ctx.backend)
    opt = [None if t is None else gt for t, gt in zip((D, z, delta_bias, initial_state), g[5:])]
    return (*g[:5], *opt, None, None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup_context)
_EagerScan = eager_function(_fwd_impl, _setup_context,
                            lambda ctx, dout, dlast, dhc: _backward(ctx, dout, dlast, dhc, bwd=_bwd_impl))


def _check_bc(name, X, batch, dim, N, L, dtype, device):
    check_tensor(name, X, ndim=(2, 3, 4), device=device,
                 expected="(dim, dstate), (batch, dstate, seqlen) or (batch, groups, dstate, seqlen)")
    if X.dim() == 2:
        check_tensor(name, X, shape=(dim, N), dtypes=_F32, expected="(dim, dstate) fixed, float32")
        return 0
    if X.dim() == 3:
        check_tensor(name, X, shape=(batch, N, L), dtypes=(dtype,), expected="(batch, dstate, seqlen) in u's dtype")
        return 1
    check_tensor(name, X, shape=(batch, None, N, L), dtypes=(dtype,),
                 expected="(batch, groups, dstate, seqlen) in u's dtype")
    G = X.shape[1]
    if G < 1 or dim % G:
        raise ValueError(f"{name} has {G} groups (shape {tuple(X.shape)}); groups must divide dim = {dim}")
    return G


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, initial_state=None, backend="auto", last_only=False):
    """Selective scan: h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t ; y_t = C_t . h_t + D u_t ; out = y silu(z).

    Args:
      u, delta: (batch, dim, seqlen), one dtype among float32/float16/bfloat16, any strides; seqlen >= 1.
        delta <- softplus(delta + delta_bias) when delta_softplus.
      A: (dim, dstate) float32, finite (real only; dstate 1..256).
      B, C: (dim, dstate) float32 fixed per channel; or input-dependent in u's dtype: (batch, dstate, seqlen),
        or (batch, groups, dstate, seqlen) where channel c uses group c // (dim // groups). When both are
        input-dependent they have the same number of groups.
      D, delta_bias: (dim,) float32 or None.
      z: (batch, dim, seqlen) in u's dtype or None (no gate).
      delta_softplus, return_last_state: bools.
      initial_state: (batch, dim, dstate) float32 or None (zeros): the state before step 0.
      backend: "auto" | "triton" | "cuda" | "torch" (see ``m2s2l.ops._backend``).
      last_only: return the last step's output only, out (batch, dim, 1) = the full out[..., -1:] (gradients as
        for that slice); the Triton kernel for short sequences then forms no other step's output (m2s2l's
        extension, e.g. for a sequence summarised by its last step).
    Returns:
      out (batch, dim, seqlen) contiguous in u's dtype ((batch, dim, 1) with last_only), and with
      return_last_state ``(out, last_state)``,
      last_state (batch, dim, dstate) float32. Differentiable in every tensor input, including initial_state
      and through last_state, so chained calls equal one call.
    """
    check_tensor("u", u, ndim=3, dtypes=FLOAT_DTYPES, expected="(batch, dim, seqlen)")
    batch, dim, L = u.shape
    if min(batch, dim, L) < 1:
        raise ValueError(f"u must have shape (batch, dim, seqlen) with every size >= 1, got {tuple(u.shape)}")
    dev, dt = u.device, u.dtype
    check_tensor("delta", delta, shape=(batch, dim, L), dtypes=(dt,), device=dev,
                 expected="(batch, dim, seqlen) in u's dtype")
    check_tensor("A", A, ndim=2, dtypes=_F32, device=dev, expected="(dim, dstate) float32")
    N = A.shape[1]
    if A.shape[0] != dim or not 1 <= N <= 256:
        raise ValueError(f"A must have shape (dim, dstate) = ({dim}, 1..256), got {tuple(A.shape)}")
    _check_finite_A(A)
    gb = _check_bc("B", B, batch, dim, N, L, dt, dev)
    gc = _check_bc("C", C, batch, dim, N, L, dt, dev)
    if gb and gc and gb != gc:
        raise ValueError(f"B and C must have the same number of groups, got B {tuple(B.shape)}, C {tuple(C.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            check_tensor(name, t, shape=(dim,), dtypes=_F32, device=dev, expected="(dim,) float32")
    if z is not None:
        check_tensor("z", z, shape=(batch, dim, L), dtypes=(dt,), device=dev,
                     expected="(batch, dim, seqlen) in u's dtype")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, shape=(batch, dim, N), dtypes=_F32, device=dev,
                     expected="(batch, dim, dstate) float32")
    for name, v in (("delta_softplus", delta_softplus), ("return_last_state", return_last_state),
                    ("last_only", last_only)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    backend = resolve_backend(backend, dev)
    save = needs_grad(u, delta, A, B, C, D, z, delta_bias, initial_state)
    args = (u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state, save, last_only,
            backend)
    out, last, _ = call_op(_fwd, _fwd_impl, _EagerScan, args, save)
    return (out, last) if return_last_state else out
