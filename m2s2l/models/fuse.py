"""Inference-time folding of eval-mode BatchNorm into the convolution before it.

In eval mode ``BN(conv(x)) = conv'(x)`` with ``w' = w * s``, ``b' = (b - mean) * s + beta``, ``s = gamma /
sqrt(var + eps)`` per output channel, so every Conv2d -> BatchNorm2d pair of the model (the encoder's and
decoders' ``ConvBNAct``, the decomposition's projections: 44 pairs in ``m2s2l_paper``) becomes one convolution
with a bias and the BatchNorm kernels disappear from the scoring step. The folded model computes the same function
up to rounding (the fold is done in float64); it is for scoring only -- its BatchNorms are gone, so it cannot be
trained or saved as a training checkpoint.
"""
import copy

import torch
import torch.nn as nn


def fold_conv_bn(conv, bn):
    """A new ``nn.Conv2d`` (with bias) equal to ``bn(conv(x))`` for an eval-mode ``bn`` with running statistics."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"expected (nn.Conv2d, nn.BatchNorm2d), got ({type(conv).__name__}, {type(bn).__name__})")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): it cannot be folded")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"bn.num_features={bn.num_features} does not match conv.out_channels={conv.out_channels}")
    w = conv.weight.detach()
    f64 = dict(dtype=torch.float64, device=w.device)
    scale = torch.rsqrt(bn.running_var.detach().to(**f64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().to(**f64)
    bias = -bn.running_mean.detach().to(**f64)
    if conv.bias is not None:
        bias = bias + conv.bias.detach().to(**f64)
    bias = bias * scale
    if bn.bias is not None:
        bias = bias + bn.bias.detach().to(**f64)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=w.device, dtype=w.dtype)
    with torch.no_grad():
        fused.weight.copy_((w.to(torch.float64) * scale[:, None, None, None]).to(w.dtype))
        fused.bias.copy_(bias.to(w.dtype))
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


def fuse_conv_bn(model):
    """Fold, in place, every ``nn.BatchNorm2d`` that directly follows an ``nn.Conv2d`` inside an ``nn.Sequential``
    of ``model`` into that convolution (the BatchNorm becomes ``nn.Identity``). ``model`` must be in eval mode.
    Returns the number of folded pairs."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if any(m.training for m in model.modules()):
        raise ValueError("fuse_conv_bn folds eval-mode BatchNorm statistics: call model.eval() first")
    n = 0
    for seq in list(model.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d) \
                    and seq[i + 1].running_mean is not None:
                seq[i] = fold_conv_bn(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
                n += 1
    return n


def fused_for_inference(model):
    """An eval-mode copy of ``model`` with its Conv2d -> BatchNorm2d pairs folded (``model`` is left untouched)."""
    m = copy.deepcopy(model).eval()
    fuse_conv_bn(m)
    return m
