"""Causal depthwise conv1d: ``naive.py`` (PyTorch reference and one-token step reference), ``conv.py``
(Triton forward/backward kernels + launchers ``causal_conv1d_fwd`` / ``causal_conv1d_bwd``) and ``step.py``
(Triton one-token ``causal_conv1d_update``). The public, validated entry points are in ``m2s2l.ops``."""
