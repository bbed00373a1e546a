"""PyTorch reference of ``m2s2l.ops.upsample_cat`` (also its CPU path and its ONNX / pure-PyTorch stand-in)."""
import torch
import torch.nn.functional as F


def upsample_cat_ref(x, skip):
    """x (B, Cx, h, w), skip (B, Cs, H, W) -> (B, Cx + Cs, H, W): bilinear (align_corners=False) resize of x to
    (H, W), then skip, along channels; dtype torch.promote_types(x.dtype, skip.dtype) (x resized in its own dtype
    first, as the two-op form does)."""
    up = F.interpolate(x, size=tuple(skip.shape[-2:]), mode="bilinear", align_corners=False)
    return torch.cat([up, skip], dim=1)
