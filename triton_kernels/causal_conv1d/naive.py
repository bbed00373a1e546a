"""Reference causal depthwise conv1d: the test oracle and CPU path of ``m2s2l.ops.causal_conv1d_fn``."""
import torch
import torch.nn.functional as F


def causal_conv1d_ref(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False):
    """out[t] = sum_k weight[:, k] * x[t - width + 1 + k] + bias, then optional SiLU.

    x (batch, dim, seqlen); weight (dim, width); bias (dim,); initial_states (batch, dim, width-1) are the
    inputs preceding x. final_states (batch, dim, width-1) are the last width-1 inputs of [initial, x].
    Computed in float32 (float64 for float64 inputs), returned in x's dtype.
    """
    dtype_in = x.dtype
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, dim, L = x.shape
    width = weight.shape[1]
    xc = x.to(ct)
    if initial_states is None:
        xp = F.pad(xc, (width - 1, 0))
    else:
        xp = torch.cat([initial_states.to(ct), xc], dim=-1)
    out = F.conv1d(xp, weight.to(ct).unsqueeze(1), None if bias is None else bias.to(ct), groups=dim)
    if activation in ("silu", "swish"):
        out = F.silu(out)
    out = out.to(dtype_in)
    if not return_final_states:
        return out
    final = xp[..., xp.shape[-1] - (width - 1):] if width > 1 else xp[..., :0]
    return out, final.to(dtype_in)


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None):
    """One-token step of ``causal_conv1d_ref``, in place on ``conv_state`` (batch, dim, state_len).

    x (batch, dim); state_len >= width - 1 (only the last width - 1 columns enter the conv); conv_state
    shifts left by one and takes x as its last column. Returns out (batch, dim) in x's dtype.
    """
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    width = weight.shape[1]
    ext = torch.cat([conv_state.to(ct), x.to(ct)[..., None]], dim=-1)  # (batch, dim, state_len + 1)
    out = (ext[..., ext.shape[-1] - width:] * weight.to(ct)).sum(-1)
    if bias is not None:
        out = out + bias.to(ct)
    if activation in ("silu", "swish"):
        out = F.silu(out)
    conv_state.copy_(ext[..., 1:])
    return out.to(x.dtype)
