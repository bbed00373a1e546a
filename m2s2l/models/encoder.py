"""Hierarchical spatial encoder: a per-frame residual CNN pyramid at strides 2, 4, 8, ... ."""
import torch.nn as nn
import torch.nn.functional as F


class ConvBNAct(nn.Sequential):
    """3x3 (or kxk) conv -> BatchNorm -> ReLU (act=False drops the ReLU)."""

    def __init__(self, cin, cout, k=3, stride=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: x + BN(conv(ReLU(BN(conv(x))))), then ReLU."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(c, c), ConvBNAct(c, c, act=False))

    def forward(self, x):
        return F.relu(x + self.body(x))


class SpatialEncoder(nn.Module):
    """frames (N, C_in, H, W) -> [(N, widths[l], H / 2**(l+1), W / 2**(l+1)) for each level l].

    Level l starts with a stride-2 3x3 conv (the stem for l = 0) followed by enc_depths[l] basic blocks.
    Frames are processed independently (BatchNorm in eval mode uses running statistics)."""

    def __init__(self, in_channels, widths, depths):
        super().__init__()
        stages, cin = [], in_channels
        for w, d in zip(widths, depths):
            stages.append(nn.Sequential(ConvBNAct(cin, w, stride=2), *[BasicBlock(w) for _ in range(d)]))
            cin = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
