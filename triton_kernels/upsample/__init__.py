"""Bilinear resize of a feature map concatenated with a skip map along channels -- the U-Net decoder's
``torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1)`` -- as one
kernel: ``naive.py`` (the PyTorch reference) and ``upsample_cat.py`` (the launcher ``upsample_cat_fwd``). The public,
validated entry point is ``m2s2l.ops.upsample_cat``."""
