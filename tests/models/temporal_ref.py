"""The reference computation of ``MultiTemporalMamba`` (shared by tests/models and the shipped-checkpoint test)."""
import torch


def full_temporal_forward(tm, feats):
    """MultiTemporalMamba.forward as it was before ``last_only`` and m2s2l's LayerNorm: every block on every step
    (F.layer_norm, out_proj and residual for all T), then the last step of each branch."""
    B, T, C, H, W = feats.shape
    seq = feats.permute(0, 3, 4, 1, 2).reshape(B * H * W, T, C)
    summaries = []
    for s, branch in zip(tm.scales, tm.branches):
        x = seq if s == 1 else seq.reshape(B * H * W, T // s, s, C).mean(2)
        for block in branch:
            n = block.norm
            x = x + block.mixer(torch.nn.functional.layer_norm(x, n.normalized_shape, n.weight, n.bias, n.eps))
        summaries.append(x[:, -1])
    fused = seq[:, -1] + tm.fuse(torch.cat(summaries, dim=-1))
    return fused.reshape(B, H, W, C).permute(0, 3, 1, 2)
