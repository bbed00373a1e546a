"""Configuration of the M2S2L model (plain data; presets live in ``m2s2l.models.m2s2l``)."""
import dataclasses
from dataclasses import dataclass
from typing import Tuple

from m2s2l.ops._backend import BACKENDS


@dataclass(frozen=True)
class M2S2LConfig:
    """Every field of the M2S2L model. See docs/ARCHITECTURE.md for what each part does.

    Input
      in_channels     1 (grayscale) or 3 (RGB); frames are float in [-1, 1].
      image_size      square frame side H = W; must be divisible by 2 ** len(widths).
      clip_len        T, the number of past frames the model sees to predict the next one.
      motion_target   "diff": the model predicts (target - clip[:, -1]) / 2 (computed inside the model);
                      "flow": it predicts batch["flow"] (B, 2, H, W), used as given.
    Spatial encoder (per frame, shared by all frames)
      widths          channels of the pyramid levels at strides 2, 4, 8, ... (one entry per level).
      enc_depths      residual conv blocks per level.
    Multi-temporal Mamba (per level, over the time axis of every spatial location)
      temporal_scales temporal pooling factors; each must divide clip_len (1 = full rate).
      temporal_depth  Mamba blocks per scale and level.
      spatial_depth   BiMamba blocks over the H*W tokens of the coarsest level.
      d_state, d_conv, expand   Mamba hyper-parameters; backend: "auto" | "triton" | "cuda" | "torch".
    Decoders
      dec_depths      3x3 conv layers per decoder level (after the skip concatenation).
    Losses:  loss = w_intensity * MSE(app) + w_gradient * gradient-difference(app)
                    + w_motion * L1(motion) + w_decorrelation * decorrelation
    Score:   score = score_w_appearance * (-PSNR(app)) + score_w_motion * patch-max motion error (dB),
             patches of score_patch pixels (stride score_patch // 2).
    """
    in_channels: int = 3
    image_size: int = 256
    clip_len: int = 4
    motion_target: str = "diff"
    widths: Tuple[int, ...] = (32, 64, 128, 256)
    enc_depths: Tuple[int, ...] = (2, 2, 2, 2)
    temporal_scales: Tuple[int, ...] = (1, 2)
    temporal_depth: int = 1
    spatial_depth: int = 1
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    backend: str = "auto"
    dec_depths: Tuple[int, ...] = (2, 2, 2, 2)
    w_intensity: float = 1.0
    w_gradient: float = 1.0
    w_motion: float = 1.0
    w_decorrelation: float = 0.1
    score_w_appearance: float = 0.5
    score_w_motion: float = 0.5
    score_patch: int = 16

    def __post_init__(self):
        for name in ("widths", "enc_depths", "temporal_scales", "dec_depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        levels = len(self.widths)
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grayscale) or 3 (RGB), got {self.in_channels}")
        if self.motion_target not in ("diff", "flow"):
            raise ValueError(f"motion_target must be 'diff' or 'flow', got {self.motion_target!r}")
        if levels < 1 or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty tuple of positive ints, got {self.widths}")
        for name in ("enc_depths", "dec_depths"):
            v = getattr(self, name)
            if len(v) != levels or any(d < 0 for d in v):
                raise ValueError(f"{name} must have one non-negative entry per level ({levels}), got {v}")
        if self.image_size < 2 ** levels or self.image_size % (2 ** levels):
            raise ValueError(f"image_size must be a positive multiple of 2**len(widths) = {2 ** levels}, "
                             f"got {self.image_size}")
        if self.clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {self.clip_len}")
        if not self.temporal_scales or any(s < 1 or self.clip_len % s for s in self.temporal_scales):
            raise ValueError(f"temporal_scales must be positive divisors of clip_len={self.clip_len}, "
                             f"got {self.temporal_scales}")
        if len(set(self.temporal_scales)) != len(self.temporal_scales):
            raise ValueError(f"temporal_scales must be distinct, got {self.temporal_scales}")
        if self.temporal_depth < 1 or self.spatial_depth < 0:
            raise ValueError("temporal_depth must be >= 1 and spatial_depth >= 0, got "
                             f"{self.temporal_depth} and {self.spatial_depth}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not 2 <= self.score_patch <= self.image_size:
            raise ValueError(f"score_patch must be in [2, image_size={self.image_size}], got {self.score_patch}")

    @property
    def motion_channels(self):
        """Channels of the motion prediction: 2 for optical flow, in_channels for frame differences."""
        return 2 if self.motion_target == "flow" else self.in_channels

    def to_dict(self):
        return dataclasses.asdict(self)
