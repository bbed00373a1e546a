"""upsample_cat (Triton and torch backends) against the float64 two-op form (naive.py) and against PyTorch's own
two ops in the same dtype.

Tolerance: max |a - ref| / max(1, max |ref|) per tensor. The resize is float32 arithmetic rounded once to x's dtype
(as F.interpolate): vs float64 fp32 1e-6, fp16 1e-3, bf16 8e-3 (one bf16 ulp is 2^-8 = 3.9e-3 relative: the
rounding itself, plus the rounding of the inputs the reference also sees); vs PyTorch's same-dtype two-op result at
most one ulp of the dtype plus 4 float32 ulps of max |x| (float32 rounding order of the weighted sum, which may also
move a value across a rounding boundary). dx goes through
PyTorch's upsample_bilinear2d_backward: same table, or (half dtypes on CUDA, where that kernel accumulates in the
gradient's dtype) at most 1.5x the two-op form's own dx error. The output buffer comes from torch.empty, NaN-poisoned by
tests/conftest.py, so an element the kernel did not write fails.
"""
import pytest
import torch

from m2s2l.ops import upsample_cat
from m2s2l.triton_kernels.upsample.naive import upsample_cat_ref

DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
ULP = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def rel_err(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0)).item()


def make(shape, dtype, layout, device, seed):
    """A (B, C, H, W) tensor in the named layout: contiguous, channels_last, or a strided slice (every other
    channel and column of a larger map)."""
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    if layout == "slice":
        t = (torch.randn(B, 2 * C, H, 2 * W + 1, generator=g) * 2)[:, ::2, :, 1::2]
    else:
        t = torch.randn(B, C, H, W, generator=g) * 2
    t = t.to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if layout == "cl" else t


# (x shape, skip (Cs, H, W)): 2x (the decoders), odd sizes with non-integer ratios, 1x1 sources, same size,
# downsampling, a single channel
SHAPES = [
    ((2, 8, 4, 5), (6, 8, 10)),
    ((1, 5, 3, 7), (3, 7, 9)),
    ((2, 3, 1, 1), (2, 3, 4)),
    ((1, 4, 6, 6), (5, 6, 6)),
    ((2, 6, 9, 7), (2, 4, 3)),
    ((3, 1, 5, 4), (1, 10, 8)),
    ((1, 70, 3, 3), (65, 6, 6)),  # more than one 64-channel block in each half
]


@pytest.mark.parametrize("dt", list(DT))
@pytest.mark.parametrize("layout", ["contig", "cl", "slice"])
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: f"x{'x'.join(map(str, s[0]))}-s{'x'.join(map(str, s[1]))}")
def test_against_reference(shapes, layout, dt, device):
    """Output and both gradients of (out * dout).sum() vs float64 and vs PyTorch's two ops in the same dtype."""
    dtype = DT[dt]
    xs, (Cs, H, W) = shapes
    x = make(xs, dtype, layout, device, 1)
    skip = make((xs[0], Cs, H, W), dtype, layout, device, 2)
    dout = torch.randn(xs[0], xs[1] + Cs, H, W, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    res = {}
    for name, fn, cast in (("triton", lambda a, b: upsample_cat(a, b, backend="triton"), None),
                           ("torch", upsample_cat_ref, None), ("ref", upsample_cat_ref, torch.float64)):
        a = x.detach().to(cast or dtype).requires_grad_()
        b = skip.detach().to(cast or dtype).requires_grad_()
        out = fn(a, b)
        dx, ds = torch.autograd.grad(out, [a, b], dout.to(out.dtype))
        res[name] = (out, dx, ds)
    out, dx, ds = res["triton"]
    assert out.shape == (xs[0], xs[1] + Cs, H, W) and out.dtype == dtype
    assert dx.shape == x.shape and dx.dtype == dtype and ds.shape == skip.shape and ds.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, res["ref"][0]) < TOL[dtype] and rel_err(ds, res["ref"][2]) < TOL[dtype]
    # dx is PyTorch's upsample_bilinear2d_backward (on CUDA it accumulates in the gradient's dtype with atomics,
    # so half-precision dx carries a few ulps more): within TOL, or no worse than the two-op form's own dx
    err_dx, err_torch = rel_err(dx, res["ref"][1]), rel_err(res["torch"][1], res["ref"][1])
    assert err_dx < max(TOL[dtype], 1.5 * err_torch), (err_dx, err_torch)
    # the skip half is a copy, exactly
    assert torch.equal(out[:, xs[1]:], skip)
    # vs PyTorch's same-dtype result: one ulp of the value (a rounding flip) plus the float32 rounding-order
    # difference of the weighted sum (a few float32 ulps of the inputs' magnitude)
    tor = res["torch"][0]
    slack = ULP[dtype] * tor.double().abs() + 4 * 2.0 ** -24 * x.double().abs().max()
    assert ((out.double() - tor.double()).abs() <= slack).all()
    if layout == "cl" and Cs > 1:  # a one-channel skip is contiguous in both formats: the output is contiguous
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()


def test_mixed_dtypes(device):
    """bf16 x with a float32 skip (what autocast can hand the decoder): float32 output as torch.cat, the resized
    half rounded to bf16 first, as F.interpolate in bf16 then the cast; gradients in each input's dtype."""
    x = make((2, 4, 3, 5), torch.bfloat16, "cl", device, 4).requires_grad_()
    skip = make((2, 3, 6, 10), torch.float32, "cl", device, 5).requires_grad_()
    out = upsample_cat(x, skip, backend="triton")
    ref = upsample_cat_ref(x.detach(), skip.detach())
    assert out.dtype == torch.float32 and ref.dtype == torch.float32
    assert rel_err(out, ref) <= 2.0 ** -7
    assert torch.equal(out[:, :4], out[:, :4].to(torch.bfloat16).float())  # rounded to x's dtype
    dx, ds = torch.autograd.grad(out.sum(), [x, skip])
    assert dx.dtype == torch.bfloat16 and ds.dtype == torch.float32 and torch.equal(ds, torch.ones_like(ds))


def test_no_grad_and_torch_backend(device):
    """Inference (no autograd) runs the kernel alone; backend='torch' is the two-op form exactly."""
    x = make((1, 3, 4, 4), torch.float32, "contig", device, 6)
    skip = make((1, 2, 8, 8), torch.float32, "contig", device, 7)
    with torch.no_grad():
        a = upsample_cat(x, skip, backend="triton")
    assert not a.requires_grad and rel_err(a, upsample_cat_ref(x, skip)) < 1e-6
    assert torch.equal(upsample_cat(x, skip, backend="torch"), upsample_cat_ref(x, skip))
    # float64 (e.g. a float64 model in the DDP equivalence check) takes the two-op form under "auto"
    xd, sd = x.double(), skip.double()
    assert torch.equal(upsample_cat(xd, sd), upsample_cat_ref(xd, sd))


def test_bad_input(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    skip = torch.randn(2, 2, 8, 8, device=device)
    with pytest.raises(ValueError, match=r"x must have shape \(B, Cx, h, w\)"):
        upsample_cat(x[0], skip)
    with pytest.raises(ValueError, match=r"skip must have shape \(B, Cs, H, W\)"):
        upsample_cat(x, skip[:1])
    with pytest.raises(ValueError, match="h, w >= 1"):
        upsample_cat(x[:, :, :0], skip)
    with pytest.raises(TypeError, match="skip must have dtype"):
        upsample_cat(x, skip.int())
    with pytest.raises(TypeError, match="float64"):
        upsample_cat(x, skip.double(), backend="triton")
    with pytest.raises(TypeError, match="x must be real"):
        upsample_cat(torch.complex(x, x), skip)
    with pytest.raises(ValueError, match="backend must be one of"):
        upsample_cat(x, skip, backend="cudnn")
    with pytest.raises(ValueError, match=r"skip must have shape \(B, Cs, H, W\) \(4 dims\)"):
        upsample_cat(x, torch.randn(2, 2, 8, device=device))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        upsample_cat(x.numpy() if device.type == "cpu" else x.cpu().numpy(), skip)


def test_opcheck(device):
    """The custom op's schema, fake (shape, dtype, memory format) and autograd registration."""
    x = make((2, 3, 4, 5), torch.float32, "cl", device, 8).requires_grad_()
    skip = make((2, 2, 8, 10), torch.float32, "cl", device, 9).requires_grad_()
    torch.library.opcheck(torch.ops.m2s2l.upsample_cat_fwd.default, (x, skip),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_decoder_uses_it(device):
    """The model's Decoder runs upsample_cat (Triton backend) and equals the two-op form (pure_torch_ops, the
    ONNX / plain-PyTorch stand-in), output and parameter gradients."""
    from m2s2l.engine.export import pure_torch_ops
    from m2s2l.models.decoder import Decoder
    torch.manual_seed(0)
    dec = Decoder([4, 6, 8], [1, 1, 1], 1, tanh=True).to(device)
    feats = [torch.randn(2, c, 16 // 2 ** i, 12 // 2 ** i, device=device) for i, c in enumerate([4, 6, 8])]
    from m2s2l.ops import upsample as up_mod
    outs, calls = [], []
    real = up_mod._fwd_impl
    for ctx in (torch.enable_grad, pure_torch_ops):
        n0 = len(calls)
        with ctx(), pytest.MonkeyPatch.context() as mp:  # count the kernel launcher's calls
            mp.setattr(up_mod, "_fwd_impl", lambda *a: calls.append(1) or real(*a))
            mp.setattr(up_mod, "_Eager", up_mod.eager_function(up_mod._fwd_impl, up_mod._setup_context,
                                                                up_mod._backward))
            dec.zero_grad()
            y = dec(feats)
            y.square().sum().backward()
            outs.append((y.detach(), [p.grad.clone() for p in dec.parameters()], len(calls) - n0))
    assert [o[2] for o in outs] == [2, 0]  # both levels through the kernel; none under the stand-in
    assert outs[0][0].shape == (2, 1, 32, 24)
    assert rel_err(outs[0][0], outs[1][0]) < 1e-5
    for a, b in zip(outs[0][1], outs[1][1]):
        assert rel_err(a, b) < 1e-4


def test_speed_bench_smoke(tmp_path, device):
    """bench/upsample_speed.py runs end to end (--small) and writes its JSON rows."""
    import importlib.util
    import json
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "upsample_speed.py")
    spec = importlib.util.spec_from_file_location("upsample_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "up.json"
    rows = bench.main(["--device", str(device), "--small", "--json", str(out)])
    assert len(rows) == 2 * 2 * 2 and json.load(open(out))["rows"] == json.loads(json.dumps(rows))
    assert all(r["ms"] > 0 and r["speedup"] > 0 for r in rows)


@pytest.mark.gpu
@pytest.mark.parametrize("cl", [True, False])
def test_gpu_decoder_sizes(cl):
    """On a GPU at the paper model's 32-stream decoder sizes (bf16): equal to PyTorch's two ops within one ulp."""
    for C, h, Cs in ((256, 16, 128), (128, 32, 64), (64, 64, 32)):
        x = make((32, C, h, h), torch.bfloat16, "cl" if cl else "contig", "cuda", C)
        skip = make((32, Cs, 2 * h, 2 * h), torch.bfloat16, "cl" if cl else "contig", "cuda", C + 1)
        out = upsample_cat(x, skip, backend="triton")
        ref = upsample_cat_ref(x, skip)
        slack = 2.0 ** -7 * ref.double().abs() + 4 * 2.0 ** -24 * x.double().abs().max()
        assert ((out.double() - ref.double()).abs() <= slack).all()
