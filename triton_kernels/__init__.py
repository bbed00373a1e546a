"""Triton kernels, installed as ``m2s2l.triton_kernels`` (never as a top-level ``triton_kernels``).

One sub-package per op: ``naive.py`` (float64/float32 PyTorch reference, also the CPU path), the fused
Triton kernel with its autograd Function, and ``step.py`` (one-token streaming kernels).
Importing this package does not import Triton; the kernel modules do, and ``m2s2l.ops`` guards them.
"""
