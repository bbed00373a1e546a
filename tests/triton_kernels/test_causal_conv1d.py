"""causal_conv1d_fn (Triton and torch backends) against the float64 reference (F.conv1d oracle).

Tolerance: max |a - ref| / max(1, max |ref|) per tensor. The reference sees the same (rounded) inputs in
float64, so the error is float32 accumulation plus rounding of the stored result to the output dtype:
fp32 2e-5, fp16 2e-3, bf16 1.6e-2 (one bf16 ulp is 2^-8 = 3.9e-3 relative; sums of a few terms).
"""
import pytest
import torch

from m2s2l.ops import causal_conv1d_fn
from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_ref

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rel_err(a, ref):
    if ref.numel() == 0:
        return 0.0
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0)).item()


def make_x(batch, dim, L, layout, dtype, device):
    if layout == "chanlast":
        return torch.randn(batch, L, dim, device=device).to(dtype).transpose(1, 2)
    if layout == "sliced":
        return torch.randn(batch, dim + 3, 2 * L, device=device).to(dtype)[:, 1:dim + 1, ::2]
    return torch.randn(batch, dim, L, device=device).to(dtype)


def run(x, w, bias, act, init, backend, do, dfin):
    """Forward with final states, then grads of (out*do).sum() + (final*dfin).sum()."""
    leaves = [t.detach().requires_grad_() for t in (x, w, bias, init) if t is not None]
    it = iter(leaves)
    xr, wr = next(it), next(it)
    br = next(it) if bias is not None else None
    ir = next(it) if init is not None else None
    if backend == "ref":
        leaves = [t.detach().double().requires_grad_() for t in leaves]
        it = iter(leaves)
        xr, wr = next(it), next(it)
        br = next(it) if bias is not None else None
        ir = next(it) if init is not None else None
        out, fin = causal_conv1d_ref(xr, wr, br, act, ir, True)
    else:
        out, fin = causal_conv1d_fn(xr, wr, br, act, ir, True, backend=backend)
    loss = (out.double() * do.double()).sum() + (fin.double() * dfin.double()).sum()
    return [out, fin] + list(torch.autograd.grad(loss, leaves))


CASES = [  # batch, dim, seqlen, width, activation, bias, init, layout, dtype
    (2, 5, 1, 4, "silu", True, True, "contig", "fp32"),
    (2, 6, 2, 1, None, True, False, "contig", "fp32"),
    (1, 3, 3, 5, "silu", False, True, "sliced", "fp32"),
    (2, 5, 129, 2, "silu", True, False, "chanlast", "fp32"),
    (3, 7, 151, 3, None, True, True, "chanlast", "bf16"),
    (1, 3, 100, 8, "silu", True, True, "contig", "fp16"),
    (3, 6, 20, 4, "silu", True, True, "sliced", "bf16"),  # several batch blocks: in-program loop
    (2, 3, 9, 13, None, True, True, "contig", "fp32"),
]


def case_id(c):
    b, d, L, w, act, bias, init, layout, dt = c
    return f"B{b}-D{d}-L{L}-W{w}-{act or 'id'}{'-bias' if bias else ''}{'-init' if init else ''}-{layout}-{dt}"


def check_case(case, device):
    batch, dim, L, width, act, has_bias, has_init, layout, dt = case
    dtype = DT[dt]
    torch.manual_seed(0)
    x = make_x(batch, dim, L, layout, dtype, device)
    w = torch.randn(dim, width, device=device) / width ** 0.5
    bias = torch.randn(dim, device=device) if has_bias else None
    init = torch.randn(batch, dim, width - 1, device=device).to(dtype) if has_init else None
    do = torch.randn(batch, dim, L, device=device).to(dtype)
    dfin = torch.randn(batch, dim, width - 1, device=device).to(dtype)
    got = run(x, w, bias, act, init, "triton", do, dfin)
    ref = run(x, w, bias, act, init, "ref", do, dfin)
    names = ["out", "final_states", "dx", "dweight", "dbias", "dinitial_states"]
    names = [n for n in names if (n != "dbias" or has_bias) and (n != "dinitial_states" or has_init)]
    for name, a, r in zip(names, got, ref):
        assert a.shape == r.shape, name
        assert torch.isfinite(a).all(), f"{name} has non-finite values (unwritten output?)"
        assert rel_err(a, r) <= TOL[dtype], f"{name}: rel err {rel_err(a, r):.2e} > {TOL[dtype]}"
    assert got[0].dtype == dtype and got[3].dtype == torch.float32  # out in x's dtype, dweight in weight's
    if layout == "chanlast":
        assert got[0].stride(1) == 1 and got[2].stride(1) == 1  # channel-last in -> channel-last out/dx


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_conv_matches_reference(case, device):
    check_case(case, device)


# Long path (unit time stride, rows of V steps, halo rebuilt in registers): small blocks force many time tiles,
# so tile edges, the initial states (first tile), d final_states spread over two tiles and lengths that are not
# multiples of V or of the block are all crossed; bwd_t_iters groups tiles per backward program (with a group
# running past the end); width V + 1 puts the last tap in its own accumulator; long=1 also runs the path on
# channel-last and strided-time inputs.
LONG_CASES = [  # case, M2S2L_CONV_CFG overrides
    ((1, 3, 150, 4, "silu", True, True, "contig", "bf16"),
     dict(fwd_block_l=64, bwd_block_l=32, fwd_block_d=4, bwd_t_iters=2)),
    ((1, 2, 67, 9, None, True, True, "contig", "fp32"),
     dict(fwd_block_l=16, bwd_block_l=32, bwd_t_iters=1)),  # V = W-1 = 8
    ((1, 3, 41, 4, "silu", True, True, "contig", "fp32"), dict(long=1, fwd_block_l=16, bwd_block_l=4, bwd_t_iters=3)),
    ((2, 6, 90, 3, "silu", False, True, "chanlast", "fp16"), dict(long=1, fwd_block_l=32, bwd_block_l=32)),
    ((2, 3, 70, 2, "silu", True, False, "sliced", "fp32"), dict(long=1, bwd_block_l=16, bwd_block_d=2)),
    ((2, 3, 2, 5, "silu", True, True, "contig", "fp32"), dict(long=1)),  # L < width - 1: final from init
    ((2, 4, 9, 1, None, True, True, "contig", "fp32"), dict(long=1, fwd_block_l=4, bwd_block_l=4)),
]


@pytest.mark.parametrize("case,cfg", LONG_CASES, ids=[case_id(c) for c, _ in LONG_CASES])
def test_long_path_matches_reference(case, cfg, device, monkeypatch):
    import m2s2l.triton_kernels.causal_conv1d.conv as conv
    monkeypatch.setattr(conv, "_CFG", dict(cfg))
    calls = []
    for name in ("_conv_fwd_long_kernel", "_conv_bwd_long_kernel"):
        kern = getattr(conv, name)
        monkeypatch.setattr(conv, name, type("Spy", (), {"__getitem__": lambda self, g, _k=kern, _n=name:
                                                         calls.append(_n) or _k[g]})())
    check_case(case, device)
    assert calls == ["_conv_fwd_long_kernel", "_conv_bwd_long_kernel"]  # both directions took the long path


def test_tile_blocks_are_powers_of_two(monkeypatch):
    """Triton's arange needs power-of-two blocks; tile budgets such as 1024 // width are not (width 3: 341)."""
    import m2s2l.triton_kernels.causal_conv1d.conv as conv
    monkeypatch.setattr(conv, "_CFG", {})
    for shape in [(5, 48, 7), (262144, 64, 4), (3, 100, 300), (1, 1, 1)]:
        for tile in [max(128, 1024 // w) for w in range(1, 14)] + [2048, 341, 100]:
            blocks = conv._tiles(torch.empty(shape, device="meta"), tile)
            assert all(b >= 1 and b & (b - 1) == 0 for b in blocks), (shape, tile, blocks)


def test_path_choice(monkeypatch):
    import m2s2l.triton_kernels.causal_conv1d.conv as conv
    monkeypatch.setattr(conv, "_CFG", {})
    assert conv._use_long(torch.empty(8, 16, 2048))  # contiguous, long: vector rows
    assert not conv._use_long(torch.empty(16, 16, 8))  # video shape: the tile kernel
    assert not conv._use_long(torch.empty(8, 2048, 16).transpose(1, 2))  # channel-last: the tile kernel
    monkeypatch.setattr(conv, "_CFG", dict(long_min_len=8))
    assert conv._use_long(torch.empty(16, 16, 8))
    monkeypatch.setattr(conv, "_CFG", dict(fwd_block_l=48, vec=2))  # rounded to powers of two, V >= width - 1
    bd, bq, V, warps, n, n_t, n_d = conv._long_blocks(torch.empty(2, 3, 100), 5, "fwd")
    assert (V, bq * V, n_t, n) == (4, 64, 2, 2 * n_d * 2)


def test_chunked_equals_whole_and_deterministic(device):
    torch.manual_seed(1)
    x = torch.randn(3, 6, 40, device=device)
    w, bias = torch.randn(6, 4, device=device), torch.randn(6, device=device)
    whole, fin = causal_conv1d_fn(x, w, bias, "silu", return_final_states=True, backend="triton")
    outs, state = [], None
    for lo, hi in ((0, 2), (2, 17), (17, 40)):  # first chunk shorter than width - 1
        o, state = causal_conv1d_fn(x[..., lo:hi], w, bias, "silu", initial_states=state,
                                    return_final_states=True, backend="triton")
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, -1), whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, fin, rtol=0, atol=0)
    # Deterministic: a multi-program backward (many partial rows for dweight) gives identical bits twice.
    xb = torch.randn(3, 6, 150, device=device)
    w, bias = w[:, :2], bias

    def grads():
        leaves = [t.clone().requires_grad_() for t in (xb, w, bias)]
        out = causal_conv1d_fn(*leaves, "silu", backend="triton")
        return torch.autograd.grad((out * out).sum(), leaves)
    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


def test_torch_backend_matches_triton(device):
    torch.manual_seed(2)
    x = torch.randn(2, 5, 11, device=device).to(torch.bfloat16)
    w, bias = torch.randn(5, 3, device=device), torch.randn(5, device=device)  # fp32 weights, bf16 x
    init = torch.randn(2, 5, 2, device=device).to(torch.bfloat16)
    do, dfin = torch.randn_like(x), torch.randn_like(init)
    a = run(x, w, bias, "silu", init, "triton", do, dfin)
    b = run(x, w, bias, "silu", init, "torch", do, dfin)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and rel_err(u, v) <= TOL[torch.bfloat16]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_custom_op_registration(backend, device):
    """Schema, fake (shapes/strides), autograd registration of m2s2l::causal_conv1d_fwd."""
    from m2s2l.ops.causal_conv1d import _fwd
    x = torch.randn(2, 7, 3, device=device).transpose(1, 2)  # channel-last (2, 3, 7)
    w, bias = torch.randn(3, 3, device=device, requires_grad=True), torch.randn(3, device=device)
    init = torch.randn(2, 3, 2, device=device)
    torch.library.opcheck(_fwd, (x, w, bias, init, "silu", True, backend),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_bad_inputs_name_the_argument(device):
    x, w = torch.randn(2, 4, 8, device=device), torch.randn(4, 3, device=device)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_fn(x, torch.randn(4, 0, device=device))  # width < 1
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_fn(x, torch.randn(5, 3, device=device))
    with pytest.raises(ValueError, match="x"):
        causal_conv1d_fn(x[0], w)
    with pytest.raises(ValueError, match=r"initial_states.*\(batch, dim, width - 1\)"):
        causal_conv1d_fn(x, w, initial_states=torch.randn(2, 4, 3, device=device))
    with pytest.raises(TypeError, match="initial_states"):
        causal_conv1d_fn(x, w, initial_states=torch.randn(2, 4, 2, device=device, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias"):
        causal_conv1d_fn(x, w, bias=torch.randn(3, device=device))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_fn(x, w, activation="relu")
    with pytest.raises(TypeError, match="x"):
        causal_conv1d_fn(x.long(), w)
