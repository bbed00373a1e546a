"""M2S2L: multi-scale spatial encoder, multi-temporal Mamba encoders, appearance/motion decomposition,
two decoders, reconstruction-error scoring. Design and reasoning: docs/ARCHITECTURE.md."""
import functools

import torch
import torch.nn as nn

from m2s2l.modules import BiMamba, LayerNorm, Mamba
from m2s2l.ops._backend import BACKENDS, check_tensor

from . import scoring
from .config import M2S2LConfig
from .decoder import Decoder
from .decomposition import Decomposition, decorrelation_loss
from .encoder import SpatialEncoder
from .registry import register_model
from .temporal import MultiTemporalMamba, SpatialMamba, serial

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class M2S2L(nn.Module):
    """Video anomaly detection by predicting the next frame (appearance) and its motion from T past frames.

    clip (B, T, C, H, W) in [-1, 1] -> per-frame spatial pyramid (``encode_frames``) -> per level,
    multi-temporal Mamba over time + (coarsest level) BiMamba over space -> appearance / motion
    decomposition -> two U-Net decoders: the next frame (B, C, H, W) and the motion target.
    """

    def __init__(self, config=None):
        super().__init__()
        cfg = config if config is not None else M2S2LConfig()
        if not isinstance(cfg, M2S2LConfig):
            raise TypeError(f"config must be an M2S2LConfig, got {type(cfg).__name__}")
        self.config = cfg
        mk = dict(d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, backend=cfg.backend)
        self.encoder = SpatialEncoder(cfg.in_channels, cfg.widths, cfg.enc_depths)
        self.temporal = nn.ModuleList(
            MultiTemporalMamba(w, cfg.clip_len, cfg.temporal_scales, cfg.temporal_depth, **mk) for w in cfg.widths)
        self.spatial = SpatialMamba(cfg.widths[-1], cfg.spatial_depth, **mk)
        self.decompose = nn.ModuleList(Decomposition(w) for w in cfg.widths)
        self.app_decoder = Decoder(cfg.widths, cfg.dec_depths, cfg.in_channels, tanh=True, backend=cfg.backend)
        self.motion_decoder = Decoder(cfg.widths, cfg.dec_depths, cfg.motion_channels,
                                      tanh=cfg.motion_target == "diff", backend=cfg.backend)

    # ---- shapes ------------------------------------------------------------------------------------
    def feature_shapes(self):
        """[(C_l, H_l, W_l)] of the pyramid levels returned by ``encode_frames``."""
        s = self.config.image_size
        return [(w, s >> (l + 1), s >> (l + 1)) for l, w in enumerate(self.config.widths)]

    def _check_frames(self, name, x, lead):
        c = self.config
        expected = f"({', '.join(lead)}, C, H, W) = ({', '.join(lead)}, {c.in_channels}, {c.image_size}, " \
                   f"{c.image_size})"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
        want = (len(lead) + 3, (None,) * len(lead) + (c.in_channels, c.image_size, c.image_size))
        if lead == ("B", "T"):
            expected = f"(B, T, C, H, W) = (B, {c.clip_len}, {c.in_channels}, {c.image_size}, {c.image_size})"
            want = (5, (None, c.clip_len, c.in_channels, c.image_size, c.image_size))
        if x.dim() != want[0] or any(w is not None and w != d for w, d in zip(want[1], x.shape)):
            raise ValueError(f"{name} must have shape {expected} for this model config, got {tuple(x.shape)}")
        check_tensor(name, x, dtypes=_FLOATS)

    def example_inputs(self, batch=1):
        """``(clip,)``: a deterministic random clip (batch, T, C, H, W) in [-1, 1] on the model's device."""
        c = self.config
        g = torch.Generator().manual_seed(0)
        clip = torch.rand(batch, c.clip_len, c.in_channels, c.image_size, c.image_size, generator=g) * 2 - 1
        return (clip.to(next(self.parameters()).device),)

    def set_backend(self, name):
        """Select the kernel backend ("auto" | "triton" | "cuda" | "torch") of every Mamba block (scan, conv), of
        their LayerNorms and of the decoders' upsampling (``m2s2l.ops.upsample_cat``)."""
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
        for m in self.modules():
            if isinstance(m, (Mamba, BiMamba, LayerNorm, Decoder)):
                if hasattr(m, "set_backend"):
                    m.set_backend(name)
                else:
                    m.backend = name
        return self

    # ---- streaming split -----------------------------------------------------------------------------
    def encode_frames(self, frames):
        """frames (N, C, H, W) -> [(N, C_l, H_l, W_l) per pyramid level]; each frame independently (eval)."""
        self._check_frames("frames", frames, ("N",))
        return self.encoder(frames)

    def projectable(self, feats=None):
        """Whether ``forward_features(..., proj=)`` may run (every level's ``MultiTemporalMamba.projectable``;
        given ``feats`` as ``forward_features``', also whether it pays there)."""
        feats = [None] * len(self.temporal) if feats is None else feats
        return all(t.projectable(f) for t, f in zip(self.temporal, feats))

    def forward_features(self, feats, run=None, proj=None):
        """feats: per level (B, T, C_l, H_l, W_l) -- stacked ``encode_frames`` of the clip's T frames.

        Returns the predictions dict: "appearance" (B, C, H, W) the predicted next frame in [-1, 1], and
        "motion" (B, Cm, H, W): the predicted (target - clip[:, -1]) / 2 ("diff", Cm = C) or flow (Cm = 2).
        ``run`` (default ``serial``) is called with lists of independent zero-argument callables -- the pyramid
        levels, the temporal scales of each level, the two decoders -- and returns their results in order; a
        runner may execute them concurrently (same results). ``proj`` (streaming, where ``projectable``): per level
        the temporal blocks' cached input projections of the window (``MultiTemporalMamba.forward``'s ``proj``),
        e.g. ``m2s2l.engine.step.StateRing.proj_window``; same result up to rounding."""
        return self._predict(feats, run=run, proj=proj)[0]

    def forward(self, clip):
        """clip (B, T, C, H, W) in [-1, 1] -> predictions dict (see ``forward_features``)."""
        return self._predict(self._encode_clip(clip))[0]

    def _encode_clip(self, clip):
        self._check_frames("clip", clip, ("B", "T"))
        B, T = clip.shape[:2]
        feats = self.encoder(clip.reshape(B * T, *clip.shape[2:]))
        return [f.reshape(B, T, *f.shape[1:]) for f in feats]

    def _predict(self, feats, with_decorrelation=False, run=None, proj=None):
        shapes = self.feature_shapes()
        if not isinstance(feats, (list, tuple)) or len(feats) != len(shapes):
            raise ValueError(f"feats must be a list of {len(shapes)} tensors (one per pyramid level), "
                             f"got {type(feats).__name__} of length {len(feats) if hasattr(feats, '__len__') else '?'}")
        for l, (f, s) in enumerate(zip(feats, shapes)):
            check_tensor(f"feats[{l}]", f, shape=(None, self.config.clip_len) + s, dtypes=_FLOATS,
                         expected="(B, T, C_l, H_l, W_l)")
        run = serial if run is None else run
        last = len(shapes) - 1
        if proj is not None and len(proj) != len(shapes):
            raise ValueError(f"proj must hold one entry per pyramid level ({len(shapes)}), got {len(proj)}")

        def level(l):  # temporal encoders (+ the spatial BiMamba at the coarsest level), then the decomposition
            fused = self.temporal[l](feats[l], run=run, proj=None if proj is None else proj[l])
            return self.decompose[l](self.spatial(fused) if l == last else fused)
        parts = run([functools.partial(level, l) for l in range(last + 1)])
        app, mot = [p[0] for p in parts], [p[1] for p in parts]
        out = run([functools.partial(self.app_decoder, app), functools.partial(self.motion_decoder, mot)])
        pred = {"appearance": out[0], "motion": out[1]}
        decor = None
        if with_decorrelation:
            decor = torch.stack([decorrelation_loss(a, m) for a, m in zip(app, mot)]).mean()
        return pred, decor

    # ---- losses and score ----------------------------------------------------------------------------
    def motion_target(self, batch):
        """The motion the model must predict: (target - clip[:, -1]) / 2 for "diff", batch["flow"] for "flow"."""
        c = self.config
        if c.motion_target == "diff":
            return (batch["target"] - batch["clip"][:, -1]) * 0.5
        if "flow" not in batch:
            raise ValueError("batch['flow'] (B, 2, H, W) is required when motion_target='flow'")
        flow = batch["flow"]
        B = batch["clip"].shape[0]
        check_tensor("batch['flow']", flow, shape=(B, 2, c.image_size, c.image_size), dtypes=_FLOATS,
                     expected="(B, 2, H, W)")
        return flow

    def _check_batch(self, batch):
        if not isinstance(batch, dict) or "clip" not in batch or "target" not in batch:
            raise ValueError("batch must be a dict with 'clip' (B, T, C, H, W) and 'target' (B, C, H, W)")
        c = self.config
        self._check_frames("batch['clip']", batch["clip"], ("B", "T"))
        check_tensor("batch['target']", batch["target"],
                     shape=(batch["clip"].shape[0], c.in_channels, c.image_size, c.image_size),
                     dtypes=_FLOATS, expected="(B, C, H, W)")

    def compute_losses(self, batch):
        """batch {"clip", "target"[, "flow"]} -> {"loss": scalar to backprop, and detached float parts}.

        loss = w_intensity * MSE(app, target) + w_gradient * gradient-difference(app, target)
             + w_motion * L1(motion, motion_target) + w_decorrelation * decorrelation
        (parts "intensity", "gradient", "motion", "decorrelation"; all computed in float32)."""
        self._check_batch(batch)
        mt = self.motion_target(batch)
        pred, decor = self._predict(self._encode_clip(batch["clip"]), with_decorrelation=True)
        return scoring.losses(self.config, pred, batch["target"], mt, decor)

    @torch.no_grad()
    def score(self, batch, predictions=None):
        """batch {"clip", "target"[, "flow"]} -> per-frame raw anomaly scores (higher = more anomalous).

        appearance = -PSNR(app, target) = 10 log10(mean((app - target)^2) / 4)                    (B,) dB
        motion     = 10 log10(max over score_patch windows (stride score_patch/2) of the mean
                     squared motion error)                                                         (B,) dB
        score      = score_w_appearance * appearance + score_w_motion * motion                    (B,)
        error_map  = channel-mean squared appearance error + channel-mean squared motion error  (B,1,H,W)
        ``predictions`` (from ``forward``/``forward_features`` of the same clip) skips the forward pass.
        Runs under torch.no_grad(); call ``model.eval()`` first (BatchNorm)."""
        self._check_batch(batch)
        mt = self.motion_target(batch)
        pred = predictions if predictions is not None else self.forward(batch["clip"])
        return scoring.score(self.config, pred, batch["target"], mt)


# ---- presets --------------------------------------------------------------------------------------------
@register_model("m2s2l_paper", M2S2L)
def m2s2l_paper():
    """The paper-sized model: 256x256 RGB, T=4; fvcore counts ~20.1 GFLOPs for one clip (bench/flops.py)."""
    return M2S2LConfig()


@register_model("m2s2l_lite", M2S2L)
def m2s2l_lite():
    """For real time on a 2-core CPU: 64x64, a narrow 4-level pyramid, d_state 8, expand 1 (~0.06 GFLOPs)."""
    return M2S2LConfig(image_size=64, widths=(16, 24, 32, 48), enc_depths=(0, 1, 1, 1), dec_depths=(1, 1, 1, 1),
                       d_state=8, expand=1, score_patch=8)
