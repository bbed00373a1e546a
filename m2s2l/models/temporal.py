"""Multi-temporal Mamba encoders (per pyramid level, over time) and the spatial BiMamba (coarsest level)."""
import functools

import torch
import torch.nn as nn

from m2s2l.modules import BiMamba, LayerNorm, Mamba


def serial(thunks):
    """``[f() for f in thunks]``: how the model runs its independent branches unless told otherwise (``run=``;
    e.g. ``m2s2l.engine.stream.CudaBranches`` runs them on parallel CUDA streams)."""
    return [f() for f in thunks]


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + mixer(LayerNorm(x)), x (batch, seqlen, dim).

    The norm is ``m2s2l.modules.LayerNorm`` (nn.LayerNorm's parameters and numerics; the Triton kernel for
    short rows) with the mixer's backend; under autocast it outputs the autocast dtype, which the mixer's in_proj
    would cast its input to anyway. ``forward(x, last_only=True)`` returns only the last step,
    (batch, 1, dim) = ``forward(x)[:, -1:]`` up to rounding, with the mixer's output projection and the residual
    computed for that step alone (the mixer must take ``last_only``, as ``Mamba`` does)."""

    def __init__(self, dim, mixer):
        super().__init__()
        self.norm = LayerNorm(dim, backend=mixer.backend)
        self.mixer = mixer

    def forward(self, x, last_only=False):
        # under autocast the mixer's first use of the normed x is a GEMM that casts it to the autocast dtype:
        # the norm writes that dtype directly (same values; nn.LayerNorm would return float32 on CUDA)
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        if last_only:
            return x[:, -1:] + self.mixer(self.norm(x, out_dtype=dt), last_only=True)
        return x + self.mixer(self.norm(x, out_dtype=dt))


class MultiTemporalMamba(nn.Module):
    """feats (B, T, C, H, W) -> fused (B, C, H, W): one feature map summarising the clip per location.

    Every spatial location is one sequence over time (batch B*H*W, seqlen T / s). For each temporal scale
    s the sequence is average-pooled by s (s = 1: full frame rate), run through ``depth`` Mamba blocks,
    and its last step (the state after the newest frame) is kept. The per-scale summaries are
    concatenated and fused by a linear layer, added to the newest frame's features (residual).

    Only the last step of each branch is used, so the branch's last block runs with ``last_only`` (its output
    projection and residual on that step alone; attribute ``last_only = False`` runs every step, e.g. to count
    the architecture's FLOPs). The one layout copy left is ``seq`` ((B, T, C, H, W) ->
    (B*H*W, T, C): the blocks need rows of C contiguous values); pooling, the last-step slices and the
    output (a (B, H, W, C) tensor seen as (B, C, H, W)) are computed or viewed without further copies."""

    def __init__(self, dim, clip_len, scales, depth, d_state, d_conv, expand, backend):
        super().__init__()
        self.clip_len, self.scales = clip_len, tuple(scales)
        self.branches = nn.ModuleList(
            nn.Sequential(*[MambaBlock(dim, Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand,
                                                   backend=backend)) for _ in range(depth)])
            for _ in self.scales)
        self.fuse = nn.Linear(dim * len(self.scales), dim)
        self.last_only = True  # False: every block on every step (same result up to rounding; FLOP counts)

    def forward(self, feats, run=None):
        """``run``: how the independent per-scale branches are executed (``serial`` when None)."""
        B, T, C, H, W = feats.shape
        seq = feats.permute(0, 3, 4, 1, 2).reshape(B * H * W, T, C)      # (B*H*W, T, C)
        last_only = getattr(self, "last_only", True)  # (modules pickled before the attribute existed)

        def scale(s, branch):
            x = seq if s == 1 else seq.reshape(B * H * W, T // s, s, C).mean(2)
            for i, block in enumerate(branch):
                x = block(x, last_only=last_only and i == len(branch) - 1)  # last block: (B*H*W, 1, C)
            return x[:, -1]                                                # (B*H*W, C)
        summaries = (run or serial)([functools.partial(scale, s, b) for s, b in zip(self.scales, self.branches)])
        fused = seq[:, -1] + self.fuse(torch.cat(summaries, dim=-1))             # (B*H*W, C)
        return fused.reshape(B, H, W, C).permute(0, 3, 1, 2)


class SpatialMamba(nn.Module):
    """x (B, C, H, W) -> (B, C, H, W): ``depth`` bidirectional Mamba blocks over the H*W tokens (row-major)."""

    def __init__(self, dim, depth, d_state, d_conv, expand, backend):
        super().__init__()
        self.blocks = nn.Sequential(*[MambaBlock(dim, BiMamba(dim, d_state=d_state, d_conv=d_conv,
                                                              expand=expand, backend=backend))
                                      for _ in range(depth)])

    def forward(self, x):
        B, C, H, W = x.shape
        tokens = self.blocks(x.flatten(2).transpose(1, 2))               # (B, H*W, C)
        return tokens.transpose(1, 2).reshape(B, C, H, W)
