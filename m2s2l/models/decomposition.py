"""Feature decomposition into appearance and motion streams, and their decorrelation loss."""
import torch
import torch.nn as nn


class Decomposition(nn.Module):
    """fused (B, C, H, W) -> (appearance (B, C, H, W), motion (B, C, H, W)) by two learned 1x1 projections
    (conv -> BatchNorm -> ReLU). The decorrelation loss pushes the two streams to carry different
    information; the two decoders' losses decide which is which."""

    def __init__(self, dim):
        super().__init__()
        self.appearance = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(True))
        self.motion = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(True))

    def forward(self, x):
        return self.appearance(x), self.motion(x)


def decorrelation_loss(app, mot, eps=1e-6):
    """Mean squared cross-correlation between appearance and motion channels, in [0, 1].

    app, mot: (B, C, H, W). Each channel is centred and normalised over H*W (per sample); the loss is
    mean over (B, C, C) of corr(app_i, mot_j) ** 2 -- zero when every appearance channel is uncorrelated
    with every motion channel (orthogonal after centring). Computed in float32."""
    a = app.float().flatten(2)
    m = mot.float().flatten(2)
    a = a - a.mean(-1, keepdim=True)
    m = m - m.mean(-1, keepdim=True)
    a = a / (a.norm(dim=-1, keepdim=True) + eps)
    m = m / (m.norm(dim=-1, keepdim=True) + eps)
    return torch.bmm(a, m.transpose(1, 2)).pow(2).mean()
