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
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
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


def score(cfg, pred, target, motion_target):
    """The score dict of ``M2S2L.score`` (see there for the formula)."""
    app_err = (pred["appearance"].float() - target.float()).pow(2).mean(1, keepdim=True)    # (B, 1, H, W)
    mot_err = (pred["motion"].float() - motion_target.float()).pow(2).mean(1, keepdim=True)
    appearance = neg_psnr(pred["appearance"], target)
    motion = patch_max_db(mot_err, cfg.score_patch)
    total = cfg.score_w_appearance * appearance + cfg.score_w_motion * motion
    return {"score": total, "appearance": appearance, "motion": motion, "error_map": app_err + mot_err}
