"""Reference LayerNorm over the last axis: the test oracle of ``m2s2l.ops.layer_norm``."""
import torch


def layer_norm_ref(x, weight=None, bias=None, eps=1e-5, out_dtype=None):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance, as nn.LayerNorm).

    x (..., C); weight, bias (C,) or None. Computed in float32 (float64 when x is float64), returned in
    ``out_dtype`` (default: x's dtype). Differentiable (plain PyTorch ops).
    """
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(ct)
    mean = xc.mean(-1, keepdim=True)
    var = (xc - mean).square().mean(-1, keepdim=True)
    y = (xc - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(ct)
    if bias is not None:
        y = y + bias.to(ct)
    return y.to(out_dtype or x.dtype)
