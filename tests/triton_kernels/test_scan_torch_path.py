"""The fast plain-PyTorch scan (``torch_scan.selective_scan_torch``, the "torch" backend) against the reference loop
``naive.selective_scan_ref``: outputs, last state and every gradient (loss (out*do).sum() + (last*dlast).sum()).

Tolerances (max abs/rel): float64 inputs 1e-12, float32 1e-5. Both the no-grad path (chunked, in place; chunks
forced small here so a batch spans several, the last one partial) and the autograd path are covered.
"""
import pytest
import torch

from m2s2l.ops import selective_scan_fn
from m2s2l.triton_kernels.selective_scan import torch_scan
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref
from m2s2l.triton_kernels.selective_scan.torch_scan import selective_scan_torch

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def make(batch, dim, N, L, bform, cform, G=1, dtype=torch.float64, opt=True, h0=True, noncontig=False, seed=0):
    """bform/cform: "fixed" (dim, N), "3d" (batch, N, L) or "4d" (batch, G, N, L)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    def seq(*lead):  # (*lead, L), optionally a strided view of a bigger (*lead, 2L+1) tensor
        return rnd(*lead, 2 * L + 1)[..., 1::2] if noncontig else rnd(*lead, L)

    def bc(form):
        if form == "fixed":
            return rnd(dim, N)
        if form == "3d":
            return rnd(batch, L, N).transpose(1, 2) if noncontig else rnd(batch, N, L)
        return seq(batch, G, N)
    u = rnd(batch, L, dim).transpose(1, 2) if noncontig else rnd(batch, dim, L)
    return dict(u=u, delta=seq(batch, dim) * 0.5, A=-(0.2 + rnd(dim, N).abs()), B=bc(bform), C=bc(cform),
                D=rnd(dim) if opt else None, z=seq(batch, dim) if opt else None,
                delta_bias=rnd(dim, scale=0.3) if opt else None,
                initial_state=rnd(batch, dim, N) if h0 else None)


def run(fn, inp, softplus, grad):
    """(out, last, grads by name) of fn; grads only when ``grad``."""
    leaves = {k: (v.detach().clone().requires_grad_(grad) if v is not None else None) for k, v in inp.items()}
    with torch.set_grad_enabled(grad):
        out, last = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                       leaves["z"], leaves["delta_bias"], softplus, True, leaves["initial_state"])
    if not grad:
        return out, last, {}
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    dlast = torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last.dtype)
    ((out * do).sum() + (last * dlast).sum()).backward()
    return out, last, {k: v.grad for k, v in leaves.items() if v is not None}


def check(inp, softplus=True, grad=True):
    tol = TOL[inp["u"].dtype]
    ref = run(selective_scan_ref, inp, softplus, grad)
    fast = run(selective_scan_torch, inp, softplus, grad)
    assert fast[0].dtype == inp["u"].dtype and fast[0].is_contiguous()
    torch.testing.assert_close(fast[0], ref[0], rtol=tol, atol=tol, msg=lambda m: f"out: {m}")
    torch.testing.assert_close(fast[1], ref[1], rtol=tol, atol=tol, msg=lambda m: f"last_state: {m}")
    assert set(fast[2]) == set(ref[2])
    for k in ref[2]:
        torch.testing.assert_close(fast[2][k], ref[2][k], rtol=tol, atol=tol, msg=lambda m: f"d{k}: {m}")


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 2 batch rows at dim * N = 30 (the no-grad path then splits batch 5 into 2 + 2 + 1)."""
    monkeypatch.setattr(torch_scan, "_CHUNK_ELEMS", 60)


FORMS = [("fixed", "fixed"), ("3d", "3d"), ("4d", "4d"), ("fixed", "3d"), ("3d", "fixed"), ("4d", "fixed"),
         ("fixed", "4d"), ("3d", "4d"), ("4d", "3d")]


@pytest.mark.parametrize("bform,cform", FORMS, ids=[f"B{b}-C{c}" for b, c in FORMS])
@pytest.mark.parametrize("G", [1, 3])
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_forms_float64(bform, cform, G, grad, small_chunks):
    check(make(5, 6, 5, 7, bform, cform, G=G), grad=grad)


@pytest.mark.parametrize("L", [1, 2, 13])
@pytest.mark.parametrize("h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_lengths_initial_state(L, h0, grad, small_chunks):
    check(make(5, 6, 3, L, "4d", "4d", G=2, h0=h0), grad=grad)


@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("opt", [False, True], ids=["no-D-z-bias", "D-z-bias"])
def test_optional_inputs(softplus, opt, small_chunks):
    inp = make(3, 4, 2, 5, "3d", "4d", G=2, opt=opt)
    if not softplus:
        inp["delta"] = inp["delta"].abs()
    check(inp, softplus=softplus)
    check(inp, softplus=softplus, grad=False)


@pytest.mark.parametrize("bform", ["fixed", "3d", "4d"])
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_noncontiguous(bform, grad, small_chunks):
    check(make(5, 6, 5, 4, bform, "4d", G=3, noncontig=True), grad=grad)


@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_float32_odd_sizes(grad):
    inp = make(3, 10, 7, 9, "4d", "4d", G=5, dtype=torch.float32)
    for k in ("A", "D", "delta_bias", "initial_state"):
        inp[k] = inp[k].float()
    check(inp, grad=grad)


def test_inputs_not_modified_and_no_last_state(small_chunks):
    inp = make(5, 4, 1, 3, "4d", "4d", G=4)  # dstate 1 and dim // groups 1: every view of h0 is contiguous
    before = {k: v.clone() for k, v in inp.items() if v is not None}
    with torch.no_grad():
        out = selective_scan_torch(*[inp[k] for k in NAMES[:8]], True, False, inp["initial_state"])
    assert isinstance(out, torch.Tensor)
    ref = selective_scan_ref(*[inp[k] for k in NAMES[:8]], True, False, inp["initial_state"])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for k, v in before.items():
        assert torch.equal(inp[k], v), f"{k} was modified"


def test_public_torch_backend_matches_reference():
    """selective_scan_fn(backend="torch"): forward op and its autograd-recompute backward op."""
    inp = make(4, 8, 4, 6, "4d", "4d", G=2, dtype=torch.float32)
    for k in ("A", "D", "delta_bias", "initial_state"):
        inp[k] = inp[k].float()

    def public(u, delta, A, B, C, D, z, delta_bias, softplus, last, h0):
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, softplus, last, initial_state=h0,
                                 backend="torch")
    ref = run(selective_scan_ref, inp, True, True)
    got = run(public, inp, True, True)
    for a, b in zip(got[:2], ref[:2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for k in ref[2]:
        torch.testing.assert_close(got[2][k], ref[2][k], rtol=1e-5, atol=1e-5, msg=lambda m: f"d{k}: {m}")
