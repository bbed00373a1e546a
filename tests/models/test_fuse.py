"""BatchNorm folding for inference (m2s2l.models.fuse): the folded model computes the same function."""
import pytest
import torch
import torch.nn as nn

from m2s2l.models import create_model
from m2s2l.models.fuse import fold_conv_bn, fuse_conv_bn, fused_for_inference
from m2s2l.ops import triton_available


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


def test_conv_act_fusion_counts_and_structure():
    """fused_for_inference also fuses each folded convolution with its ReLU (ConvAct) and each residual block
    (ResidualConvAct): in m2s2l_paper 28 + 8 (= all 44 folded convolutions), no ReLU module left; conv_act=False
    keeps the folded Sequentials."""
    from m2s2l.models.fuse import ConvAct, ResidualConvAct, fuse_conv_act
    model = create_model("m2s2l_paper", in_channels=1).eval()
    fused = fused_for_inference(model)
    assert sum(isinstance(m, ConvAct) for m in fused.modules()) == 44
    assert sum(isinstance(m, ResidualConvAct) for m in fused.modules()) == 8
    assert not any(isinstance(m, nn.ReLU) for m in fused.modules())
    plain = fused_for_inference(model, conv_act=False)
    assert not any(isinstance(m, ConvAct) for m in plain.modules())
    assert fuse_conv_act(plain) == (28, 8) and fuse_conv_act(plain) == (0, 0)  # idempotent


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("residual", [False, True])
def test_conv_act_plain_path_equals_the_ops(relu, residual):
    """On CPU (and wherever the fused cuDNN call does not apply) ConvAct is relu(conv(x) + residual), bit for bit,
    and it keeps gradients (the fused call is for inference only)."""
    from m2s2l.models.fuse import ConvAct
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    r = torch.randn(2, 6, 5, 4) if residual else None
    y = ConvAct(conv, relu=relu)(x, r)
    ref = conv(x) if r is None else r + conv(x)
    ref = torch.relu(ref) if relu else ref
    assert torch.equal(y, ref)
    (g,) = torch.autograd.grad(y.sum(), [x])
    assert torch.isfinite(g).all()
    with pytest.raises(TypeError, match="with a bias"):
        ConvAct(nn.Conv2d(4, 6, 3, bias=False))


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("fmt", ["channels_last", "contiguous", "mixed"])
def test_conv_act_cudnn_path_gpu(amp, fmt, monkeypatch):
    """On CUDA under no_grad the fused cuDNN calls run (counted) and equal the plain ops: conv + ReLU at stride 1
    and 2, and a residual block, with channels_last / contiguous / mixed layouts, fp32 and bf16 autocast."""
    from m2s2l.models.fuse import ConvAct, ResidualConvAct
    calls = []
    for name in ("cudnn_convolution_relu", "cudnn_convolution_add_relu"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    torch.manual_seed(0)
    cl = torch.channels_last
    dev = "cuda"
    convs = [nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)]
    convs = [c.to(dev) for c in convs]
    if fmt != "contiguous":
        for c in convs[:2] if fmt == "mixed" else convs:
            c.to(memory_format=cl)
    x = torch.randn(4, 16, 34, 30, device=dev)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=cl)
    stem, block = ConvAct(convs[0]), ResidualConvAct(convs[1], convs[2])
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        got = block(stem(x))
        h = torch.relu(convs[0](x))
        ref = torch.relu(h + convs[2](torch.relu(convs[1](h))))
    assert calls == ["cudnn_convolution_relu", "cudnn_convolution_relu", "cudnn_convolution_add_relu"]
    assert got.dtype == ref.dtype and got.shape == ref.shape
    tol = 3e-2 if amp else 1e-2  # bf16: an ulp or two of values up to ~4; fp32: TF32 convolutions on both paths
    err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
    assert err < tol, err


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_dt_fold_in_fused_model(device):
    """fused_for_inference folds every Mamba mixer's dt_proj into its x_proj (Mamba.fold_dt_proj); dt_fold=False
    keeps none; with the Triton backend (channel layout, the unfused blocks) the folded model scores as the
    unfolded one."""
    from m2s2l.models.temporal import set_fused
    from m2s2l.modules import Mamba
    torch.manual_seed(0)
    model = randomise_bn(create_model("m2s2l_lite", image_size=16, in_channels=1, backend="triton")).eval()
    model = model.to(device)
    set_fused(model, False)
    n = sum(isinstance(m, Mamba) for m in model.modules())
    folded, plain = fused_for_inference(model), fused_for_inference(model, dt_fold=False)
    assert sum(getattr(m, "xdt_weight", None) is not None for m in folded.modules()) == n > 0
    assert not any(getattr(m, "xdt_weight", None) is not None for m in plain.modules())
    clip = (torch.rand(1, model.config.clip_len, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    with torch.no_grad():
        ref, got = plain(clip.to(device)), folded(clip.to(device))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4, msg=lambda m: f"{k}: {m}")
