"""Inference-time folding of eval-mode BatchNorm into the convolution before it.

In eval mode ``BN(conv(x)) = conv'(x)`` with ``w' = w * s``, ``b' = (b - mean) * s + beta``, ``s = gamma /
sqrt(var + eps)`` per output channel, so every Conv2d -> BatchNorm2d pair of the model (the encoder's and
decoders' ``ConvBNAct``, the decomposition's projections: 44 pairs in ``m2s2l_paper``) becomes one convolution
with a bias and the BatchNorm kernels disappear from the scoring step. The folded model computes the same function
up to rounding (the fold is done in float64); it is for scoring only -- its BatchNorms are gone, so it cannot be
trained or saved as a training checkpoint.

Then (``fuse_conv_act``) every folded convolution followed by its ReLU becomes one ``ConvAct`` module, and every
residual ``BasicBlock`` ``relu(x + conv2(relu(conv1(x))))`` a ``ResidualConvAct``: on CUDA each runs as ONE cuDNN
call with the bias, the residual and the ReLU in its epilogue (``torch.cudnn_convolution_relu`` /
``torch.cudnn_convolution_add_relu``), where PyTorch's Conv2d adds its bias and applies the ReLU as two further
passes over the output (on channels_last bf16 maps the bias add is a broadcasting, non-vectorised kernel: in the
paper model's 32-stream step the two passes took more device time than the convolutions they follow). NVIDIA H100,
bf16, channels_last, 32 frames (session 16): conv + bias + ReLU at 32 -> 32 channels, 128x128, 135 us as three
kernels vs 63 us fused (the convolution alone: 62 us); with the residual, 171 vs 79 us. Elsewhere (CPU, tracing,
torch.compile, which fuses the epilogue itself) the same modules run the plain ops.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class ConvAct(nn.Module):
    """``relu(conv(x) [+ residual])`` (``relu=False``: ``conv(x) [+ residual]``) for an ``nn.Conv2d`` with a bias.

    On CUDA with cuDNN (and ``relu``) one cuDNN call with the bias, residual and ReLU fused; under autocast the
    inputs and parameters are cast to the autocast dtype first, as autocast casts a convolution's (the parameter
    casts are cached per weight version). Otherwise -- CPU, no ReLU, a padding mode or padding string cuDNN's fused
    op does not take, tracing (ONNX / jit), torch.compile -- the plain ops, same function."""

    def __init__(self, conv, relu=True):
        super().__init__()
        if not isinstance(conv, nn.Conv2d) or conv.bias is None:
            raise TypeError(f"conv must be an nn.Conv2d with a bias, got {conv!r}")
        self.conv = conv
        self.relu = bool(relu)
        self._cast = None

    def _fusable(self, x):
        c = self.conv
        return (self.relu and x.is_cuda and x.dim() == 4 and torch.backends.cudnn.enabled
                and c.padding_mode == "zeros" and isinstance(c.padding, tuple)
                and not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()))

    def _params(self, dtype):
        w, b = self.conv.weight, self.conv.bias
        if w.dtype == dtype and b.dtype == dtype:
            return w, b
        key = (dtype, w.data_ptr(), w._version, b.data_ptr(), b._version)
        if self._cast is None or self._cast[0] != key:
            with torch.no_grad():
                self._cast = (key, w.detach().to(dtype), b.detach().to(dtype))
        return self._cast[1], self._cast[2]

    def forward(self, x, residual=None):
        c = self.conv
        if not self._fusable(x) or (torch.is_grad_enabled() and (c.weight.requires_grad or x.requires_grad)):
            y = c(x)
            if residual is not None:
                y = residual + y
            return F.relu(y) if self.relu else y
        dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        w, b = self._params(dt)
        with torch.autocast("cuda", enabled=False):
            x = x.to(dt)
            if residual is None:
                return torch.cudnn_convolution_relu(x, w, b, c.stride, c.padding, c.dilation, c.groups)
            return torch.cudnn_convolution_add_relu(x, w, residual.to(dt), 1.0, b, c.stride, c.padding,
                                                    c.dilation, c.groups)


class ResidualConvAct(nn.Module):
    """A BN-folded ``BasicBlock``: ``relu(x + conv2(relu(conv1(x))))`` as two ``ConvAct`` calls, the second with the
    residual and the ReLU in its epilogue."""

    def __init__(self, conv1, conv2):
        super().__init__()
        self.conv1 = ConvAct(conv1, relu=True)
        self.conv2 = ConvAct(conv2, relu=True)

    def forward(self, x):
        return self.conv2(self.conv1(x), residual=x)


def fuse_conv_act(model):
    """In place on a BN-folded ``model`` (``fuse_conv_bn``): every ``nn.Sequential`` run ``Conv2d (with bias),
    [Identity], ReLU`` becomes ``ConvAct`` (the Identity and ReLU slots become Identity), every ``BasicBlock`` whose
    body is two such folded convolutions a ``ResidualConvAct``. Returns (convolutions with their ReLU fused,
    residual blocks fused)."""
    from .encoder import BasicBlock

    def folded_pair(seq):  # a ConvBNAct after fuse_conv_bn: (Conv2d with bias, Identity[, ReLU])
        return (isinstance(seq, nn.Sequential) and len(seq) in (2, 3) and isinstance(seq[0], nn.Conv2d)
                and seq[0].bias is not None and isinstance(seq[1], nn.Identity)
                and (len(seq) == 2 or isinstance(seq[2], nn.ReLU)))
    n_blocks = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BasicBlock) and type(child).forward is BasicBlock.forward \
                    and len(child.body) == 2 and folded_pair(child.body[0]) and len(child.body[0]) == 3 \
                    and folded_pair(child.body[1]) and len(child.body[1]) == 2:
                setattr(parent, name, ResidualConvAct(child.body[0][0], child.body[1][0]))
                n_blocks += 1
    n = 0
    for seq in list(model.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and seq[i].bias is not None:
                j = i + 1
                while j < len(seq) and isinstance(seq[j], nn.Identity):
                    j += 1
                if j < len(seq) and isinstance(seq[j], nn.ReLU):
                    seq[i] = ConvAct(seq[i], relu=True)
                    seq[j] = nn.Identity()
                    n += 1
    return n, n_blocks


def fold_dt_projs(model, enable=True):
    """``Mamba.fold_dt_proj(enable)`` on every Mamba mixer of ``model`` (dt_proj folded into x_proj: one GEMM for
    delta, B and C at inference). Returns the number of mixers."""
    from m2s2l.modules import Mamba
    n = 0
    for mod in model.modules():
        if isinstance(mod, Mamba):
            mod.fold_dt_proj(enable)
            n += 1
    return n


def fold_out_projs(model, enable=True):
    """``MultiTemporalMamba.fold_out_proj(enable)`` on every temporal encoder of ``model`` (the branches' out_proj
    and the residuals folded into ``fuse`` for the projected streaming path). Returns the number of encoders folded
    (those that are ``projectable``)."""
    from m2s2l.models.temporal import MultiTemporalMamba
    n = 0
    for mod in model.modules():
        if isinstance(mod, MultiTemporalMamba):
            n += getattr(mod.fold_out_proj(enable), "_out_fold", None) is not None
    return n


def fused_for_inference(model, conv_act=True, dt_fold=True, out_fold=False):
    """An eval-mode copy of ``model`` with its Conv2d -> BatchNorm2d pairs folded, (``conv_act``) the folded
    convolutions' ReLUs and residual blocks fused (``fuse_conv_act``), (``dt_fold``) each Mamba mixer's dt_proj
    folded into its x_proj (``fold_dt_projs``) and (``out_fold``; off by default: not yet timed on a GPU) the
    temporal encoders' out_proj and residuals folded into their fuse layer (``fold_out_projs``); ``model`` is left
    untouched."""
    m = copy.deepcopy(model).eval()
    fuse_conv_bn(m)
    if conv_act:
        fuse_conv_act(m)
    if dt_fold:
        fold_dt_projs(m)
    if out_fold:
        fold_out_projs(m)
    return m
