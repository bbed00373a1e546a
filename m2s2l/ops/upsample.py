"""``upsample_cat``: ``torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False),
skip], dim=1)`` as one Triton kernel (the decoders' upsampling step).

The Triton backend runs as the custom op ``m2s2l::upsample_cat_fwd`` for the tracers (torch.compile, jit trace /
fvcore, fake tensors, dispatch modes; see ``_backend.use_custom_op``) and as a torch.autograd.Function in eager mode.
Its backward is PyTorch's: the skip half of the gradient is a slice, the x half goes through
``aten.upsample_bilinear2d_backward`` (a native op every tracer knows). The torch backend is the two-op form itself.
"""
import torch

from ._backend import BACKENDS, FLOAT_DTYPES, call_op, check_tensor, eager_function, needs_grad, resolve_backend


def _fwd_impl(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    from m2s2l.triton_kernels.upsample.upsample_cat import upsample_cat_fwd
    return upsample_cat_fwd(x, skip)


_fwd = torch.library.custom_op("m2s2l::upsample_cat_fwd", mutates_args=())(_fwd_impl)


@_fwd.register_fake
def _fwd_fake(x, skip):
    from m2s2l.triton_kernels.upsample.upsample_cat import out_layout
    B, Cx = x.shape[:2]
    Cs, H, W = skip.shape[1:]
    return torch.empty((B, Cx + Cs, H, W), dtype=torch.promote_types(x.dtype, skip.dtype), device=x.device,
                       memory_format=out_layout(skip))


def _setup_context(ctx, inputs, output):
    x, skip = inputs
    ctx.x_meta = (tuple(x.shape), x.dtype)
    ctx.skip_dtype = skip.dtype


def _backward(ctx, dout):
    shape, x_dtype = ctx.x_meta
    Cx = shape[1]
    dx = torch.ops.aten.upsample_bilinear2d_backward(dout[:, :Cx].to(x_dtype), list(dout.shape[-2:]), list(shape),
                                                     False, None, None)
    return dx, dout[:, Cx:].to(ctx.skip_dtype)


_fwd.register_autograd(_backward, setup_context=_setup_context)
_Eager = eager_function(_fwd_impl, _setup_context, _backward)


def upsample_cat(x, skip, *, backend="auto"):
    """Bilinear resize of x to skip's size, concatenated with skip along channels:
    ``torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], dim=1)``.

    Args:
      x: (B, Cx, h, w), float32/float16/bfloat16 (float64: the torch path only), any strides, h, w >= 1.
      skip: (B, Cs, H, W) on x's device, same dtype choices (may differ from x's: the output takes the promoted
        dtype, as torch.cat), any strides.
      backend: "auto" | "triton" | "cuda" | "torch". "auto" = the Triton kernel for CUDA tensors (and for CPU
        tensors under TRITON_INTERPRET=1), the two PyTorch ops otherwise; "cuda" has no compiled kernel of its own
        and means "auto"; "torch" = the two ops.
    Returns:
      (B, Cx + Cs, H, W) in torch.promote_types(x.dtype, skip.dtype); Triton backend: channels_last memory format
      when skip is channels_last, else contiguous. The resize is computed in float32 and rounded to x's dtype (as
      F.interpolate), so the result equals the two-op form up to float32 rounding order. Differentiable in x and
      skip (the backward is PyTorch's upsample_bilinear2d_backward and a slice).
    """
    dtypes = FLOAT_DTYPES + (torch.float64,)
    check_tensor("x", x, ndim=4, dtypes=dtypes, expected="(B, Cx, h, w)")
    check_tensor("skip", skip, ndim=4, dtypes=dtypes, device=x.device, expected="(B, Cs, H, W)")
    if skip.shape[0] != x.shape[0]:
        raise ValueError(f"skip must have shape (B, Cs, H, W) with x's batch B = {x.shape[0]}, "
                         f"got {tuple(skip.shape)}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"x must have shape (B, Cx, h, w) with h, w >= 1, got {tuple(x.shape)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    f64 = torch.float64 in (x.dtype, skip.dtype)
    if backend == "triton" and f64:
        raise TypeError(f"backend='triton' takes float32/float16/bfloat16 x and skip, got {x.dtype} and "
                        f"{skip.dtype}; use backend='auto' or 'torch' for float64")
    if backend == "cuda" or (backend == "auto" and f64):
        backend = "torch" if f64 else "auto"
    if resolve_backend(backend, x.device) != "triton":
        from m2s2l.triton_kernels.upsample.naive import upsample_cat_ref
        return upsample_cat_ref(x, skip)
    return call_op(_fwd, _fwd_impl, _Eager, (x, skip), needs_grad(x, skip))
