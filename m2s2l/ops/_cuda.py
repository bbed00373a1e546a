"""Thin wrappers around the compiled extension ``m2s2l._C`` (csrc/), with the same contract as the Triton
launchers: plain functions on CUDA tensors, no autograd; ``m2s2l.ops`` wires them into its custom ops for
``backend="cuda"``. Arguments are assumed validated by the public functions; the C++ side still checks
every shape/dtype/device precondition with a message (RuntimeError).

Dtypes: u/delta/z (and x) in float32/float16/bfloat16; A, D, delta_bias and states are passed as float32;
B and C are passed in u's dtype when both already have it, else both in float32. Gradients come back in the
dtype of the input they belong to.
"""
import torch

from ._backend import cuda_ext


def _ext():
    ext = cuda_ext()
    if ext is None:
        raise RuntimeError("m2s2l._C (the CUDA extension) is not built: reinstall on a machine with nvcc and "
                           "CUDA torch using `M2S2L_BUILD_CUDA=1 pip install -e . --no-build-isolation`")
    return ext


def _f32(t):
    return None if t is None else t.float()


def _bc(u, B, C):
    if B.dtype == C.dtype and B.dtype in (u.dtype, torch.float32):
        return B, C
    return B.float(), C.float()


def _cast(g, like):
    return None if (g is None or like is None) else g.to(like.dtype)


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                       delta_softplus=False, save_states=True):
    """u, delta, z: (batch, dim, seqlen); A: (dim, N); B, C: (dim, N), (batch, N, seqlen) or
    (batch, G, N, seqlen); D, delta_bias: (dim,); initial_state: (batch, dim, N).

    Returns ``(out, last_state, saved_states)``: out (batch, dim, seqlen) in u's dtype, last_state
    (batch, dim, N) float32, saved_states (batch, dim, ceil(seqlen / 64), N) float32 = the state at the start
    of every 64-step chunk (what the backward needs; an empty tensor when save_states=False).
    """
    B, C = _bc(u, B, C)
    delta = delta.to(u.dtype)
    z = None if z is None else z.to(u.dtype)
    return tuple(_ext().selective_scan_fwd(u, delta, _f32(A), B, C, _f32(D), z, _f32(delta_bias),
                                           _f32(initial_state), bool(delta_softplus), bool(save_states)))


def selective_scan_bwd(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, saved_states,
                       delta_softplus=False):
    """Gradients of ``selective_scan_fwd``. dout: (batch, dim, seqlen); dlast_state: (batch, dim, N) or None;
    saved_states: the third output of the forward; initial_state only says whether its gradient is wanted.

    Returns ``(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state)``, None where the input is None,
    each in the dtype of its input.
    """
    Bk, Ck = _bc(u, B, C)
    dz_in = None if z is None else z.to(u.dtype)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = _ext().selective_scan_bwd(
        dout.to(u.dtype), _f32(dlast_state), u, delta.to(u.dtype), _f32(A), Bk, Ck, _f32(D), dz_in,
        _f32(delta_bias), saved_states, bool(delta_softplus), initial_state is not None)
    return (du, _cast(ddelta, delta), _cast(dA, A), _cast(dB, B), _cast(dC, C), _cast(dD, D), _cast(dz, z),
            _cast(dbias, delta_bias), _cast(dinit, initial_state))


def _silu(activation):
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    return activation is not None


def causal_conv1d_fwd(x, weight, bias=None, initial_states=None, activation=None, return_final_states=True):
    """x: (batch, dim, seqlen), any strides (channel-last included); weight: (dim, width), width <= 16;
    bias: (dim,); initial_states: (batch, dim, width - 1).

    Returns ``(out, final_states)``: out (batch, dim, seqlen) in x's dtype; final_states (batch, dim, width - 1)
    in x's dtype, the last width - 1 inputs of [initial_states, x] (None when return_final_states=False).
    """
    out, fin = _ext().causal_conv1d_fwd(x, weight, bias, initial_states, _silu(activation),
                                        bool(return_final_states))
    return out, (fin if return_final_states else None)


def causal_conv1d_bwd(x, weight, bias, initial_states, dout, dfinal_states=None, activation=None):
    """Gradients of ``causal_conv1d_fwd``: returns ``(dx, dweight, dbias, dinitial_states)``, None where the
    input is None, each in the dtype of its input."""
    dx, dw, db, dinit = _ext().causal_conv1d_bwd(x, weight, bias, initial_states, dout.to(x.dtype), dfinal_states,
                                                 _silu(activation), bias is not None,
                                                 initial_states is not None)
    return dx, _cast(dw, weight), _cast(db, bias), _cast(dinit, initial_states)
