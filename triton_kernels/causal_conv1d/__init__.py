"""Causal depthwise conv1d: ``naive.py`` (PyTorch reference and one-token step reference), ``conv.py``
(launchers ``causal_conv1d_fwd`` / ``causal_conv1d_bwd`` of the Triton kernels in ``conv_kernels.py``) and ``step.py``
(Triton one-token ``causal_conv1d_update``). The public, validated entry points are in ``m2s2l.ops``."""
