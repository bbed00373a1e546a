"""``frame_errors``: the anomaly score's per-pixel errors in one pass (``m2s2l.models.scoring.score``'s inputs).

Forward only (scores are not differentiated): with gradients wanted the reference runs. The Triton backend runs as
the custom op ``m2s2l::frame_errors`` for the tracers (torch.compile, fake tensors, dispatch modes; see
``_backend.use_custom_op``) and directly in eager mode. The torch backend is the reference (naive.py).
"""
from typing import Tuple

import torch

from ._backend import BACKENDS, FLOAT_DTYPES, check_tensor, needs_grad, resolve_backend, use_custom_op


def _impl(app: torch.Tensor, target: torch.Tensor, mot: torch.Tensor,
          mot_target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from m2s2l.triton_kernels.frame_errors.frame_errors import frame_errors_fwd
    return frame_errors_fwd(app, target, mot, mot_target)


_op = torch.library.custom_op("m2s2l::frame_errors", mutates_args=())(_impl)


@_op.register_fake
def _fake(app, target, mot, mot_target):
    B, _, H, W = app.shape
    new = app.new_empty
    return (new((B, 1, H, W), dtype=torch.float32), new((B, 1, H, W), dtype=torch.float32),
            new((B,), dtype=torch.float32))


def frame_errors(app, target, mot, mot_target, *, backend="auto"):
    """Channel-mean squared errors of a predicted frame and motion, and the appearance error's mean per frame:
    ``app_map = ((app - target)^2).mean(1, keepdim=True)``, ``mot_map`` likewise from mot and mot_target, and
    ``app_mse = app_map.flatten(1).mean(1)``, computed in float32.

    Args:
      app, target: (B, C, H, W), float32/float16/bfloat16 (may differ), any strides, C, H, W >= 1.
      mot, mot_target: (B, Cm, H, W) on app's device, same dtype choices, Cm >= 1.
      backend: "auto" | "triton" | "cuda" | "torch". "auto" = the Triton kernel for CUDA tensors (and for CPU
        tensors under TRITON_INTERPRET=1), the reference otherwise; "cuda" has no kernel of its own and means
        "auto"; "torch" = the reference. Inputs that need gradients take the reference.
    Returns:
      (app_map (B, 1, H, W), mot_map (B, 1, H, W), app_mse (B,)), float32. Equal to the reference up to float32
      summation order.
    """
    check_tensor("app", app, ndim=4, dtypes=FLOAT_DTYPES, expected="(B, C, H, W)")
    B, C, H, W = app.shape
    check_tensor("target", target, shape=(B, C, H, W), dtypes=FLOAT_DTYPES, device=app.device,
                 expected="(B, C, H, W) as app")
    check_tensor("mot", mot, ndim=4, dtypes=FLOAT_DTYPES, device=app.device, expected="(B, Cm, H, W)")
    if mot.shape[0] != B or tuple(mot.shape[2:]) != (H, W):
        raise ValueError(f"mot must have shape (B, Cm, H, W) = ({B}, Cm, {H}, {W}) with app's B, H, W, "
                         f"got {tuple(mot.shape)}")
    check_tensor("mot_target", mot_target, shape=tuple(mot.shape), dtypes=FLOAT_DTYPES, device=app.device,
                 expected="(B, Cm, H, W) as mot")
    if min(C, H, W, mot.shape[1]) < 1:
        raise ValueError(f"app and mot must have C, Cm, H, W >= 1, got app {tuple(app.shape)}, "
                         f"mot {tuple(mot.shape)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    args = (app, target, mot, mot_target)
    if (resolve_backend("auto" if backend == "cuda" else backend, app.device) != "triton" or needs_grad(*args)
            or B == 0):
        from m2s2l.triton_kernels.frame_errors.naive import frame_errors_ref
        return frame_errors_ref(*args)
    return _op(*args) if use_custom_op(app) else _impl(*args)
