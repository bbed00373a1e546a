"""The anomaly score's per-pixel errors -- the channel-mean squared appearance and motion errors and the appearance
error's mean per frame -- as one pass over the four maps: ``naive.py`` (the PyTorch reference) and
``frame_errors.py`` (the launcher ``frame_errors_fwd``). The public, validated entry point is
``m2s2l.ops.frame_errors``."""
