"""layer_norm (Triton and torch backends) against the float64 reference (naive.py).

Tolerance: max |a - ref| / max(1, max |ref|) per tensor. The reference sees the same (rounded) inputs in float64,
so the error is float32 statistics and accumulation (dweight/dbias sum over up to 300 rows) plus the rounding of
the stored result to its dtype: fp32 2e-5, fp16 2e-3, bf16 1.6e-2 (one bf16 ulp is 2^-8 = 3.9e-3 relative; y and
dx are rounded once, from float32).
torch.empty is NaN-poisoned by tests/conftest.py, so an element of y, dx or of the dweight/dbias partial rows
that a kernel forgot to write shows up as a non-finite value.
"""
import pytest
import torch

from m2s2l.ops import layer_norm
from m2s2l.triton_kernels.layer_norm.naive import layer_norm_ref

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rel_err(a, ref):
    if ref.numel() == 0:
        return 0.0
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0)).item()


def make_x(rows, C, layout, dtype, device):
    """(rows, C) or a 3-D (2, rows, C) view, in the named layout; values with a non-zero mean per row. (The slice
    is taken last: an elementwise op on a sliced tensor would return a contiguous one.)"""
    g = torch.Generator().manual_seed(rows * 1000 + C)
    shape, view = {
        "rowslice": ((2 * rows, C), lambda t: t[::2]),           # every other row: row stride 2C, read in place
        "colslice": ((rows, C + 3), lambda t: t[:, :C]),         # the first C columns: row stride C + 3, in place
        "chanfirst": ((2, C, rows), lambda t: t.transpose(1, 2)),  # unit stride along rows: copied by the op
        "3d": ((2, rows, C), lambda t: t),
        # (2, rows, C) out of (2, rows + 3, C): two row strides (the streaming state's ring), read in place by
        # the forward, copied by the backward
        "window": ((2, rows + 3, C), lambda t: t[:, 2:rows + 2]),
        "window1": ((1, rows + 3, C), lambda t: t[:, 1:rows + 1]),  # one outer row: the single inner stride
    }.get(layout, ((rows, C), lambda t: t))
    base = (3 * torch.randn(*shape, generator=g) + 0.5).to(device=device, dtype=dtype)
    return view(base)


def run(x, weight, bias, eps, backend, dy, out_dtype=None):
    """(y, dx, dweight, dbias) of (y * dy).sum(); the reference ("ref") in float64 from the same inputs."""
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias) if t is not None]
    if backend == "ref":
        leaves = [t.detach().double().requires_grad_() for t in leaves]
    it = iter(leaves)
    xr = next(it)
    wr = next(it) if weight is not None else None
    br = next(it) if bias is not None else None
    if backend == "ref":
        y = layer_norm_ref(xr, wr, br, eps)
    else:
        y = layer_norm(xr, wr, br, eps, backend=backend, out_dtype=out_dtype)
    grads = torch.autograd.grad((y.double() * dy.double()).sum(), leaves)
    return [y] + list(grads)


CASES = [  # rows, C, weight, bias, layout, dtype, parameter dtype ("x" = x's dtype)
    (1, 1, True, True, "contig", "fp32", "x"),
    (7, 5, True, True, "contig", "fp32", "x"),
    (300, 32, True, True, "contig", "fp32", "x"),
    (300, 48, False, False, "contig", "fp32", "x"),
    (300, 130, True, False, "rowslice", "fp32", "x"),
    (7, 256, False, True, "colslice", "fp32", "x"),
    (300, 256, True, True, "3d", "fp32", "x"),
    (300, 48, True, True, "window", "fp32", "x"),
    (7, 5, False, True, "window1", "fp32", "x"),
    (7, 32, True, True, "chanfirst", "fp32", "x"),
    (300, 1, True, True, "contig", "fp16", "x"),
    (7, 48, True, True, "colslice", "fp16", "x"),
    (300, 130, True, True, "contig", "fp16", "fp32"),
    (1, 256, True, True, "contig", "bf16", "x"),
    (300, 5, True, True, "rowslice", "bf16", "fp32"),
    (300, 32, True, True, "chanfirst", "bf16", "fp32"),
    (7, 130, False, True, "3d", "bf16", "x"),
    (300, 64, True, True, "window", "bf16", "fp32"),
    (7, 3, True, False, "window", "fp16", "x"),
    (300, 256, True, False, "contig", "bf16", "fp32"),
]


def case_id(c):
    rows, C, w, b, layout, dt, pdt = c
    return f"R{rows}-C{C}{'-w' if w else ''}{'-b' if b else ''}-{layout}-{dt}-p{pdt}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_layer_norm_matches_reference(case, device):
    rows, C, has_w, has_b, layout, dt, pdt = case
    dtype = DT[dt]
    pdtype = dtype if pdt == "x" else DT[pdt]
    x = make_x(rows, C, layout, dtype, device)
    g = torch.Generator().manual_seed(C)
    weight = (1 + 0.5 * torch.randn(C, generator=g)).to(device, pdtype) if has_w else None
    bias = torch.randn(C, generator=g).to(device, pdtype) if has_b else None
    dy = torch.randn(x.shape, generator=g).to(device, dtype)
    got = run(x, weight, bias, 1e-5, "triton", dy)
    ref = run(x, weight, bias, 1e-5, "ref", dy)
    names = ["y", "dx"] + (["dweight"] if has_w else []) + (["dbias"] if has_b else [])
    for name, a, r in zip(names, got, ref):
        assert a.shape == r.shape, name
        assert torch.isfinite(a).all(), f"{name} has non-finite values (unwritten output?)"
        assert rel_err(a, r) <= TOL[dtype], f"{name}: rel err {rel_err(a, r):.2e} > {TOL[dtype]}"
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert all(t.dtype == pdtype for t in got[2:])  # dweight/dbias in the parameter's dtype
    if C > 1:  # the op is a LayerNorm, not just close to the oracle: zero mean, unit variance before the affine
        y0 = layer_norm(x.float(), eps=1e-12, backend="triton")
        torch.testing.assert_close(y0.mean(-1), torch.zeros_like(y0[..., 0]), rtol=0, atol=1e-5)
        torch.testing.assert_close(y0.var(-1, unbiased=False), torch.ones_like(y0[..., 0]), rtol=0, atol=1e-4)


def test_nan_poisoning_is_active():
    assert torch.empty(4).isnan().all() and torch.empty_like(torch.zeros(2)).isnan().all()


def test_in_place_layouts_are_not_copied(device):
    """The forward's (_rows3d) and the backward's (_rows2d) views of x: in place where the strides allow, else a
    contiguous copy."""
    from m2s2l.triton_kernels.layer_norm.layer_norm import _rows2d, _rows3d
    for layout in ("contig", "rowslice", "colslice", "3d", "window", "window1"):
        x = make_x(6, 8, layout, torch.float32, device)
        x3, n_inner = _rows3d(x)
        assert x3.data_ptr() == x.data_ptr() and x3.stride(2) == 1 and x3.shape[0] * n_inner == x.numel() // 8
        assert n_inner == (6 if layout == "window" else x.numel() // 8), layout
        x2 = _rows2d(x)
        if layout == "window":
            assert x2.is_contiguous()
        else:
            assert x2.data_ptr() == x.data_ptr() and x2.stride(1) == 1, layout
    x = make_x(6, 8, "chanfirst", torch.float32, device)
    assert _rows2d(x).is_contiguous() and _rows3d(x)[0].is_contiguous()


@pytest.mark.parametrize("dt", ["bf16", "fp16"])
def test_float32_output_matches_upcast_input(dt, device):
    """out_dtype=float32 with a half x (nn.LayerNorm under CUDA autocast) equals LayerNorm of x.float(), both
    backends; gradients come back in x's dtype."""
    dtype = DT[dt]
    x = make_x(7, 48, "contig", dtype, device)
    w, b = torch.randn(48, device=device), torch.randn(48, device=device)
    dy = torch.randn(x.shape, device=device)
    ref = run(x.float(), w, b, 1e-5, "ref", dy)
    for backend in ("triton", "torch"):
        got = run(x, w, b, 1e-5, backend, dy, out_dtype=torch.float32)
        assert got[0].dtype == torch.float32 and got[1].dtype == dtype
        assert rel_err(got[0], ref[0]) <= TOL[torch.float32], backend
        assert rel_err(got[1], ref[1]) <= TOL[dtype] and rel_err(got[2], ref[2]) <= TOL[torch.float32], backend


def test_torch_backend_and_auto(device):
    x = make_x(7, 130, "colslice", torch.float32, device)
    w, b = torch.randn(130, device=device), torch.randn(130, device=device)
    ref = torch.nn.functional.layer_norm(x, (130,), w, b, 1e-5)
    torch.testing.assert_close(layer_norm(x, w, b, backend="torch"), ref, rtol=0, atol=0)
    torch.testing.assert_close(layer_norm(x, w, b, backend="triton"), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer_norm(x, w, b, backend="cuda"), ref, rtol=1e-5, atol=1e-5)  # = auto
    wide = torch.randn(2, 16385, device=device)  # wider than the kernel takes: auto falls back to F.layer_norm
    torch.testing.assert_close(layer_norm(wide), torch.nn.functional.layer_norm(wide, (16385,)), rtol=0, atol=0)
    empty = torch.randn(0, 3, 32, device=device, requires_grad=True)
    y = layer_norm(empty, torch.ones(32, device=device, requires_grad=True), backend="triton")
    assert y.shape == (0, 3, 32)


def test_deterministic_backward(device, monkeypatch):
    """Several programs, each looping over row tiles (the last loop partly past the rows), write dweight/dbias
    partial rows that torch sums: identical bits on a rerun."""
    import m2s2l.triton_kernels.layer_norm.layer_norm as ln
    monkeypatch.setattr(ln, "_CFG", dict(bwd_tile=256, bwd_progs=3))  # 300 rows of C=32: 38 tiles, 3 programs
    x = make_x(300, 32, "contig", torch.float32, device)
    w, b = torch.randn(32, device=device), torch.randn(32, device=device)
    dy = torch.randn(x.shape, device=device)
    first = run(x, w, b, 1e-5, "triton", dy)
    ref = run(x, w, b, 1e-5, "ref", dy)
    for a, r in zip(first, ref):
        assert rel_err(a, r) <= TOL[torch.float32]
    for a, c in zip(first, run(x, w, b, 1e-5, "triton", dy)):
        assert torch.equal(a, c)


def test_custom_op_registration(device):
    """Schema, fake implementation and autograd registration of m2s2l::layer_norm_fwd (the tracers' route)."""
    from m2s2l.ops.layer_norm import _fwd
    x = torch.randn(5, 3, 24, device=device)[:, 1]  # (5, 24) with row stride 72
    w, b = torch.randn(24, device=device, requires_grad=True), torch.randn(24, device=device)
    torch.library.opcheck(_fwd, (x, w, b, 1e-5, None),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    torch.library.opcheck(_fwd, (x.to(torch.bfloat16), None, None, 1e-6, torch.float32),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs_name_the_argument(device):
    x = torch.randn(4, 8, device=device)
    with pytest.raises(TypeError, match="x"):
        layer_norm(x.cpu().numpy())
    with pytest.raises(TypeError, match="x"):
        layer_norm(x.double())
    with pytest.raises(ValueError, match="x"):
        layer_norm(torch.tensor(1.0, device=device))
    with pytest.raises(ValueError, match="x"):
        layer_norm(torch.randn(4, 0, device=device))
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(8\)"):
        layer_norm(x, torch.randn(7, device=device))
    with pytest.raises(TypeError, match="weight"):
        layer_norm(x, torch.ones(8, device=device, dtype=torch.int32))
    with pytest.raises(ValueError, match="bias"):
        layer_norm(x, None, torch.randn(8, 1, device=device))
    for eps in (-1e-5, float("nan"), float("inf"), "1e-5", True):
        with pytest.raises(ValueError, match="eps"):
            layer_norm(x, eps=eps)
    with pytest.raises(ValueError, match="backend"):
        layer_norm(x, backend="cudnn")
    with pytest.raises(TypeError, match="out_dtype"):
        layer_norm(x, out_dtype=torch.int8)
    with pytest.raises(ValueError, match="16384"):
        layer_norm(torch.randn(1, 16385, device=device), backend="triton")


def test_speed_bench_smoke(tmp_path, device):
    """bench/layer_norm_speed.py runs end to end (--small) and writes its JSON: on CPU with Triton interpreted, on
    the GPU (M2S2L_TEST_GPU=1, no interpreter) with CUDA tensors."""
    import importlib.util
    import json
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "layer_norm_speed.py")
    spec = importlib.util.spec_from_file_location("layer_norm_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ln.json"
    rows = bench.main(["--device", str(device), "--backend", "triton", "--small", "--json", str(out)])
    impls = 4 if device.type == "cuda" else 2  # bf16 on CUDA adds the float32-output pair (autocast)
    assert len(rows) == 4 * 2 * impls and json.load(open(out))["rows"] == json.loads(json.dumps(rows))
    assert all(r["ms_p50"] > 0 and r["vs_peer"] > 0 for r in rows)
