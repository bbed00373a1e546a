"""One-token streaming steps (decode): ``causal_conv1d_update`` and ``selective_state_update``.

Both update their state in place and have no backward (decode runs under no_grad). Each is one
``torch.library.custom_op`` with ``mutates_args`` naming the state, so torch.compile treats it as an opaque
in-place op (functionalized, no graph break) and fvcore sees one node.
"""
from typing import Optional

import torch

from ._backend import FLOAT_DTYPES, check_tensor, resolve_backend


@torch.library.custom_op("m2s2l::causal_conv1d_update", mutates_args=("conv_state",))
def _conv_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 activation: Optional[str], backend: str) -> torch.Tensor:
    if backend == "triton":
        from m2s2l.triton_kernels.causal_conv1d.step import causal_conv1d_update as launch
        return launch(x, conv_state, weight, bias, activation)
    if backend == "cuda":
        raise RuntimeError("causal_conv1d_update: the 'cuda' backend has no step kernel yet; use 'triton'/'torch'")
    from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_update_ref
    return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)


@_conv_update.register_fake
def _conv_update_fake(x, conv_state, weight, bias, activation, backend):
    return x.new_empty(x.shape[0], x.shape[1])


@torch.library.custom_op("m2s2l::selective_state_update", mutates_args=("state",))
def _state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                  dt_bias: Optional[torch.Tensor], dt_softplus: bool, backend: str) -> torch.Tensor:
    if backend == "triton":
        from m2s2l.triton_kernels.selective_scan.step import selective_state_update as launch
        return launch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if backend == "cuda":
        raise RuntimeError("selective_state_update: the 'cuda' backend has no step kernel yet; use 'triton'/'torch'")
    from m2s2l.triton_kernels.selective_scan.naive import selective_state_update_ref
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@_state_update.register_fake
def _state_update_fake(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    return x.new_empty(x.shape[0], x.shape[1])


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, *, backend="auto"):
    """One decode step of ``causal_conv1d_fn``; updates ``conv_state`` in place.

    Args:
      x: (batch, dim), float32/float16/bfloat16 — the new token.
      conv_state: (batch, dim, state_len) with state_len >= width - 1, same dtype as x: the previous inputs
        (the last width - 1 columns enter the conv). Shifted left by one in place; x becomes its last column.
      weight: (dim, width); bias: (dim,) or None; activation: None, "silu" or "swish".
    Returns: out (batch, dim) in x's dtype.
    """
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES, expected="(batch, dim)")
    batch, dim = x.shape
    check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES, device=x.device, expected="(dim, width)")
    if weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (dim, width) = ({dim}, width >= 1), got {tuple(weight.shape)}")
    width = weight.shape[1]
    check_tensor("conv_state", conv_state, ndim=3, dtypes=(x.dtype,), device=x.device,
                 expected="(batch, dim, state_len >= width - 1)")
    if conv_state.shape[:2] != (batch, dim) or conv_state.shape[2] < width - 1:
        raise ValueError(f"conv_state must have shape (batch, dim, state_len >= width - 1) = ({batch}, {dim}, "
                         f">= {width - 1}), got {tuple(conv_state.shape)}")
    if bias is not None:
        check_tensor("bias", bias, shape=(dim,), dtypes=FLOAT_DTYPES, device=x.device, expected="(dim,)")
        bias = bias.contiguous()
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    return _conv_update(x, conv_state, weight, bias, activation, resolve_backend(backend, x.device))


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, *,
                           backend="auto"):
    """One decode step of ``selective_scan_fn``; updates ``state`` in place.

    h = exp(dt * A) * h + dt * B * x ;  out = (sum_n C h + D x) * silu(z), with dt = softplus(dt + dt_bias)
    when ``dt_softplus``.
    Args:
      state: (batch, dim, dstate), float32 recommended (fp16/bf16 accepted; math is float32).
      x, dt: (batch, dim); z: (batch, dim) or None — float32/float16/bfloat16.
      A: (dim, dstate). B, C: (batch, dstate) or (batch, groups, dstate) with dim % groups == 0
        (channel c uses group c // (dim // groups)). D, dt_bias: (dim,) or None.
    Returns: out (batch, dim) in x's dtype.
    """
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES, expected="(batch, dim)")
    batch, dim = x.shape
    dev = x.device
    check_tensor("state", state, ndim=3, dtypes=FLOAT_DTYPES, device=dev, expected="(batch, dim, dstate)")
    if state.shape[:2] != (batch, dim):
        raise ValueError(f"state must have shape (batch, dim, dstate) = ({batch}, {dim}, dstate), "
                         f"got {tuple(state.shape)}")
    dstate = state.shape[2]
    check_tensor("dt", dt, shape=(batch, dim), dtypes=FLOAT_DTYPES, device=dev, expected="(batch, dim)")
    check_tensor("A", A, shape=(dim, dstate), dtypes=FLOAT_DTYPES, device=dev, expected="(dim, dstate)")
    for name, t in (("B", B), ("C", C)):
        check_tensor(name, t, ndim=(2, 3), dtypes=FLOAT_DTYPES, device=dev,
                     expected="(batch, dstate) or (batch, groups, dstate)")
        if t.shape[0] != batch or t.shape[-1] != dstate or (t.dim() == 3 and dim % t.shape[1] != 0):
            raise ValueError(f"{name} must have shape (batch, dstate) = ({batch}, {dstate}) or (batch, groups, "
                             f"dstate) = ({batch}, groups dividing {dim}, {dstate}), got {tuple(t.shape)}")
    if B.shape != C.shape:
        raise ValueError(f"B and C must have the same shape, got B {tuple(B.shape)} and C {tuple(C.shape)}")
    if z is not None:
        check_tensor("z", z, shape=(batch, dim), dtypes=FLOAT_DTYPES, device=dev, expected="(batch, dim)")
    if D is not None:
        check_tensor("D", D, shape=(dim,), dtypes=FLOAT_DTYPES, device=dev, expected="(dim,)")
        D = D.contiguous()
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, shape=(dim,), dtypes=FLOAT_DTYPES, device=dev, expected="(dim,)")
        dt_bias = dt_bias.contiguous()
    return _state_update(state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), resolve_backend(backend, dev))
