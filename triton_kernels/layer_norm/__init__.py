"""LayerNorm over the last axis for short rows (C = 32..256 in the video model): ``naive.py`` (PyTorch reference)
and ``layer_norm.py`` (launchers ``layer_norm_fwd`` / ``layer_norm_bwd`` of the Triton kernels). The public,
validated entry point is ``m2s2l.ops.layer_norm``."""

MAX_C = 16384  # the widest row the kernels take (a row must fit one program's registers); ops falls back above
