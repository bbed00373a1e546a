"""BatchNorm folding for inference (m2s2l.models.fuse): the folded model computes the same function."""
import pytest
import torch
import torch.nn as nn

from m2s2l.models import create_model
from m2s2l.models.fuse import fold_conv_bn, fuse_conv_bn, fused_for_inference


def randomise_bn(model, seed=0):
    """Non-trivial eval statistics and affine parameters in every BatchNorm (a fresh model's are identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return model


def test_fused_model_equals_model(dtype=torch.float32, tol=1e-5):
    """float32 (the Mamba ops take no float64); the fold itself is checked exactly in float64 below."""
    torch.manual_seed(0)
    model = randomise_bn(create_model("m2s2l_lite", image_size=32, in_channels=3, backend="torch")).eval()
    model = model.to(dtype)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fused = fused_for_inference(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn > 0   # the original is untouched
    clip = (torch.rand(2, model.config.clip_len, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    ref, got = model(clip.to(dtype)), fused(clip.to(dtype))
    for k in ref:
        scale = ref[k].abs().max().item()
        err = (got[k] - ref[k]).abs().max().item()
        assert err <= tol * max(scale, 1.0), f"{k}: max error {err:.3g} (scale {scale:.3g})"


def test_fuse_counts_every_conv_bn_pair_of_the_paper_model():
    model = create_model("m2s2l_paper", in_channels=1).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fuse_conv_bn(model) == n_bn == 44


def test_fold_matches_conv_then_bn_with_bias_groups_and_stride():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2, bias=True).double()
    bn = randomise_bn(nn.Sequential(nn.BatchNorm2d(8))).double().eval()[0]
    x = torch.randn(3, 6, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_fuse_rejects_training_mode_and_bn_without_statistics():
    model = create_model("m2s2l_lite", image_size=32)
    with pytest.raises(ValueError, match="model.eval"):
        fuse_conv_bn(model.train())
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        fold_conv_bn(nn.Linear(2, 4), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="out_channels"):
        fold_conv_bn(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(5))
