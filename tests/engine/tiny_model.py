"""A tiny model satisfying the M2S2L model contract, registered as "tiny_test" -- fast engine tests only."""
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from m2s2l.models import list_models, register_model


@dataclasses.dataclass
class TinyConfig:
    in_channels: int = 1
    image_size: int = 16
    clip_len: int = 2
    motion_target: str = "diff"
    hidden: int = 8
    dropout: float = 0.1


class TinyPredictor(nn.Module):
    """Next-frame predictor: two 3x3 convs over the stacked clip, residual on the last frame, dropout."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        c, t, h = config.in_channels, config.clip_len, config.hidden
        self.conv1 = nn.Conv2d(c * t, h, 3, padding=1)
        self.conv2 = nn.Conv2d(h, c, 3, padding=1)
        self.drop = nn.Dropout(config.dropout)
        self.backend = "torch"

    def set_backend(self, name):
        self.backend = name

    def forward(self, clip):
        b, t, c, hh, ww = clip.shape
        x = self.drop(F.relu(self.conv1(clip.reshape(b, t * c, hh, ww))))
        return torch.tanh(self.conv2(x)) + clip[:, -1]

    def compute_losses(self, batch):
        pred = self(batch["clip"])
        last = batch["clip"][:, -1]
        app = F.mse_loss(pred, batch["target"])
        mot = F.mse_loss(pred - last, batch["target"] - last)
        return {"loss": app + 0.5 * mot, "appearance": app, "motion": mot}

    def score(self, batch):
        pred = self(batch["clip"])
        err = (pred - batch["target"]).pow(2).mean(1, keepdim=True)
        s = err.mean((1, 2, 3))
        return {"score": s, "appearance": s, "motion": s, "error_map": err}


if "tiny_test" not in list_models():
    register_model("tiny_test", TinyPredictor)(lambda: TinyConfig())
