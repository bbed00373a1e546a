"""U-Net style decoder: coarsest level upwards, skip connections from every pyramid level."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from m2s2l import ops

from .encoder import ConvBNAct


class Decoder(nn.Module):
    """[x_0 (B, w_0, H/2, W/2), ..., x_L (B, w_L, H/2**(L+1), ...)] -> (B, out_channels, H, W).

    From the coarsest level: bilinear x2 upsampling, concatenation with the next finer level (both as one
    ``m2s2l.ops.upsample_cat`` call), then
    dec_depths[l] 3x3 conv-BN-ReLU layers. The head maps the stride-2 level to out_channels * 4 channels
    and pixel-shuffles to full resolution; ``tanh`` bounds it to [-1, 1] (frames, halved differences),
    otherwise it is linear (optical flow)."""

    def __init__(self, widths, depths, out_channels, tanh, backend="auto"):
        super().__init__()
        L = len(widths)
        self.coarsest = nn.Sequential(*[ConvBNAct(widths[-1], widths[-1]) for _ in range(depths[-1])])
        ups = []
        for l in range(L - 2, -1, -1):
            cin = widths[l + 1] + widths[l]
            layers = [ConvBNAct(cin if i == 0 else widths[l], widths[l]) for i in range(max(depths[l], 1))]
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(widths[0], out_channels * 4, 3, 1, 1)
        self.tanh = tanh
        self.backend = backend  # of m2s2l.ops.upsample_cat (M2S2L.set_backend sets it with the Mamba blocks')

    def forward(self, feats):
        x = self.coarsest(feats[-1])
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            # cat([bilinear resize of x to skip's size, skip]) as one kernel
            x = up(ops.upsample_cat(x, skip, backend=self.backend))
        x = F.pixel_shuffle(self.head(x), 2)
        return torch.tanh(x) if self.tanh else x
