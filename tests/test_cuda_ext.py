"""The optional CUDA extension (csrc/, ``m2s2l._C``) against the float64 references: outputs, final states
and every gradient, all three dtypes, odd shapes, the video shapes. GPU only; skipped when the extension
is not built unless M2S2L_REQUIRE_CUDA_EXT=1 (set by csrc/build_and_test.sh), which makes that a failure."""
import math
import os

import pytest
import torch

from m2s2l.ops import _cuda
from m2s2l.ops._backend import cuda_ext
from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_ref
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref

pytestmark = pytest.mark.gpu

# max |kernel - ref| / max |ref|, per dtype (references run in float64 on the same rounded inputs)
TOL = {torch.float32: 2e-3, torch.float16: 6e-3, torch.bfloat16: 3e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _need_ext():
    if cuda_ext() is None:
        if os.environ.get("M2S2L_REQUIRE_CUDA_EXT") == "1":
            pytest.fail("m2s2l._C was not built")
        pytest.skip("m2s2l._C not built (M2S2L_BUILD_CUDA=1 pip install -e . --no-build-isolation)")


def _poison_cache():
    """Fill the caching allocator's free blocks with NaN so unwritten kernel outputs show up."""
    torch.empty(1 << 26, device="cuda").fill_(float("nan"))
    torch.cuda.synchronize()


def _close(name, got, ref, dtype, scale=1.0):
    assert got is not None, f"{name}: missing"
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    got, ref = got.double(), ref.double()
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = (got - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
    assert err <= TOL[dtype] * scale, f"{name}: relative error {err:.2e} > {TOL[dtype] * scale:.1e}"


def _scan_inputs(batch, dim, L, N, dtype, bc="var", groups=1, z=True, D=True, bias=True, init=True, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, dt=dtype: torch.randn(*s, generator=g, device="cuda").to(dt)  # noqa: E731
    u, delta = r(batch, dim, L), (0.5 * r(batch, dim, L, dt=torch.float32) - 1.0).to(dtype)
    A = -torch.rand(dim, N, generator=g, device="cuda") * 2 - 0.1
    shape = {"fixed": (dim, N), "var3": (batch, N, L), "var": (batch, groups, N, L)}[bc]
    B, C = r(*shape), r(*shape)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=r(dim, dt=torch.float32) if D else None,
                z=r(batch, dim, L) if z else None, delta_bias=(0.3 * r(dim, dt=torch.float32)) if bias else None,
                initial_state=r(batch, dim, N, dt=torch.float32) if init else None)


def _scan_ref_grads(inp, softplus, dout, dlast):
    leaves = {k: (v.detach().double().requires_grad_() if v is not None else None) for k, v in inp.items()}
    out, last = selective_scan_ref(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                                   leaves["D"], leaves["z"], leaves["delta_bias"], softplus, True,
                                   leaves["initial_state"])
    ((out * dout.double()).sum() + (last * dlast.double()).sum()).backward()
    return out, last, {k: (v.grad if v is not None else None) for k, v in leaves.items()}


def _check_scan(inp, softplus, dtype, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(1)
    u = inp["u"]
    dout = torch.randn(u.shape, generator=g, device="cuda").to(dtype)
    dlast = torch.randn(u.shape[0], u.shape[1], inp["A"].shape[1], generator=g, device="cuda")
    _poison_cache()
    out, last, saved = _cuda.selective_scan_fwd(**inp, delta_softplus=softplus)
    _poison_cache()
    grads = _cuda.selective_scan_bwd(dout, dlast, inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], inp["D"],
                                     inp["z"], inp["delta_bias"], inp["initial_state"], saved, softplus)
    ref_out, ref_last, ref_g = _scan_ref_grads(inp, softplus, dout, dlast)
    assert out.dtype == dtype and last.dtype == torch.float32
    _close("out", out, ref_out, dtype, scale)
    _close("last_state", last, ref_last, dtype, scale)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    for name, got in zip(names, grads):
        if inp[name] is None:
            assert got is None, f"d{name} should be None"
        else:
            assert got.dtype == inp[name].dtype, f"d{name} dtype"
            _close(f"d{name}", got, ref_g[name], dtype, 2 * scale)


# (batch, dim, seqlen, dstate): seqlen 1/7/129/300 crosses the 8-step sub-chunks and 64-step chunks;
# dstate picks the lane-group configuration (<=4: 4x4, <=16: 16x1 for few rows, <=64: 16x4, <=256: 32x8)
SHAPES = [(2, 5, 1, 1), (2, 24, 7, 4), (1, 130, 129, 16), (2, 6, 300, 16), (2, 5, 70, 33), (1, 3, 65, 256)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-D{}-L{}-N{}".format(*s))
def test_scan_shapes(shape, dtype):
    _check_scan(_scan_inputs(*shape, dtype, bc="var", groups=1), softplus=True, dtype=dtype)


@pytest.mark.parametrize("bc,groups", [("fixed", 1), ("var3", 1), ("var", 2), ("var", 4)])
@pytest.mark.parametrize("opts", [dict(), dict(z=False, D=False, bias=False, init=False)], ids=["all", "bare"])
@pytest.mark.parametrize("softplus", [True, False])
def test_scan_variants(bc, groups, opts, softplus):
    inp = _scan_inputs(3, 8, 37, 8, torch.float32, bc=bc, groups=groups, **opts)
    if not softplus:
        inp["delta"] = inp["delta"].abs() * 0.3
    _check_scan(inp, softplus, torch.float32)


def test_scan_bc_float32_with_half_inputs():
    inp = _scan_inputs(2, 8, 40, 16, torch.float16, bc="var", groups=2)
    inp["B"], inp["C"] = inp["B"].float(), inp["C"].float()
    _check_scan(inp, True, torch.float16)


def test_scan_noncontiguous():
    inp = _scan_inputs(2, 16, 50, 8, torch.float32, bc="var", groups=2)
    for k in ("u", "delta", "z"):  # channel-last storage, seen as (batch, dim, seqlen)
        inp[k] = inp[k].transpose(1, 2).contiguous().transpose(1, 2)
    inp["B"] = torch.cat([inp["B"], inp["B"]], dim=-1)[..., ::2]  # strided time axis
    assert not inp["u"].is_contiguous() and not inp["B"].is_contiguous()
    _check_scan(inp, True, torch.float32)


@pytest.mark.parametrize("shape", [(16384, 128, 8, 16), (4096, 256, 16, 16)], ids=["video8", "video16"])
def test_scan_video_shapes(shape):
    _check_scan(_scan_inputs(*shape, torch.bfloat16, bc="var3"), softplus=True, dtype=torch.bfloat16)


def test_scan_chunked_equals_whole():
    inp = _scan_inputs(2, 8, 150, 16, torch.float32, bc="var")
    out, last, _ = _cuda.selective_scan_fwd(**inp, delta_softplus=True)
    cut = 77
    first = {k: (v[..., :cut] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inp.items()}
    second = {k: (v[..., cut:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inp.items()}
    o1, l1, _ = _cuda.selective_scan_fwd(**first, delta_softplus=True)
    second["initial_state"] = l1
    o2, l2, _ = _cuda.selective_scan_fwd(**second, delta_softplus=True)
    torch.testing.assert_close(torch.cat([o1, o2], -1), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l2, last, rtol=1e-5, atol=1e-5)


def test_scan_bad_input_raises():
    inp = _scan_inputs(2, 8, 10, 4, torch.float32)
    with pytest.raises(RuntimeError, match="dstate"):
        _cuda.selective_scan_fwd(**{**inp, "A": torch.zeros(8, 300, device="cuda"),
                                    "initial_state": None, "B": inp["B"][:, :, :1].expand(2, 1, 300, 10),
                                    "C": inp["C"][:, :, :1].expand(2, 1, 300, 10)})
    with pytest.raises(RuntimeError, match="delta"):
        _cuda.selective_scan_fwd(**{**inp, "delta": inp["delta"][:, :, :5]})
    with pytest.raises(RuntimeError, match="groups"):
        _cuda.selective_scan_fwd(**{**inp, "B": torch.randn(2, 3, 4, 10, device="cuda")})


# ---- causal conv1d -------------------------------------------------------------------------------------------

def _check_conv(x, w, b, init, act, dtype, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(2)
    W = w.shape[1]
    dout = torch.randn(x.shape, generator=g, device="cuda").to(dtype)
    dfin = torch.randn(x.shape[0], x.shape[1], W - 1, generator=g, device="cuda").to(dtype)
    _poison_cache()
    out, fin = _cuda.causal_conv1d_fwd(x, w, b, init, act, True)
    _poison_cache()
    dx, dw, db, dinit = _cuda.causal_conv1d_bwd(x, w, b, init, dout, dfin, act)
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (x, w, b, init)]
    ro, rf = causal_conv1d_ref(leaves[0], leaves[1], leaves[2], act, leaves[3], True)
    ((ro * dout.double()).sum() + (rf * dfin.double()).sum()).backward()
    _close("out", out, ro, dtype, scale)
    _close("final_states", fin, rf, dtype, scale)
    for name, got, leaf in zip(["x", "weight", "bias", "initial_states"], [dx, dw, db, dinit], leaves):
        if leaf is None:
            assert got is None, f"d{name} should be None"
        elif leaf.numel():
            _close(f"d{name}", got, leaf.grad, dtype, 2 * scale)


def _conv_inputs(batch, dim, L, W, dtype, bias=True, init=True, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    return (r(batch, dim, L).to(dtype), r(dim, W) / math.sqrt(W), r(dim) if bias else None,
            r(batch, dim, W - 1).to(dtype) if init else None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("W", [1, 2, 3, 4, 5, 8, 11, 16])
@pytest.mark.parametrize("L", [1, 2, 7, 9, 129])
def test_conv_shapes(L, W, dtype):
    _check_conv(*_conv_inputs(2, 6, L, W, dtype), "silu", dtype)


@pytest.mark.parametrize("opts", [dict(bias=False, init=False), dict(init=False), dict(bias=False)],
                         ids=["bare", "bias", "init"])
@pytest.mark.parametrize("act", [None, "silu"])
def test_conv_variants(opts, act):
    _check_conv(*_conv_inputs(3, 10, 33, 4, torch.float32, **opts), act, torch.float32)


def test_conv_channel_last_and_strided():
    x, w, b, init = _conv_inputs(2, 16, 40, 4, torch.float32)
    xcl = x.transpose(1, 2).contiguous().transpose(1, 2)
    _check_conv(xcl, w, b, init, "silu", torch.float32)
    _check_conv(torch.cat([x, x], -1)[..., ::2], w, b, init, None, torch.float32)


@pytest.mark.parametrize("shape", [(16384, 128, 8), (4096, 256, 16), (4, 512, 2048)], ids=["video8", "video16", "long"])
def test_conv_bench_shapes(shape):
    _check_conv(*_conv_inputs(*shape, 4, torch.bfloat16), "silu", torch.bfloat16)


def test_conv_bad_input_raises():
    x, w, b, init = _conv_inputs(2, 6, 10, 4, torch.float32)
    with pytest.raises(RuntimeError, match="width"):
        _cuda.causal_conv1d_fwd(x, torch.randn(6, 17, device="cuda"))
    with pytest.raises(RuntimeError, match="initial_states"):
        _cuda.causal_conv1d_fwd(x, w, b, init[..., :2])
    with pytest.raises(RuntimeError, match="weight"):
        _cuda.causal_conv1d_fwd(x, w[:5])
