"""frame_errors (Triton and torch backends) against the float64 reference (naive.py on float64 copies), and the
opt-in fused scoring path of ``m2s2l.models.scoring.score`` against the unfused one.

Tolerance: the kernel computes in float32 from the inputs as given (half-precision inputs are widened exactly), so
against float64 only float32 rounding remains: relative 1e-5 for the maps and for app_mse (a sum over up to H*W
float32 values in two stages). Output buffers come from torch.empty, NaN-poisoned by tests/conftest.py.
"""
import math

import pytest
import torch

from m2s2l.models import scoring
from m2s2l.models.config import M2S2LConfig
from m2s2l.ops import frame_errors
from m2s2l.triton_kernels.frame_errors import frame_errors as fe_mod
from m2s2l.triton_kernels.frame_errors.naive import frame_errors_ref

DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make(shape, dtype, layout, device, seed):
    """(B, C, H, W) in [-1, 1]: contiguous, channels_last, or a strided slice of a larger map."""
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    if layout == "slice":
        t = (torch.rand(B, 2 * C, H, 2 * W + 1, generator=g) * 2 - 1)[:, ::2, :, 1::2]
    else:
        t = torch.rand(B, C, H, W, generator=g) * 2 - 1
    t = t.to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if layout == "cl" else t


def rel(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# (B, C, Cm, H, W): RGB + diff motion, grey, RGB + flow (2 channels), odd sizes, more than one pixel block
SHAPES = [(2, 3, 3, 8, 10), (1, 1, 1, 7, 9), (3, 3, 2, 5, 3), (1, 2, 1, 1, 1), (2, 1, 2, 37, 41)]


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("layout", ["contig", "cl", "slice"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_against_reference(shape, layout, dt, device):
    B, C, Cm, H, W = shape
    dtype = DT[dt]
    app = make((B, C, H, W), dtype, layout, device, 1)
    target = make((B, C, H, W), torch.float32, "contig", device, 2)   # frames: float32, the preds: autocast dtype
    mot = make((B, Cm, H, W), dtype, layout, device, 3)
    mt = make((B, Cm, H, W), dtype if layout != "slice" else torch.float32, layout, device, 4)
    a_map, m_map, mse = frame_errors(app, target, mot, mt, backend="triton")
    ra, rm, rmse = frame_errors_ref(app.double(), target.double(), mot.double(), mt.double())
    assert a_map.shape == m_map.shape == (B, 1, H, W) and mse.shape == (B,)
    assert a_map.dtype == m_map.dtype == mse.dtype == torch.float32
    assert rel(a_map, ra) < 1e-5 and rel(m_map, rm) < 1e-5 and rel(mse, rmse) < 1e-5
    # the torch backend is the reference itself
    t = frame_errors(app, target, mot, mt, backend="torch")
    for x, y in zip(t, frame_errors_ref(app, target, mot, mt)):
        assert torch.equal(x, y)


def test_block_sizes(device):
    """Several pixel blocks a frame, the last one partial (block 16 over 7 x 9 = 63 pixels): the partial sums add
    up to the mean."""
    app, target = make((2, 3, 7, 9), torch.float32, "cl", device, 5), make((2, 3, 7, 9), torch.float32, "contig",
                                                                             device, 6)
    mot, mt = make((2, 3, 7, 9), torch.float32, "contig", device, 7), make((2, 3, 7, 9), torch.float32, "cl",
                                                                         device, 8)
    a, m, mse = fe_mod.frame_errors_fwd(app, target, mot, mt, block_p=16)
    ra, rm, rmse = frame_errors_ref(app.double(), target.double(), mot.double(), mt.double())
    assert rel(a, ra) < 1e-5 and rel(m, rm) < 1e-5 and rel(mse, rmse) < 1e-5


def test_gradients_take_the_reference(device, monkeypatch):
    """An input that needs gradients takes the reference (the kernel has no backward): the result is
    differentiable and equal to the reference's."""
    called = []
    monkeypatch.setattr(fe_mod, "frame_errors_fwd", lambda *a, **k: called.append(1))
    app = make((1, 3, 4, 5), torch.float32, "contig", device, 9).requires_grad_()
    other = [make((1, 3, 4, 5), torch.float32, "contig", device, s) for s in (10, 11, 12)]
    a, m, mse = frame_errors(app, *other, backend="triton")
    assert not called and a.requires_grad
    (g,) = torch.autograd.grad(mse.sum(), [app])
    assert torch.allclose(g, 2 * (app - other[0]).detach() / app[0].numel())


def test_bad_input(device):
    x = torch.zeros(2, 3, 4, 5, device=device)
    m = torch.zeros(2, 2, 4, 5, device=device)
    with pytest.raises(ValueError, match=r"app must have shape \(B, C, H, W\)"):
        frame_errors(x[0], x, m, m)
    with pytest.raises(ValueError, match=r"target must have shape \(B, C, H, W\) as app = \(2, 3, 4, 5\)"):
        frame_errors(x, x[:, :2], m, m)
    with pytest.raises(ValueError, match=r"mot must have shape \(B, Cm, H, W\) = \(2, Cm, 4, 5\)"):
        frame_errors(x, x, m[:, :, :3], m)
    with pytest.raises(ValueError, match=r"mot_target must have shape \(B, Cm, H, W\) as mot"):
        frame_errors(x, x, m, m[:, :1])
    with pytest.raises(TypeError, match="mot must have dtype"):
        frame_errors(x, x, m.double(), m)
    with pytest.raises(ValueError, match="C, Cm, H, W >= 1"):
        frame_errors(x[:, :0], x[:, :0], m, m)
    with pytest.raises(ValueError, match="backend must be one of"):
        frame_errors(x, x, m, m, backend="cudnn")


@pytest.mark.parametrize("motion_channels", [3, 2])
def test_fused_score_equals_score(device, monkeypatch, motion_channels):
    """scoring.score with ``fused_errors`` on (the kernel: "auto" runs it on CPU under the TRITON_INTERPRET=1
    tests/conftest.py sets) equals it off (the PyTorch ops), every key."""
    cfg = M2S2LConfig(image_size=32)
    B = 3
    pred = {"appearance": make((B, 3, 32, 32), torch.bfloat16, "cl", device, 13),
            "motion": make((B, motion_channels, 32, 32), torch.bfloat16, "cl", device, 14)}
    target = make((B, 3, 32, 32), torch.float32, "contig", device, 15)
    mt = make((B, motion_channels, 32, 32), torch.float32, "contig", device, 16)
    monkeypatch.setattr(scoring, "fused_errors", False)
    ref = scoring.score(cfg, pred, target, mt)
    monkeypatch.setattr(scoring, "fused_errors", True)
    out = scoring.score(cfg, pred, target, mt)
    assert set(out) == set(ref)
    for k in ("score", "appearance", "motion"):
        assert torch.allclose(out[k], ref[k], rtol=0, atol=1e-4), k   # dB: 1e-4 dB ~ 2e-5 relative in the MSE
    assert rel(out["error_map"], ref["error_map"].double()) < 1e-5
    assert math.isfinite(out["score"].sum().item())


@pytest.mark.gpu
def test_against_reference_gpu():
    """At the 32-stream scoring size (256 x 256 RGB, bf16 predictions in channels_last)."""
    app = make((32, 3, 256, 256), torch.bfloat16, "cl", "cuda", 17)
    target = make((32, 3, 256, 256), torch.float32, "contig", "cuda", 18)
    mot = make((32, 3, 256, 256), torch.bfloat16, "cl", "cuda", 19)
    mt = make((32, 3, 256, 256), torch.float32, "contig", "cuda", 20)
    a, m, mse = frame_errors(app, target, mot, mt)
    ra, rm, rmse = frame_errors_ref(app.double(), target.double(), mot.double(), mt.double())
    assert rel(a, ra) < 1e-5 and rel(m, rm) < 1e-5 and rel(mse, rmse) < 1e-5
