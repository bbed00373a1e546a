"""``mamba_block_last``: the last step of a pre-norm residual Mamba block over many short sequences, as one kernel.

Inference only (no autograd): the temporal encoders of the video model need, per spatial location and scale, only
the last step of a block over a few frames; see ``m2s2l.triton_kernels.mamba_block.mamba_last`` for the kernel and
why. The Triton backend runs as the custom op ``m2s2l::mamba_block_last`` for the tracers (torch.compile, jit
trace / fvcore, fake tensors; see ``_backend.use_custom_op``) and directly in eager mode; the torch backend is the
reference (``naive.mamba_block_last_ref``: the unfused block of reference ops).
"""
import math
import numbers
from typing import Optional

import torch

from ._backend import BACKENDS, FLOAT_DTYPES, check_tensor, needs_grad, resolve_backend, use_custom_op


def _fwd_impl(x: torch.Tensor, out: torch.Tensor, norm_weight: Optional[torch.Tensor],
              norm_bias: Optional[torch.Tensor], eps: float, in_proj_weight: torch.Tensor,
              conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor], x_proj_weight: torch.Tensor,
              dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor, D: torch.Tensor,
              out_proj_weight: torch.Tensor, pool: int, dot_dtype: torch.dtype) -> None:
    from m2s2l.triton_kernels.mamba_block.mamba_last import mamba_last_fwd
    mamba_last_fwd(x, out, norm_weight, norm_bias, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                   dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, pool, dot_dtype)


_fwd = torch.library.custom_op("m2s2l::mamba_block_last", mutates_args=("out",))(_fwd_impl)


@_fwd.register_fake
def _fwd_fake(x, out, norm_weight, norm_bias, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
              dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, pool, dot_dtype):
    return None


def _check_block_input(x, pool, eps, in_proj_weight):
    """Validate a block op's x, pool, eps and in_proj_weight; returns (lead dims, seqlen, d_model, d_inner,
    device)."""
    check_tensor("x", x, ndim=(3, 4), dtypes=FLOAT_DTYPES, expected="(batch, seqlen, d_model)")
    *lead, T, C = x.shape
    dev = x.device
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1 or T % pool or T == 0:
        raise ValueError(f"pool must be an int >= 1 dividing seqlen = {T} (seqlen >= 1), got {pool!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
    check_tensor("in_proj_weight", in_proj_weight, ndim=2, dtypes=FLOAT_DTYPES, device=dev,
                 expected="(2 * d_inner, d_model)")
    if in_proj_weight.shape[1] != C or in_proj_weight.shape[0] % 2:
        raise ValueError(f"in_proj_weight must have shape (2 * d_inner, d_model={C}), "
                         f"got {tuple(in_proj_weight.shape)}")
    return lead, T, C, in_proj_weight.shape[0] // 2, dev


def _block_backend(backend, ok, device, limits):
    """The backend a block op runs ("triton" or "torch"): "cuda" means "auto", which takes the Triton kernel where
    its sizes are ``ok``; "triton" with sizes it does not take is a ValueError quoting ``limits``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton" and not ok:
        raise ValueError(f"backend='triton' takes {limits}: use backend='auto' or 'torch'")
    if backend in ("cuda", "auto") and not ok:
        return "torch"
    return resolve_backend("auto" if backend == "cuda" else backend, device)


def eligible(d_model, d_inner, d_state, dt_rank, d_conv, steps=1):
    """Whether the Triton kernel takes a block of these sizes on ``steps`` (pooled) steps: d_state <= 16,
    dt_rank <= 16, d_conv <= 4, and d_inner <= 128 (one chunk), or <= 1024 with at most 8 steps (in chunks): its
    per-program state and step values must fit the registers."""
    from m2s2l.triton_kernels import mamba_block as mb  # the limits only: no Triton import
    wide_ok = d_inner <= mb.MAX_D_INNER and steps <= mb.MAX_CHUNKED_STEPS
    return (1 <= d_state <= mb.MAX_D_STATE and 1 <= dt_rank <= mb.MAX_DT_RANK and 1 <= d_conv <= mb.MAX_D_CONV
            and d_model >= 1 and 1 <= d_inner and (d_inner <= mb.MAX_ONE_CHUNK or wide_ok))


def mamba_block_last(x, norm_weight, norm_bias, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                     dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, *, eps=1e-5, pool=1, out=None,
                     backend="auto"):
    """The last step of ``x + Mamba(LayerNorm(x))`` on every sequence, after averaging groups of ``pool`` steps.

    With xp = x averaged over consecutive groups of ``pool`` steps (seqlen / pool steps), returns
    ``xp[..., -1, :] + out_proj(y_T)``, y_T the last step of the Mamba-1 mixer (mamba-ssm's ``Mamba`` without
    biases on in_proj / out_proj: in_proj -> causal depthwise conv + SiLU -> x_proj -> dt_proj -> selective scan
    with D, the SiLU(z) gate, dt bias and softplus, from a zero state) applied to LayerNorm(xp): what
    ``m2s2l.models.temporal.MambaBlock(..)(xp, last_only=True)[:, 0]`` computes, in one kernel. Inference only.

    Args:
      x: (batch, seqlen, d_model) or (n_outer, n_inner, seqlen, d_model), float32/float16/bfloat16, any strides
        (e.g. a (B, T, C, H, W) feature map seen as (B, H*W, T, C) without a copy); seqlen % pool == 0.
      norm_weight, norm_bias: (d_model,) or None -- the LayerNorm's affine parameters.
      in_proj_weight: (2 * d_inner, d_model); conv_weight: (d_inner, d_conv); conv_bias: (d_inner,) or None;
      x_proj_weight: (dt_rank + 2 * d_state, d_inner) -- rows dt, B, C;
      dt_proj_weight: (d_inner, dt_rank); dt_proj_bias: (d_inner,); A_log: (d_inner, d_state) (A = -exp(A_log));
      D: (d_inner,); out_proj_weight: (d_model, d_inner). Any float dtypes; one device.
      eps: LayerNorm epsilon. pool: int >= 1 dividing seqlen.
      out: optional output tensor of shape x.shape[:-2] + (d_model,) (any strides, e.g. a column slice of a wider
        buffer), written in place; default a new tensor in x's dtype.
      backend: "auto" | "triton" | "cuda" | "torch". "auto" = the Triton kernel for CUDA tensors (and for CPU
        tensors under TRITON_INTERPRET=1) where ``eligible`` sizes allow (d_inner <= 128, or <= 1024 on <= 8
        pooled steps; d_state, dt_rank <= 16; d_conv <= 4), the reference otherwise; "cuda" means
        "auto"; "torch" = the reference.
    GEMM precision: under autocast its dtype (as the unfused block's GEMMs), otherwise x's dtype (float32: exact
    products). Returns out (x.shape[:-2] + (d_model,)). Raises if a gradient would be needed (no backward).
    """
    lead, T, C, DI, dev = _check_block_input(x, pool, eps, in_proj_weight)
    check_tensor("A_log", A_log, shape=(DI, None), dtypes=FLOAT_DTYPES, device=dev, expected="(d_inner, d_state)")
    check_tensor("dt_proj_weight", dt_proj_weight, shape=(DI, None), dtypes=FLOAT_DTYPES, device=dev,
                 expected="(d_inner, dt_rank)")
    check_tensor("conv_weight", conv_weight, shape=(DI, None), dtypes=FLOAT_DTYPES, device=dev,
                 expected="(d_inner, d_conv)")
    N, R, K = A_log.shape[1], dt_proj_weight.shape[1], conv_weight.shape[1]
    shapes = {"x_proj_weight": (x_proj_weight, (R + 2 * N, DI), "(dt_rank + 2 * d_state, d_inner)"),
              "dt_proj_bias": (dt_proj_bias, (DI,), "(d_inner,)"), "D": (D, (DI,), "(d_inner,)"),
              "out_proj_weight": (out_proj_weight, (C, DI), "(d_model, d_inner)"),
              "conv_bias": (conv_bias, (DI,), "(d_inner,)"), "norm_weight": (norm_weight, (C,), "(d_model,)"),
              "norm_bias": (norm_bias, (C,), "(d_model,)")}
    for name, (t, shape, desc) in shapes.items():
        if t is None and name in ("conv_bias", "norm_weight", "norm_bias"):
            continue
        check_tensor(name, t, shape=shape, dtypes=FLOAT_DTYPES, device=dev, expected=desc)
    if out is not None:
        check_tensor("out", out, shape=tuple(lead) + (C,), dtypes=FLOAT_DTYPES, device=dev,
                     expected="x.shape[:-2] + (d_model,)")
    params = (norm_weight, norm_bias, in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
              dt_proj_bias, A_log, D, out_proj_weight)
    if needs_grad(x, *params) or (out is not None and needs_grad(out)):
        raise RuntimeError("mamba_block_last is inference only (no backward): call it under torch.no_grad() or "
                           "with tensors that do not require grad")
    backend = _block_backend(backend, eligible(C, DI, N, R, K, T // pool), dev,
                             "d_state <= 16, dt_rank <= 16, d_conv <= 4 and d_inner <= 128 (or <= 1024 on <= 8 "
                             f"pooled steps); got d_inner={DI}, d_state={N}, dt_rank={R}, d_conv={K}, {T // pool} steps")
    if backend != "triton":
        from m2s2l.triton_kernels.mamba_block.naive import mamba_block_last_ref
        res = mamba_block_last_ref(x, *params, eps=float(eps), pool=pool)
        if out is None:
            return res.to(x.dtype)
        out.copy_(res)
        return out
    amp = torch.is_autocast_enabled(dev.type)
    dot_dtype = torch.get_autocast_dtype(dev.type) if amp else x.dtype
    if out is None:
        out = torch.empty(tuple(lead) + (C,), device=dev, dtype=x.dtype)
    x4 = x if x.dim() == 4 else x.unsqueeze(0)
    out3 = out if out.dim() == 3 else out.unsqueeze(0)
    params = tuple(None if t is None else t.contiguous() for t in params)
    args = (x4, out3, params[0], params[1], float(eps)) + params[2:] + (pool, dot_dtype)
    if use_custom_op(x):
        _fwd(*args)
    else:
        _fwd_impl(*args)
    return out


def _prep_impl(x: torch.Tensor, norm_weight: Optional[torch.Tensor], norm_bias: Optional[torch.Tensor], eps: float,
               in_proj_weight: torch.Tensor, conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor],
               xdt_weight: torch.Tensor, pool: int, dot_dtype: torch.dtype, u: torch.Tensor, delta: torch.Tensor,
               bc: torch.Tensor, z: torch.Tensor, x_last: torch.Tensor) -> None:
    from m2s2l.triton_kernels.mamba_block.mamba_prep import mamba_prep_fwd
    mamba_prep_fwd(x, norm_weight, norm_bias, eps, in_proj_weight, conv_weight, conv_bias, xdt_weight, pool,
                   dot_dtype, u, delta, bc, z, x_last)


_prep = torch.library.custom_op("m2s2l::mamba_block_prep", mutates_args=("u", "delta", "bc", "z", "x_last"))(
    _prep_impl)


@_prep.register_fake
def _prep_fake(x, norm_weight, norm_bias, eps, in_proj_weight, conv_weight, conv_bias, xdt_weight, pool, dot_dtype,
               u, delta, bc, z, x_last):
    return None


def prep_eligible(d_inner, d_conv):
    """Whether ``mamba_block_prep``'s Triton kernel takes a block of these sizes: d_inner <= 128 (one register tile
    of channels), d_conv <= 4."""
    from m2s2l.triton_kernels import mamba_block as mb
    return 1 <= d_inner <= mb.MAX_ONE_CHUNK and 1 <= d_conv <= mb.MAX_D_CONV


def mamba_block_prep(x, norm_weight, norm_bias, in_proj_weight, conv_weight, conv_bias, xdt_weight, *, eps=1e-5,
                     pool=1, backend="auto"):
    """Everything a pre-norm Mamba block's last-step inference computes before its selective scan, on every
    sequence, after averaging groups of ``pool`` steps: one kernel instead of the pooling mean, LayerNorm, in_proj,
    the causal conv and the x_proj GEMM (``m2s2l.triton_kernels.mamba_block.mamba_prep``). Inference only.

    With xp = x averaged over groups of ``pool`` steps (T' = seqlen / pool steps), h = LayerNorm(xp), xi = h @
    in_proj_weight[:d_inner]^T and u = SiLU(causal_conv(xi) + conv_bias), returns
      u (rows, T', d_inner); delta (rows, T', d_inner) = the first d_inner columns of u @ xdt_weight^T (delta before
      dt_proj's bias and the softplus); bc (rows, T', 2 * d_state) = its other columns, [B | C];
      z (rows, d_inner) = h_T @ in_proj_weight[d_inner:]^T (the last step's gate); x_last (rows, d_model) = xp_T;
    rows = prod(x.shape[:-2]). u, delta, bc and z are in the GEMM dtype (the autocast dtype under autocast, else x's),
    x_last in x's dtype: the values the unfused block stores, up to accumulation order.

    Args: x (batch, seqlen, d_model) or (n_outer, n_inner, seqlen, d_model), float32/float16/bfloat16, any strides;
    norm_weight, norm_bias (d_model,) or None; in_proj_weight (2 * d_inner, d_model); conv_weight (d_inner, d_conv);
    conv_bias (d_inner,) or None; xdt_weight (d_inner + 2 * d_state, d_inner) -- ``Mamba.fold_dt_proj``'s
    [dt_proj.weight @ x_proj.weight[:dt_rank]; x_proj.weight[dt_rank:]]; eps; pool (int >= 1 dividing seqlen);
    backend "auto" (the Triton kernel for CUDA tensors and under TRITON_INTERPRET=1 where ``prep_eligible``, else
    the reference) | "triton" | "cuda" (= "auto") | "torch" (``naive.mamba_block_prep_ref``).
    """
    lead, T, C, DI, dev = _check_block_input(x, pool, eps, in_proj_weight)
    check_tensor("conv_weight", conv_weight, shape=(DI, None), dtypes=FLOAT_DTYPES, device=dev,
                 expected="(d_inner, d_conv)")
    check_tensor("xdt_weight", xdt_weight, shape=(None, DI), dtypes=FLOAT_DTYPES, device=dev,
                 expected="(d_inner + 2 * d_state, d_inner)")
    N2 = xdt_weight.shape[0] - DI
    if N2 < 2 or N2 % 2:
        raise ValueError(f"xdt_weight must have shape (d_inner + 2 * d_state, d_inner) = ({DI} + 2 * d_state, {DI}) "
                         f"with d_state >= 1, got {tuple(xdt_weight.shape)}")
    for name, t in (("conv_bias", conv_bias), ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if t is not None:
            n = DI if name == "conv_bias" else C
            check_tensor(name, t, shape=(n,), dtypes=FLOAT_DTYPES, device=dev, expected=f"({n},)")
    params = (norm_weight, norm_bias, in_proj_weight, conv_weight, conv_bias, xdt_weight)
    if needs_grad(x, *params):
        raise RuntimeError("mamba_block_prep is inference only (no backward): call it under torch.no_grad() or "
                           "with tensors that do not require grad")
    backend = _block_backend(backend, prep_eligible(DI, conv_weight.shape[1]), dev,
                             f"d_inner <= 128 and d_conv <= 4; got d_inner={DI}, d_conv={conv_weight.shape[1]}")
    if backend != "triton":
        from m2s2l.triton_kernels.mamba_block.naive import mamba_block_prep_ref
        return mamba_block_prep_ref(x, *params, eps=float(eps), pool=pool)
    amp = torch.is_autocast_enabled(dev.type)
    dt = torch.get_autocast_dtype(dev.type) if amp else x.dtype
    rows, T2 = math.prod(lead), T // pool
    u = torch.empty(rows, T2, DI, device=dev, dtype=dt)
    delta = torch.empty(rows, T2, DI, device=dev, dtype=dt)
    bc = torch.empty(rows, T2, N2, device=dev, dtype=dt)
    z = torch.empty(rows, DI, device=dev, dtype=dt)
    x_last = torch.empty(rows, C, device=dev, dtype=x.dtype)
    x4 = x if x.dim() == 4 else x.unsqueeze(0)
    params = tuple(None if t is None else t.contiguous() for t in params)
    args = (x4, params[0], params[1], float(eps)) + params[2:] + (pool, dt, u, delta, bc, z, x_last)
    if use_custom_op(x):
        _prep(*args)
    else:
        _prep_impl(*args)
    return u, delta, bc, z, x_last
