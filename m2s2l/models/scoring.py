"""Training losses and the per-frame anomaly score (all computed in float32)."""
import math

import torch
import torch.nn.functional as F

# Frames are in [-1, 1]: the peak-to-peak range is 2, so PSNR = 10 log10(2**2 / MSE).
_PEAK2 = 4.0
_EPS = 1e-10


def gradient_difference_loss(pred, target):
    """FFP's gradient loss: mean | |d pred| - |d target| | over horizontal and vertical differences."""
    def grads(x):
        return (x[..., :, 1:] - x[..., :, :-1]).abs(), (x[..., 1:, :] - x[..., :-1, :]).abs()
    pgx, pgy = grads(pred)
    tgx, tgy = grads(target)
    return (pgx - tgx).abs().mean() + (pgy - tgy).abs().mean()


def neg_psnr(pred, target):
    """-PSNR in dB per sample: 10 log10(MSE / 4) for frames in [-1, 1]; pred, target (B, C, H, W) -> (B,)."""
    return _neg_psnr_db((pred.float() - target.float()).pow(2).flatten(1).mean(1))


def _neg_psnr_db(mse):
    """-PSNR in dB from the mean squared error (frames in [-1, 1])."""
    return 10.0 * torch.log10(mse + _EPS) - 10.0 * math.log10(_PEAK2)


def patch_max_db(err_map, patch):
    """Largest mean of err_map over patch x patch windows (stride patch // 2), in dB: (B, 1, H, W) -> (B,)."""
    pooled = F.avg_pool2d(err_map.float(), patch, stride=max(patch // 2, 1))
    return 10.0 * torch.log10(pooled.flatten(1).amax(1) + _EPS)


def losses(cfg, pred, target, motion_target, decorrelation):
    """The loss dict of ``M2S2L.compute_losses`` (see there for the formula)."""
    app = pred["appearance"].float()
    parts = {
        "intensity": F.mse_loss(app, target.float()),
        "gradient": gradient_difference_loss(app, target.float()),
        "motion": F.l1_loss(pred["motion"].float(), motion_target.float()),
        "decorrelation": decorrelation,
    }
    loss = (cfg.w_intensity * parts["intensity"] + cfg.w_gradient * parts["gradient"]
            + cfg.w_motion * parts["motion"] + cfg.w_decorrelation * parts["decorrelation"])
    return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}


# The error maps and the appearance MSE as one ``m2s2l.ops.frame_errors`` pass (the Triton kernel) instead of ~15
# PyTorch kernels; same values up to float32 summation order. None (default): on for CUDA tensors -- H100, m2s2l_paper,
# 32 streams 3929 -> 4062 frames/s, batch 1 +3% (docs/BENCHMARKS.md, session 21) -- and off on CPU (the PyTorch ops
# are the op's CPU path anyway). True / False force it (bench/fps.py --fused-score / --no-fused-score).
fused_errors = None


def _use_fused(x):
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    return x.is_cuda if fused_errors is None else bool(fused_errors)


def score(cfg, pred, target, motion_target):
    """The score dict of ``M2S2L.score`` (see there for the formula)."""
    if _use_fused(pred["appearance"]):
        from m2s2l.ops import frame_errors
        app_err, mot_err, mse = frame_errors(pred["appearance"], target, pred["motion"], motion_target)
        appearance = _neg_psnr_db(mse)
    else:
        app_err = (pred["appearance"].float() - target.float()).pow(2).mean(1, keepdim=True)    # (B, 1, H, W)
        mot_err = (pred["motion"].float() - motion_target.float()).pow(2).mean(1, keepdim=True)
        appearance = neg_psnr(pred["appearance"], target)
    motion = patch_max_db(mot_err, cfg.score_patch)
    total = cfg.score_w_appearance * appearance + cfg.score_w_motion * motion
    return {"score": total, "appearance": appearance, "motion": motion, "error_map": app_err + mot_err}


# ---- named score variants (chosen on validation clips with pseudo-anomalies: bench/select_score.py) ----------
# Each variant is a sum of weighted terms; a term is (kind, size): kind "app"/"mot" = squared appearance / motion
# error; size 0 = frame-level (-PSNR for "app"), size p = patch-max over p x p windows (stride p // 2) in dB.
# "default" is ``score`` itself (cfg's weights and score_patch). Order = simplest first (ties in selection).
SCORE_VARIANTS = {
    "app_psnr": ((1.0, "app", 0),),
    "app_patch16": ((1.0, "app", 16),),
    "app_patch32": ((1.0, "app", 32),),
    "mot_patch16": ((1.0, "mot", 16),),
    "mot_patch32": ((1.0, "mot", 32),),
    "default": None,
    "app_psnr+mot_patch16": ((0.5, "app", 0), (0.5, "mot", 16)),  # the preset's default score, by name
    "app_patch16+mot_patch16": ((0.5, "app", 16), (0.5, "mot", 16)),
    "app_psnr+mot_patch32": ((0.5, "app", 0), (0.5, "mot", 32)),
    "app_patch32+mot_patch32": ((0.5, "app", 32), (0.5, "mot", 32)),
}


def variant_terms(name):
    """Number of terms of variant ``name`` (the default has two: appearance and motion)."""
    if name not in SCORE_VARIANTS:
        raise ValueError(f"score variant must be one of {list(SCORE_VARIANTS)}, got {name!r}")
    return 2 if SCORE_VARIANTS[name] is None else len(SCORE_VARIANTS[name])


def score_variants(cfg, pred, target, motion_target, names=None):
    """Raw per-frame scores of several formulas from ONE prediction: ``{name: (B,) float32}``.

    pred {"appearance" (B, C, H, W), "motion" (B, Cm, H, W)}, target (B, C, H, W), motion_target (B, Cm, H, W)
    as in :func:`score`; ``names`` (default: all of ``SCORE_VARIANTS``). A patch larger than the frame is clamped
    to the frame size. "default" equals ``score(cfg, pred, target, motion_target)["score"]``."""
    names = list(SCORE_VARIANTS) if names is None else list(names)
    for n in names:
        variant_terms(n)
    pairs = {"app": (pred["appearance"], target), "mot": (pred["motion"], motion_target)}
    cache = {}

    def term(kind, size):
        if (kind, size) not in cache:
            p, t = pairs[kind]
            if size == 0:
                cache[kind, size] = neg_psnr(p, t)
            else:
                err = (p.float() - t.float()).pow(2).mean(1, keepdim=True)                    # (B, 1, H, W)
                cache[kind, size] = patch_max_db(err, min(size, *err.shape[-2:]))
        return cache[kind, size]

    out = {}
    for n in names:
        if SCORE_VARIANTS[n] is None:
            out[n] = score(cfg, pred, target, motion_target)["score"]
        else:
            out[n] = sum(w * term(kind, size) for w, kind, size in SCORE_VARIANTS[n])
    return out
