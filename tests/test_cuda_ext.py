"""The optional CUDA extension (csrc/, ``m2s2l._C``) against the float64 references: outputs, final states
and every gradient, all three dtypes, odd shapes, the video shapes; directly (``m2s2l.ops._cuda``) and through
the public functions with backend="cuda" (custom ops, autograd, opcheck). GPU tests (marked ``gpu``) are
skipped when the extension is not built unless M2S2L_REQUIRE_CUDA_EXT=1 (set by csrc/build_and_test.sh),
which makes that a failure; the dispatch tests at the end run on CPU too."""
import math
import os
import shutil

import pytest
import torch

from m2s2l.ops import _cuda, causal_conv1d_fn, selective_scan_fn
from m2s2l.ops._backend import cuda_ext, resolve_backend
from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_ref
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref

gpu = pytest.mark.gpu

# max |kernel - ref| / max |ref|, per dtype (references run in float64 on the same rounded inputs)
TOL = {torch.float32: 2e-3, torch.float16: 6e-3, torch.bfloat16: 3e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _need_ext(request):
    if request.node.get_closest_marker("gpu") is None or not torch.cuda.is_available():
        return  # CPU tests; GPU tests without a GPU are skipped by conftest
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


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-D{}-L{}-N{}".format(*s))
def test_scan_shapes(shape, dtype):
    _check_scan(_scan_inputs(*shape, dtype, bc="var", groups=1), softplus=True, dtype=dtype)


@gpu
@pytest.mark.parametrize("bc,groups", [("fixed", 1), ("var3", 1), ("var", 2), ("var", 4)])
@pytest.mark.parametrize("opts", [dict(), dict(z=False, D=False, bias=False, init=False)], ids=["all", "bare"])
@pytest.mark.parametrize("softplus", [True, False])
def test_scan_variants(bc, groups, opts, softplus):
    inp = _scan_inputs(3, 8, 37, 8, torch.float32, bc=bc, groups=groups, **opts)
    if not softplus:
        inp["delta"] = inp["delta"].abs() * 0.3
    _check_scan(inp, softplus, torch.float32)


@gpu
def test_scan_bc_float32_with_half_inputs():
    inp = _scan_inputs(2, 8, 40, 16, torch.float16, bc="var", groups=2)
    inp["B"], inp["C"] = inp["B"].float(), inp["C"].float()
    _check_scan(inp, True, torch.float16)


@gpu
def test_scan_noncontiguous():
    inp = _scan_inputs(2, 16, 50, 8, torch.float32, bc="var", groups=2)
    for k in ("u", "delta", "z"):  # channel-last storage, seen as (batch, dim, seqlen)
        inp[k] = inp[k].transpose(1, 2).contiguous().transpose(1, 2)
    inp["B"] = torch.cat([inp["B"], inp["B"]], dim=-1)[..., ::2]  # strided time axis
    assert not inp["u"].is_contiguous() and not inp["B"].is_contiguous()
    _check_scan(inp, True, torch.float32)


@gpu
@pytest.mark.parametrize("shape", [(16384, 128, 8, 16), (4096, 256, 16, 16)], ids=["video8", "video16"])
def test_scan_video_shapes(shape):
    _check_scan(_scan_inputs(*shape, torch.bfloat16, bc="var3"), softplus=True, dtype=torch.bfloat16)


@gpu
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


@gpu
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


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("W", [1, 2, 3, 4, 5, 8, 11, 16])
@pytest.mark.parametrize("L", [1, 2, 7, 9, 129])
def test_conv_shapes(L, W, dtype):
    _check_conv(*_conv_inputs(2, 6, L, W, dtype), "silu", dtype)


@gpu
@pytest.mark.parametrize("opts", [dict(bias=False, init=False), dict(init=False), dict(bias=False)],
                         ids=["bare", "bias", "init"])
@pytest.mark.parametrize("act", [None, "silu"])
def test_conv_variants(opts, act):
    _check_conv(*_conv_inputs(3, 10, 33, 4, torch.float32, **opts), act, torch.float32)


@gpu
def test_conv_channel_last_and_strided():
    x, w, b, init = _conv_inputs(2, 16, 40, 4, torch.float32)
    xcl = x.transpose(1, 2).contiguous().transpose(1, 2)
    _check_conv(xcl, w, b, init, "silu", torch.float32)
    _check_conv(torch.cat([x, x], -1)[..., ::2], w, b, init, None, torch.float32)


@gpu
@pytest.mark.parametrize("shape", [(16384, 128, 8), (4096, 256, 16), (4, 512, 2048)], ids=["video8", "video16", "long"])
def test_conv_bench_shapes(shape):
    _check_conv(*_conv_inputs(*shape, 4, torch.bfloat16), "silu", torch.bfloat16)


@gpu
def test_conv_bad_input_raises():
    x, w, b, init = _conv_inputs(2, 6, 10, 4, torch.float32)
    with pytest.raises(RuntimeError, match="width"):
        _cuda.causal_conv1d_fwd(x, torch.randn(6, 17, device="cuda"))
    with pytest.raises(RuntimeError, match="initial_states"):
        _cuda.causal_conv1d_fwd(x, w, b, init[..., :2])
    with pytest.raises(RuntimeError, match="weight"):
        _cuda.causal_conv1d_fwd(x, w[:5])


# ---- the public functions with backend="cuda" (custom ops + autograd), vs the float64 references --------------

def _public_scan_inputs(batch, dim, L, N, dtype, bc, groups=1, **opts):
    inp = _scan_inputs(batch, dim, L, N, dtype, bc=bc, groups=groups, **opts)
    if bc == "fixed":  # the public contract: fixed B/C are float32
        inp["B"], inp["C"] = inp["B"].float(), inp["C"].float()
    return inp


# (batch, dim, seqlen, dstate, B/C layout, groups): every lane-group configuration, chunk boundaries, layouts
PUBLIC_SCAN = [(2, 5, 1, 1, "var", 1), (2, 24, 9, 4, "var3", 1), (1, 40, 65, 16, "var", 2),
               (2, 6, 130, 33, "fixed", 1), (1, 3, 70, 256, "var", 3)]


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PUBLIC_SCAN, ids=lambda c: "B{}-D{}-L{}-N{}-{}{}".format(*c))
def test_public_scan_backend_cuda(case, dtype):
    """selective_scan_fn(..., backend="cuda"): out, last_state and the gradient of every input, including
    initial_state and through last_state."""
    inp = _public_scan_inputs(*case[:4], dtype, case[4], case[5])
    g = torch.Generator(device="cuda").manual_seed(3)
    dout = torch.randn(inp["u"].shape, generator=g, device="cuda").to(dtype)
    dlast = torch.randn(inp["initial_state"].shape, generator=g, device="cuda")
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
    out, last = selective_scan_fn(*(leaves[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")),
                                  delta_softplus=True, return_last_state=True,
                                  initial_state=leaves["initial_state"], backend="cuda")
    ((out.float() * dout.float()).sum() + (last * dlast).sum()).backward()
    ref_out, ref_last, ref_g = _scan_ref_grads(inp, True, dout, dlast)
    assert out.dtype == dtype and last.dtype == torch.float32 and out.is_contiguous()
    _close("out", out, ref_out, dtype)
    _close("last_state", last, ref_last, dtype)
    for name, leaf in leaves.items():
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype, f"d{name}"
        _close(f"d{name}", leaf.grad, ref_g[name], dtype, 2)


@gpu
def test_public_scan_cuda_matches_torch_backend_and_chains():
    """Two chained calls (initial_state = the first call's last_state) equal one call, gradients included,
    and the cuda backend agrees with the torch backend."""
    inp = _public_scan_inputs(2, 8, 150, 16, torch.float32, "var", groups=2)
    del inp["initial_state"]

    def grads(fn):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inp.items()}
        out = fn(leaves)
        out.square().sum().backward()
        return out.detach(), {k: v.grad for k, v in leaves.items()}

    def whole(lv, backend="cuda"):
        return selective_scan_fn(*lv.values(), delta_softplus=True, backend=backend)

    def chained(lv, cut=77):
        a = {k: (v[..., :cut] if k in ("u", "delta", "z", "B", "C") else v) for k, v in lv.items()}
        b = {k: (v[..., cut:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in lv.items()}
        o1, h = selective_scan_fn(*a.values(), delta_softplus=True, return_last_state=True, backend="cuda")
        o2 = selective_scan_fn(*b.values(), delta_softplus=True, initial_state=h, backend="cuda")
        return torch.cat([o1, o2], -1)

    o_w, g_w = grads(whole)
    o_c, g_c = grads(chained)
    o_t, g_t = grads(lambda lv: whole(lv, "torch"))
    torch.testing.assert_close(o_c, o_w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(o_w, o_t, rtol=1e-4, atol=1e-4)
    for k in g_w:
        scale = g_t[k].abs().max().item()
        torch.testing.assert_close(g_c[k], g_w[k], rtol=1e-3, atol=1e-4 * scale, msg=f"d{k} chained")
        torch.testing.assert_close(g_w[k], g_t[k], rtol=1e-3, atol=1e-4 * scale, msg=f"d{k} vs torch")


@gpu
@pytest.mark.parametrize("L", [1, 70], ids=["L1", "L70"])
def test_scan_opcheck_backend_cuda(L):
    """Schema, fake implementation (the chunk-states shape) and autograd registration of the scan op."""
    inp = _public_scan_inputs(2, 4, L, 3, torch.float32, "var", groups=2)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    args = tuple(inp[k] for k in names) + (True, True, True, False, "cuda")
    torch.library.opcheck(torch.ops.m2s2l.selective_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    args = tuple(inp[k].requires_grad_() for k in names) + (True, True, True, False, "cuda")
    torch.library.opcheck(torch.ops.m2s2l.selective_scan_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channel-last"])
def test_public_conv_backend_cuda(layout, dtype):
    """causal_conv1d_fn(..., backend="cuda"): out, final_states and every gradient (final states included)."""
    x, w, b, init = _conv_inputs(3, 12, 21, 4, dtype)
    if layout == "channel-last":
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    g = torch.Generator(device="cuda").manual_seed(4)
    dout = torch.randn(x.shape, generator=g, device="cuda").to(dtype)
    dfin = torch.randn(init.shape, generator=g, device="cuda").to(dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, init)]
    out, fin = causal_conv1d_fn(leaves[0], leaves[1], leaves[2], "silu", leaves[3], True, backend="cuda")
    ((out.float() * dout.float()).sum() + (fin.float() * dfin.float()).sum()).backward()
    ref = [t.detach().double().requires_grad_() for t in (x, w, b, init)]
    ro, rf = causal_conv1d_ref(ref[0], ref[1], ref[2], "silu", ref[3], True)
    ((ro * dout.double()).sum() + (rf * dfin.double()).sum()).backward()
    _close("out", out, ro, dtype)
    _close("final_states", fin, rf, dtype)
    for name, leaf, r in zip(["x", "weight", "bias", "initial_states"], leaves, ref):
        assert leaf.grad.dtype == leaf.dtype, f"d{name} dtype"
        _close(f"d{name}", leaf.grad, r.grad, dtype, 2)


@gpu
def test_conv_opcheck_backend_cuda():
    from m2s2l.ops.causal_conv1d import _fwd
    x = torch.randn(2, 7, 3, device="cuda").transpose(1, 2)
    w, bias = torch.randn(3, 3, device="cuda", requires_grad=True), torch.randn(3, device="cuda")
    init = torch.randn(2, 3, 2, device="cuda")
    torch.library.opcheck(_fwd, (x, w, bias, init, "silu", True, "cuda"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---- dispatch without a GPU or without the extension (run on CPU too) -----------------------------------------

def test_backend_cuda_needs_cuda_tensors():
    u = torch.randn(1, 2, 3)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        selective_scan_fn(u, u, -torch.ones(2, 4), torch.randn(1, 4, 3), torch.randn(1, 4, 3), backend="cuda")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        causal_conv1d_fn(u, torch.randn(2, 4), backend="cuda")


def test_backend_cuda_without_extension(monkeypatch):
    import m2s2l.ops._backend as backend_mod
    monkeypatch.setattr(backend_mod, "cuda_ext", lambda: None)
    monkeypatch.setattr(_cuda, "cuda_ext", lambda: None)
    with pytest.raises(RuntimeError, match="M2S2L_BUILD_CUDA=1"):
        resolve_backend("cuda", torch.device("cuda"))
    with pytest.raises(RuntimeError, match="not built"):
        _cuda.causal_conv1d_fwd(torch.randn(1, 2, 3), torch.randn(2, 4))
    assert resolve_backend("auto", torch.device("cpu")) in ("torch", "triton")


def _can_build_host_extension():
    from torch.utils.cpp_extension import is_ninja_available
    return bool(shutil.which("c++") or shutil.which("g++")) and is_ninja_available()


@pytest.mark.skipif(not _can_build_host_extension(), reason="needs a C++ compiler and ninja (test extra)")
def test_extension_check_macro_formats_and_raises(tmp_path):
    """The extension's M2S2L_CHECK (csrc/ops.h) compiled on the host (no CUDA): the message is built from strings,
    integers, shapes, dtypes and devices without std::ostringstream (which crashed extensions on the H200 box) and
    reaches Python as RuntimeError."""
    from torch.utils.cpp_extension import load_inline
    src = r'''
#include "ops.h"
at::Tensor check3d(const at::Tensor& t, int64_t w) {
  M2S2L_CHECK(t.dim() == 3, "probe: t must be (batch, dim, seqlen) with width ", w, " <= ", 8, ", got ",
              t.sizes(), " ", t.scalar_type(), " on ", t.device(), " ", std::string("end"), " ", true);
  return t;
}'''
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    mod = load_inline("m2s2l_check_macro", cpp_sources=src, functions=["check3d"], build_directory=str(tmp_path),
                      extra_include_paths=[csrc], extra_cflags=["-O0"])
    ok = torch.zeros(1, 2, 3)
    assert mod.check3d(ok, 4) is not None
    with pytest.raises(RuntimeError) as e:
        mod.check3d(torch.zeros(2, 5, dtype=torch.float16), 4)
    assert str(e.value) == "probe: t must be (batch, dim, seqlen) with width 4 <= 8, got [2, 5] Half on cpu end true"
