"""``causal_conv1d_fn``: causal depthwise conv1d (Mamba's short conv), one custom op per direction.

``m2s2l::causal_conv1d_fwd`` / ``m2s2l::causal_conv1d_bwd`` serve every backend (one fvcore node, opaque to
torch.compile, one autograd formula). Optional outputs that a custom op cannot return as None travel as
empty tensors of shape (0,). In plain eager mode (no compile/jit trace/fake tensors/dispatch mode: see
``_backend.use_custom_op``) the same implementation and backward run without the custom-op dispatch, which only
costs host time there.
"""
import contextlib
from typing import Optional

import torch

from ._backend import FLOAT_DTYPES, call_op, check_tensor, eager_function, needs_grad, resolve_backend

_ACTIVATIONS = (None, "silu", "swish")


def _alloc_like(x):
    if x.stride(1) == 1 and x.stride(2) != 1 and x.shape[1] > 1:
        return x.new_empty(x.shape[0], x.shape[2], x.shape[1]).transpose(1, 2)
    return x.new_empty(x.shape)


@contextlib.contextmanager
def _enable_autograd():
    """Inside a custom op's kernel the autograd dispatch keys are excluded, so torch.enable_grad() alone
    records no graph; re-include them for the torch backend's recompute-and-differentiate backward."""
    K = torch._C.DispatchKey
    with torch._C._SetExcludeDispatchKeyGuard(K.AutogradFunctionality, False), \
            torch._C._SetExcludeDispatchKeyGuard(K.ADInplaceOrView, False), torch.enable_grad():
        yield


def _ref(x, weight, bias, initial_states, activation, return_final_states):
    from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_ref
    return causal_conv1d_ref(x, weight, bias, activation, initial_states, return_final_states)


def _fwd_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
         initial_states: Optional[torch.Tensor], activation: Optional[str], return_final_states: bool,
         backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if backend in ("triton", "cuda"):
        if backend == "triton":
            from m2s2l.triton_kernels.causal_conv1d.conv import causal_conv1d_fwd
        else:
            from ._cuda import causal_conv1d_fwd  # contiguous out (see _fwd_fake)
        out, final = causal_conv1d_fwd(x, weight, bias, initial_states, activation, return_final_states)
        if final is None:
            final = x.new_zeros(x.shape[0], x.shape[1], 0) if return_final_states else x.new_zeros(0)
        return out, final
    with torch.no_grad():
        res = _ref(x, weight, bias, initial_states, activation, return_final_states)
    if not return_final_states:
        return res.contiguous(), x.new_zeros(0)
    return res[0].contiguous(), res[1].contiguous().clone()


_fwd = torch.library.custom_op("m2s2l::causal_conv1d_fwd", mutates_args=())(_fwd_impl)


@_fwd.register_fake
def _fwd_fake(x, weight, bias, initial_states, activation, return_final_states, backend):
    if backend != "triton":
        out = x.new_empty(x.shape)
    else:
        out = _alloc_like(x)
    final = x.new_empty(x.shape[0], x.shape[1], weight.shape[1] - 1) if return_final_states else x.new_empty(0)
    return out, final


def _bwd_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
         initial_states: Optional[torch.Tensor], dout: torch.Tensor, dfinal_states: Optional[torch.Tensor],
         activation: Optional[str], backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend in ("triton", "cuda"):
        if backend == "triton":
            from m2s2l.triton_kernels.causal_conv1d.conv import causal_conv1d_bwd
        else:
            from ._cuda import causal_conv1d_bwd
        dx, dw, db, di = causal_conv1d_bwd(x, weight, bias, initial_states, dout, dfinal_states, activation)
        if di is None and initial_states is not None:  # width 1: nothing precedes x
            di = torch.zeros_like(initial_states)
        return dx, dw, x.new_zeros(0) if db is None else db, x.new_zeros(0) if di is None else di
    inputs = [t.detach().requires_grad_() for t in (x, weight, bias, initial_states) if t is not None]
    it = iter(inputs)
    xr, wr = next(it), next(it)
    br = next(it) if bias is not None else None
    ir = next(it) if initial_states is not None else None
    with _enable_autograd():
        res = _ref(xr, wr, br, ir, activation, dfinal_states is not None)
        if dfinal_states is not None:
            loss = (res[0].float() * dout.float()).sum() + (res[1].float() * dfinal_states.float()).sum()
        else:
            loss = (res.float() * dout.float()).sum()
        grads = list(torch.autograd.grad(loss, inputs, allow_unused=True))
    grads = [torch.zeros_like(t) if g is None else g.contiguous() for g, t in zip(grads, inputs)]
    it = iter(grads)
    dx, dw = next(it), next(it)
    db = next(it) if bias is not None else x.new_zeros(0)
    di = next(it) if initial_states is not None else x.new_zeros(0)
    return dx, dw, db, di


_bwd = torch.library.custom_op("m2s2l::causal_conv1d_bwd", mutates_args=())(_bwd_impl)


@_bwd.register_fake
def _bwd_fake(x, weight, bias, initial_states, dout, dfinal_states, activation, backend):
    dx = _alloc_like(x) if backend == "triton" else x.new_empty(x.shape)
    db = bias.new_empty(bias.shape) if bias is not None else x.new_empty(0)
    di = initial_states.new_empty(initial_states.shape) if initial_states is not None else x.new_empty(0)
    return dx, weight.new_empty(weight.shape), db, di


def _setup_context(ctx, inputs, output):
    x, weight, bias, initial_states, activation, return_final_states, backend = inputs
    ctx.save_for_backward(x, weight, bias, initial_states)
    ctx.activation, ctx.return_final_states, ctx.backend = activation, return_final_states, backend


def _backward(ctx, dout, dfinal, bwd=None):
    x, weight, bias, initial_states = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(x)
    use_dfinal = ctx.return_final_states and dfinal is not None and weight.shape[1] > 1
    dx, dw, db, di = (bwd or _bwd)(x, weight, bias, initial_states, dout,
                          dfinal if use_dfinal else None, ctx.activation, ctx.backend)
    return (dx, dw, db if bias is not None else None, di if initial_states is not None else None,
            None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup_context)
_EagerConv = eager_function(_fwd_impl, _setup_context,
                            lambda ctx, dout, dfinal: _backward(ctx, dout, dfinal, bwd=_bwd_impl))


def causal_conv1d_fn(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False,
                     *, backend="auto"):
    """Causal depthwise conv1d: out[t] = act(sum_k weight[:, k] * x[t - width + 1 + k] + bias).

    Args:
      x: (batch, dim, seqlen), float32/float16/bfloat16; any strides (contiguous, sliced, or channel-last
        ``(batch, seqlen, dim).transpose(1, 2)``). seqlen >= 1.
      weight: (dim, width), width >= 1 (any width; Triton unrolls it). Any float dtype (e.g. float32 weights
        with bf16 x); accumulation is always float32.
      bias: (dim,) or None.
      activation: None, "silu" or "swish" (= silu).
      initial_states: (batch, dim, width - 1), same dtype as x: the inputs that precede x (zeros if None).
      return_final_states: also return final_states (batch, dim, width - 1), the last width - 1 inputs of
        [initial_states, x] (in x's dtype).
      backend: "auto" | "triton" | "cuda" | "torch" (see ``m2s2l.ops._backend``); "cuda" runs the compiled
        extension (width <= 16, contiguous out).
    Returns:
      out (batch, dim, seqlen) in x's dtype — with the Triton backend, channel-last x gives a channel-last
      out, any other x a contiguous out — and final_states when asked. Differentiable in x, weight, bias
      and initial_states (also through final_states).
    """
    check_tensor("x", x, ndim=3, dtypes=FLOAT_DTYPES, expected="(batch, dim, seqlen)")
    batch, dim, seqlen = x.shape
    if seqlen < 1 or dim < 1 or batch < 1:
        raise ValueError(f"x must have shape (batch, dim, seqlen) with every size >= 1, got {tuple(x.shape)}")
    check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES, device=x.device, expected="(dim, width)")
    if weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (dim, width) = ({dim}, width >= 1), got {tuple(weight.shape)}")
    width = weight.shape[1]
    if bias is not None:
        check_tensor("bias", bias, shape=(dim,), dtypes=FLOAT_DTYPES, device=x.device, expected="(dim,)")
        bias = bias.contiguous()
    if initial_states is not None:
        check_tensor("initial_states", initial_states, shape=(batch, dim, width - 1), dtypes=(x.dtype,),
                     device=x.device, expected="(batch, dim, width - 1)")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if not isinstance(return_final_states, bool):
        raise TypeError(f"return_final_states must be a bool, got {type(return_final_states).__name__}")
    backend = resolve_backend(backend, x.device)
    args = (x, weight, bias, initial_states, activation, return_final_states, backend)
    out, final = call_op(_fwd, _fwd_impl, _EagerConv, args, needs_grad(x, weight, bias, initial_states))
    return (out, final) if return_final_states else out
