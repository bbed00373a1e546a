"""``LayerNorm``: a drop-in ``nn.LayerNorm`` (over the last axis) that runs ``m2s2l.ops.layer_norm``.

A subclass of nn.LayerNorm: the same constructor arguments (plus ``backend``), the same parameters ``weight`` and
``bias`` with the same initialisation, so state dicts and checkpoints written with nn.LayerNorm load unchanged
and ``isinstance(m, nn.LayerNorm)`` still holds.

Numerics are nn.LayerNorm's, in and out of autocast. nn.LayerNorm under CUDA autocast runs in float32 and
returns float32 (layer_norm is on autocast's float32 list); under CPU autocast it is not cast (bf16 in, bf16
out). This module passes ``out_dtype=torch.float32`` to the op under CUDA autocast, so the kernel reads the
bf16/fp16 x directly and writes float32 (the same values as casting x up first, without the copy); elsewhere the
output has x's dtype. The op computes its statistics in float32 in every case.

Backends: ``backend`` ("auto" | "triton" | "cuda" | "torch", a settable attribute read at call time, like the
Mamba modules) is passed to the op; "torch" calls nn.LayerNorm's own forward (F.layer_norm), as does "auto"
for inputs the kernel does not take (float64; rows wider than 16384 fall back inside the op). Under
torch.jit tracing (ONNX export, fvcore's FLOP count) every backend records nn.LayerNorm's forward: aten::layer_norm
with the module's static normalized_shape, which ONNX exports as LayerNormalization and fvcore counts.
"""
import torch
import torch.nn as nn

from m2s2l import ops
from m2s2l.modules.mamba import check_backend
from m2s2l.ops._backend import FLOAT_DTYPES


def autocast_to_float32(device_type):
    """Whether F.layer_norm on ``device_type`` tensors runs in (and returns) float32 under the current autocast
    state: on CUDA when autocast is on (CPU autocast leaves layer_norm alone)."""
    return device_type == "cuda" and torch.is_autocast_enabled("cuda")


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last axis (``normalized_shape`` = C or (C,)) through ``m2s2l.ops.layer_norm``.

    Args: as nn.LayerNorm (normalized_shape, eps, elementwise_affine, bias, device, dtype) plus
    backend: "auto" | "triton" | "cuda" | "torch" (see the module docstring).
    Input (..., C) -> output of the same shape (dtype: see the module docstring).
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, backend="auto",
                 device=None, dtype=None):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias,
                         device=device, dtype=dtype)
        if len(self.normalized_shape) != 1:
            raise ValueError(f"normalized_shape must be one size (the last axis), got {self.normalized_shape}")
        self.backend = check_backend(backend)

    def forward(self, input, out_dtype=None):
        """``out_dtype``: the output's dtype instead of nn.LayerNorm's (for a consumer that casts it anyway, e.g.
        a GEMM under autocast: writing that dtype directly gives the same values without a float32 round trip)."""
        C = self.normalized_shape[0]
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor of shape (..., {C}), got {type(input).__name__}")
        if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
            raise TypeError(f"out_dtype must be None or one of {[str(d) for d in FLOAT_DTYPES]}, got {out_dtype!r}")
        if (self.backend == "torch" or torch.jit.is_tracing()
                or (self.backend in ("auto", "cuda") and input.dtype not in FLOAT_DTYPES)):
            out = super().forward(input)  # tracing (ONNX export, fvcore): aten::layer_norm with a static shape
            return out if out_dtype is None else out.to(out_dtype)
        if input.dim() < 1 or input.shape[-1] != C:
            raise ValueError(f"input must have shape (..., {C}), got {tuple(input.shape)}")
        if out_dtype is None and autocast_to_float32(input.device.type):
            out_dtype = torch.float32
        return ops.layer_norm(input, self.weight, self.bias, self.eps, backend=self.backend, out_dtype=out_dtype)

    def extra_repr(self):
        return f"{super().extra_repr()}, backend={self.backend!r}"
