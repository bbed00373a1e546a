"""``layer_norm``: LayerNorm over the last axis with a Triton kernel for many short rows.

The Triton backend runs as the custom ops ``m2s2l::layer_norm_fwd`` / ``m2s2l::layer_norm_bwd`` for the tracers
(torch.compile, jit trace / fvcore, fake tensors, dispatch modes; see ``_backend.use_custom_op``) and as a plain
torch.autograd.Function with the same backward in eager mode. The torch backend is ``F.layer_norm`` itself (a
native op that every tracer, autocast and ONNX already know), so it needs no custom op.
"""
import numbers
from typing import Optional

import torch
import torch.nn.functional as F

from ._backend import BACKENDS, FLOAT_DTYPES, call_op, check_tensor, eager_function, needs_grad, resolve_backend


def _empty_if_none(t, like):
    return like.new_zeros(0) if t is None else t


def _fwd_impl(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
              out_dtype: Optional[torch.dtype]) -> torch.Tensor:
    from m2s2l.triton_kernels.layer_norm.layer_norm import layer_norm_fwd
    return layer_norm_fwd(x, weight, bias, eps, out_dtype)


_fwd = torch.library.custom_op("m2s2l::layer_norm_fwd", mutates_args=())(_fwd_impl)


@_fwd.register_fake
def _fwd_fake(x, weight, bias, eps, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype or x.dtype)


def _bwd_impl(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], dy: torch.Tensor,
              eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from m2s2l.triton_kernels.layer_norm.layer_norm import layer_norm_bwd
    dx, dw, db = layer_norm_bwd(x, weight, bias, dy, eps)
    return dx, _empty_if_none(dw, x), _empty_if_none(db, x)


_bwd = torch.library.custom_op("m2s2l::layer_norm_bwd", mutates_args=())(_bwd_impl)


@_bwd.register_fake
def _bwd_fake(x, weight, bias, dy, eps):
    return (x.new_empty(x.shape), x.new_empty(0) if weight is None else weight.new_empty(weight.shape),
            x.new_empty(0) if bias is None else bias.new_empty(bias.shape))


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, out_dtype = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.eps = eps


def _backward(ctx, dy, bwd=None):
    x, weight, bias = ctx.saved_tensors
    dx, dw, db = (bwd or _bwd)(x, weight, bias, dy, ctx.eps)
    return dx, dw if weight is not None else None, db if bias is not None else None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)
_EagerLayerNorm = eager_function(_fwd_impl, _setup_context, lambda ctx, dy: _backward(ctx, dy, bwd=_bwd_impl))


def _torch_layer_norm(x, weight, bias, eps, out_dtype):
    """F.layer_norm; mixed dtypes (parameters or output unlike x) go through float32 copies, the precision the
    kernel computes in (F.layer_norm does not take every mix of dtypes on every device)."""
    C = x.shape[-1]
    same = all(t is None or t.dtype == x.dtype for t in (weight, bias)) and out_dtype in (None, x.dtype)
    if same:
        return F.layer_norm(x, (C,), weight, bias, eps)
    w, b = (None if t is None else t.float() for t in (weight, bias))
    return F.layer_norm(x.float(), (C,), w, b, eps).to(out_dtype or x.dtype)


# "auto" on CUDA takes the Triton kernel only where it measured faster than PyTorch's (NVIDIA H200, bf16,
# `python bench/layer_norm_speed.py`, docs/BENCHMARKS.md): forward 30x at C = 32, 6-9x at C = 64, 2.2-3.3x at C = 128, 0.6-1.1x at
# C = 256; forward+backward 1.5-6x at C <= 64 but 0.34-0.71x at C >= 128 (the backward's per-program partial sums).
AUTO_MAX_C_GRAD = 64      # widest rows "auto" sends to the kernel when a gradient is needed
AUTO_MAX_C_NOGRAD = 128   # ... and in inference


def _auto_max_c(x, weight, bias):
    return AUTO_MAX_C_GRAD if needs_grad(x, weight, bias) else AUTO_MAX_C_NOGRAD


def layer_norm(x, weight=None, bias=None, eps=1e-5, *, backend="auto", out_dtype=None):
    """LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * weight + bias (biased variance, as
    ``F.layer_norm(x, (C,), weight, bias, eps)``).

    Args:
      x: (..., C), float32/float16/bfloat16, C >= 1 (any number of rows, including 0). Strides (Triton
        backend): a tensor whose leading axes merge into one row stride with unit stride along C (contiguous, a
        slice of rows, a slice along C of a wider tensor: ``x[..., :C]``) is read in place, and so is one whose
        axes before the last two merge into one stride (``buf[:, s:s + T]`` of an (R, S, C) buffer: the streaming
        state's rows) in the forward; any other layout is copied to a contiguous tensor first (as F.layer_norm
        does).
      weight, bias: (C,) or None; any float dtype (e.g. float32 parameters with bf16 x).
      eps: float >= 0, added to the variance.
      backend: "auto" | "triton" | "cuda" | "torch". "auto" = the Triton kernel for CUDA tensors (and for CPU
        tensors under TRITON_INTERPRET=1), F.layer_norm otherwise; it also uses F.layer_norm for rows wider
        than ``MAX_C`` = 16384, which the kernel does not take ("triton" raises there), and, on CUDA, for rows
        wider than 64 values when a gradient is needed or 128 in inference (where PyTorch's kernel measured
        faster: ``AUTO_MAX_C_GRAD`` / ``AUTO_MAX_C_NOGRAD``). "cuda" has no compiled
        LayerNorm of its own and means "auto". "torch" = F.layer_norm.
      out_dtype: dtype of y (default x's dtype). ``out_dtype=torch.float32`` with a bf16/fp16 x is what
        nn.LayerNorm returns under CUDA autocast (it runs in float32), without first copying x to float32.
    Returns:
      y with x's shape, dtype ``out_dtype or x.dtype``; contiguous with the Triton backend. Statistics in float32
      on both backends. Differentiable in x, weight and bias (Triton: dx in x's dtype, dweight/dbias in their
      parameter's dtype, reduced deterministically).
    Autocast: this function does no autocast casting itself (neither does the custom op); for nn.LayerNorm's
    behaviour use ``m2s2l.modules.LayerNorm``, which passes ``out_dtype`` accordingly.
    """
    check_tensor("x", x, dtypes=FLOAT_DTYPES, expected="(..., C)")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have shape (..., C) with C >= 1, got {tuple(x.shape)}")
    C = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(name, t, shape=(C,), dtypes=FLOAT_DTYPES, device=x.device, expected="(C,)")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be None or one of {[str(d) for d in FLOAT_DTYPES]}, got {out_dtype!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    from m2s2l.triton_kernels.layer_norm import MAX_C
    if backend == "triton" and C > MAX_C:
        raise ValueError(f"backend='triton' takes rows of at most {MAX_C} values, x has C = {C}; "
                         "use backend='auto' or 'torch'")
    if backend == "cuda":  # no compiled LayerNorm in m2s2l._C
        backend = "auto"
    if backend == "auto" and (C > MAX_C or (x.device.type == "cuda" and C > _auto_max_c(x, weight, bias))):
        backend = "torch"
    if resolve_backend(backend, x.device) != "triton":
        return _torch_layer_norm(x, weight, bias, float(eps), out_dtype)
    if weight is not None:
        weight = weight.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    args = (x, weight, bias, float(eps), out_dtype)
    return call_op(_fwd, _fwd_impl, _EagerLayerNorm, args, needs_grad(x, weight, bias))
