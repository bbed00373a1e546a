"""Selective scan: Triton kernels (interpreted on CPU, compiled on GPU) against the float64 reference.

Error metric: relative RMS error ||x - ref|| / ||ref|| of each output and gradient, reference computed in float64 on
the same (already rounded) inputs. Tolerances (documented in docs and the public docstring's dtype rules):

    dtype     out / last_state   gradients
    float32   2e-5               5e-5
    float16   2e-3               5e-3
    bfloat16  1.5e-2             3e-2
"""
import pytest
import torch

from m2s2l.ops import selective_scan_fn
from m2s2l.triton_kernels.selective_scan import scan, scan_config
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref

DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {"fp32": (2e-5, 5e-5), "fp16": (2e-3, 5e-3), "bf16": (1.5e-2, 3e-2)}
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


def rel_rms(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make_inputs(batch, dim, L, N, bc="g1", dtype="fp32", z=True, D=True, bias=True, h0=True, device="cpu",
                seed=0, noncontig=False):
    """bc: "fixed" (dim, N) B and C; "3d" (batch, N, L); "gK" (batch, K, N, L); "mixed" fixed B, 3-D C."""
    gen = torch.Generator().manual_seed(seed)
    dt = DT[dtype]

    def rnd(*shape, scale=1.0, shift=0.0, dtype=dt):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device=device, dtype=dtype)

    if noncontig:  # channel-last u, strided delta, sliced z: views of bigger tensors
        u = rnd(batch, L, dim).transpose(1, 2)
        delta = rnd(batch, dim, 2 * L, scale=0.3, shift=0.4).abs()[..., ::2]
    else:  # positive, so that exp(delta * A) <= 1 also without softplus
        u, delta = rnd(batch, dim, L), rnd(batch, dim, L, scale=0.3, shift=0.4).abs()
    A = -(0.5 + torch.rand(dim, N, generator=gen)).to(device)

    def bc_tensor():
        if bc == "fixed":
            return rnd(dim, N, dtype=torch.float32)
        if bc == "3d":
            return rnd(batch, N, L)
        G = int(bc[1:])
        if noncontig:
            return rnd(batch, G, L, N).transpose(-1, -2)
        return rnd(batch, G, N, L)
    if bc == "mixed":
        B, C = rnd(dim, N, dtype=torch.float32), rnd(batch, N, L)
    else:
        B, C = bc_tensor(), bc_tensor()
    zz = (rnd(batch, dim, L + 3)[..., 3:] if noncontig else rnd(batch, dim, L)) if z else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=rnd(dim, dtype=torch.float32) if D else None, z=zz,
                delta_bias=rnd(dim, scale=0.3, dtype=torch.float32) if bias else None,
                initial_state=rnd(batch, dim, N, dtype=torch.float32) if h0 else None)


def run(ins, softplus, backend, dout, dlast, double=False):
    """out, last and the gradient of (out*dout).sum() + (last*dlast).sum() w.r.t. every given input."""
    xs = {k: (v.detach().double() if double else v.detach().clone()).requires_grad_() if v is not None else None
          for k, v in ins.items()}
    a = dict(D=xs["D"], z=xs["z"], delta_bias=xs["delta_bias"], delta_softplus=softplus, return_last_state=True)
    if double:
        out, last = selective_scan_ref(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], **a,
                                       initial_state=xs["initial_state"])
    else:
        out, last = selective_scan_fn(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], **a,
                                      initial_state=xs["initial_state"], backend=backend)
    loss = (out * dout.to(out.dtype)).double().sum() + (last.double() * dlast.double()).sum()
    names = [k for k in NAMES if xs[k] is not None]
    grads = torch.autograd.grad(loss, [xs[k] for k in names])
    return out, last, dict(zip(names, grads))


def check(ins, dtype, softplus=True, backend="triton"):
    batch, dim, L = ins["u"].shape
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(batch, dim, L, generator=gen).to(ins["u"].device)
    dlast = torch.randn(batch, dim, ins["A"].shape[1], generator=gen).to(ins["u"].device)
    out, last, g = run(ins, softplus, backend, dout, dlast)
    rout, rlast, rg = run(ins, softplus, None, dout, dlast, double=True)
    tol_o, tol_g = TOL[dtype]
    assert out.dtype == ins["u"].dtype and last.dtype == torch.float32
    assert out.shape == (batch, dim, L) and last.shape == (batch, dim, ins["A"].shape[1])
    errs = {"out": rel_rms(out, rout), "last": rel_rms(last, rlast)}
    assert max(errs.values()) < tol_o, errs
    for k in rg:
        assert g[k].shape == ins[k].shape and g[k].dtype == ins[k].dtype, k
        errs[k] = rel_rms(g[k], rg[k])
    assert max(errs.values()) < tol_g, errs


# (batch, dim, L, N, bc, dtype, z, D, bias, h0, softplus) — a covering set of the odd shapes and options
CASES = [
    (1, 5, 1, 1, "fixed", "fp32", True, True, True, True, True),
    (2, 24, 7, 4, "g2", "fp32", True, True, True, True, True),
    (1, 24, 129, 16, "g4", "fp32", False, True, False, False, False),
    (1, 130, 129, 4, "g2", "fp32", True, False, True, True, True),
    (1, 5, 300, 16, "g1", "fp32", True, True, True, True, True),
    (2, 5, 129, 4, "3d", "fp32", True, True, False, True, True),
    (2, 24, 7, 16, "mixed", "fp32", False, False, True, False, True),
    (3, 5, 33, 1, "fixed", "fp32", True, True, True, False, False),
    (1, 3, 9, 40, "g1", "fp32", True, True, True, True, True),
    (1, 2, 5, 256, "3d", "fp32", True, True, True, True, True),
    (2, 24, 40, 16, "g2", "fp16", True, True, True, True, True),
    (2, 24, 40, 16, "g2", "bf16", True, True, True, True, True),
    (2, 130, 7, 4, "fixed", "bf16", True, True, True, True, True),
    (1, 300, 7, 4, "g1", "fp32", True, True, True, True, True),  # > 256 channels a group: atomic dB/dC path
]


def case_id(c):
    b, d, L, n, bc, dt, z, D, bias, h0, sp = c
    flags = "".join(f for f, on in (("z", z), ("D", D), ("b", bias), ("h", h0), ("s", sp)) if on)
    return f"B{b}-D{d}-L{L}-N{n}-{bc}-{dt}-{flags or 'plain'}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_against_reference(case, device):
    b, d, L, n, bc, dt, z, D, bias, h0, sp = case
    check(make_inputs(b, d, L, n, bc, dt, z, D, bias, h0, device=device), dt, softplus=sp)


@pytest.mark.parametrize("bc", ["g2", "fixed"])
def test_noncontiguous(bc, device):
    ins = make_inputs(2, 24, 37, 4, bc, noncontig=True, device=device)
    assert not ins["u"].is_contiguous() and not ins["delta"].is_contiguous() and not ins["z"].is_contiguous()
    check(ins, "fp32")


# ---- short sequences: the sequential backward (persistent, scratch) and the chunked one ---------------------

class _Spy:
    """Counts launches of a Triton kernel, keeps their arguments and forwards them."""

    def __init__(self, kernel):
        self.kernel, self.launches, self.calls = kernel, 0, []

    def __getitem__(self, grid):
        self.launches += 1
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.calls.append((args, kwargs))
            return launch(*args, **kwargs)
        return run

    def arg(self, name, call=-1):
        """Argument ``name`` of launch ``call`` (by the kernel's signature)."""
        import inspect
        args, kwargs = self.calls[call]
        names = list(inspect.signature(self.kernel.fn).parameters)
        return kwargs[name] if name in kwargs else args[names.index(name)]


@pytest.fixture
def spies(monkeypatch):
    s = {n: _Spy(getattr(scan, n)) for n in ("_fwd_kernel", "_fwd_seq_kernel", "_bwd_kernel", "_bwd_seq_kernel",
                                             "_fwd_tile_kernel", "_bwd_tile_kernel", "_fwd_last_kernel")}
    for n, spy in s.items():
        monkeypatch.setattr(scan, n, spy)
    return s


# (batch, dim, L, N, bc, dtype, noncontig, h0, M2S2L_SCAN_CFG overrides) — z, D, delta_bias, softplus and dlast on
SEQ_CASES = [
    (2, 6, 1, 4, "g2", "fp32", False, True, {}),
    (2, 5, 2, 17, "g1", "fp32", False, True, {}),
    (1, 4, 31, 4, "3d", "fp32", False, False, {}),
    (1, 4, 31, 4, "3d", "fp32", False, False, dict(tile_bwd=0)),  # _bwd_seq_kernel at a length it no longer gets
    (1, 4, 32, 16, "g1", "fp32", False, True, {}),
    (1, 4, 33, 4, "g1", "fp32", False, True, {}),  # past the switch: chunked both ways
    (1, 3, 5, 64, "g1", "fp32", False, True, {}),
    (2, 6, 6, 1, "fixed", "fp32", False, True, {}),
    (2, 6, 6, 4, "mixed", "fp32", False, True, {}),
    (2, 8, 7, 4, "g2", "fp32", True, True, {}),
    (2, 8, 9, 16, "g2", "bf16", False, True, {}),
    (2, 8, 9, 16, "g2", "fp16", False, True, {}),
    (2, 5, 4, 4, "g1", "fp32", False, True, dict(seq_bwd_block_d=2)),  # 3 blocks a group: atomic dB/dC
    (2, 5, 4, 4, "fixed", "fp32", False, True, dict(seq_bwd_block_d=2)),
    (3, 4, 4, 4, "g2", "fp32", False, True, dict(seq_bwd_programs=2)),  # 2 programs, 3 rows each
    (5, 6, 4, 4, "g1", "fp32", True, True, dict(seq_bwd_block_d=4, seq_bwd_programs=1)),
    (2, 8, 7, 4, "g2", "fp32", True, True, dict(seq=0)),  # chunked both ways on a short sequence
    (2, 6, 20, 17, "fixed", "fp32", False, True, dict(seq=0)),
    (2, 8, 9, 16, "g2", "bf16", False, True, dict(seq=0)),
    (2, 6, 5, 4, "g1", "fp32", False, True, dict(seq_bwd=0)),  # sequential forward, chunked backward
    # the tiled kernels forced on whole short sequences: ragged 4-step tiles saving the chunked backward's states;
    # 2-step backward tiles, bf16
    (2, 6, 20, 4, "g1", "fp32", True, True, dict(tile=1, tile_steps=4, seq_bwd=0)),
    (2, 8, 9, 16, "g2", "bf16", False, True, dict(tile=1, tile_bwd=1, tile_steps=4, tile_bwd_steps=2)),
    (2, 6, 6, 4, "mixed", "fp32", False, False, dict(tile=1, tile_bwd=1)),
    # the first-step peel forced on a full-output scan from a zero state (by default it is for last-only scans)
    (2, 6, 5, 4, "g2", "fp32", True, False, dict(peel=1)),
    (2, 8, 9, 16, "fixed", "bf16", False, False, dict(peel=1)),
]


def seq_id(c):
    b, d, L, n, bc, dt, nc, h0, cfg = c
    extra = ",".join(f"{k}={v}" for k, v in cfg.items())
    return f"B{b}-D{d}-L{L}-N{n}-{bc}-{dt}{'-nc' if nc else ''}{'' if h0 else '-noh0'}{'-' + extra if extra else ''}"


@pytest.mark.parametrize("case", SEQ_CASES, ids=seq_id)
def test_short_sequences(case, device, spies, monkeypatch):
    b, d, L, n, bc, dt, nc, h0, cfg = case
    monkeypatch.setattr(scan_config, "_CFG", dict(cfg))
    check(make_inputs(b, d, L, n, bc, dt, h0=h0, noncontig=nc, device=device), dt)
    seq_fwd = cfg.get("seq", 1) and L <= 32
    seq_bwd = cfg.get("seq_bwd", seq_fwd) and seq_fwd is not False
    tile_fwd = bool(seq_fwd) and bool(cfg.get("tile", 0))  # whole short sequences keep _fwd_seq_kernel
    tile_bwd = bool(seq_bwd) and bool(cfg.get("tile_bwd", L >= 16))  # scan_config.use_tile_bwd's default
    assert spies["_fwd_seq_kernel"].launches == int(bool(seq_fwd) and not tile_fwd)
    if spies["_fwd_seq_kernel"].launches:
        assert spies["_fwd_seq_kernel"].arg("PEEL") == bool(cfg.get("peel", 0))
    assert spies["_fwd_tile_kernel"].launches == int(tile_fwd)
    assert spies["_fwd_kernel"].launches == int(not seq_fwd)
    assert spies["_bwd_seq_kernel"].launches == int(bool(seq_bwd) and not tile_bwd)
    assert spies["_bwd_tile_kernel"].launches == int(tile_bwd)
    assert spies["_bwd_kernel"].launches == int(not seq_bwd)


# (batch, dim, L, N, bc, dtype, z, D, M2S2L_SCAN_CFG overrides, whether a kernel forms the last step alone
#  (``_fwd_last_kernel`` up to 4 steps, else ``_fwd_seq_kernel``), initial_state given)
LAST_CASES = [
    (2, 6, 1, 4, "g2", "fp32", True, True, {}, True, True),
    (2, 5, 7, 17, "g1", "fp32", True, True, {}, True, True),
    (3, 8, 9, 16, "fixed", "fp32", False, True, {}, True, True),
    (2, 6, 6, 4, "mixed", "fp32", True, False, {}, True, True),
    (2, 8, 9, 16, "g2", "bf16", True, True, {}, True, True),
    (2, 8, 9, 16, "3d", "fp16", True, True, {}, True, True),
    (2, 6, 40, 4, "g1", "fp32", True, True, {}, False, True),  # chunked forward: all steps formed, then the slice
    (2, 6, 20, 4, "g1", "fp32", True, True, dict(tile=1, tile_steps=4), False, True),  # tiled forward: likewise
    # from a zero state, as the video model runs it: the first step is peeled (no decay); 1 step = the peeled step
    # alone; peel=0 is the A/B switch back to the unpeeled loop
    (2, 6, 1, 4, "g2", "fp32", True, True, {}, True, False),
    (3, 8, 4, 16, "g1", "bf16", True, True, {}, True, False),
    (2, 5, 2, 16, "fixed", "fp32", False, True, {}, True, False),
    (2, 5, 4, 16, "g1", "fp32", True, True, dict(peel=0), True, False),
    # _fwd_last_kernel: a length padded to a power of two, fixed B / C in half precision; and short rows through
    # _fwd_seq_kernel's LAST_ONLY path (short_last=0, its A/B switch)
    (2, 5, 3, 4, "fixed", "fp16", True, True, {}, True, True),
    # odd state counts in _fwd_last_kernel: 17 states (a 32-wide masked tile), 1 state, 2 states with fixed B / C
    (2, 5, 3, 17, "g1", "fp32", True, True, {}, True, True),
    (2, 5, 4, 1, "g1", "fp32", True, True, {}, True, False),
    (2, 3, 2, 2, "fixed", "fp32", False, True, {}, True, True),
    # several rows a _fwd_last_kernel program (``scan_config.last_rows``), the last program's rows past the batch
    (3, 6, 4, 16, "g2", "fp32", True, True, dict(last_rows=2), True, True),
    (5, 5, 3, 4, "fixed", "bf16", True, True, dict(last_rows=4), True, False),
    (5, 7, 2, 17, "mixed", "fp32", False, True, dict(last_rows=3), True, True),
    (6, 5, 2, 4, "g1", "bf16", True, True, {}, True, False),  # the default for <= 2 steps: 4 rows (2 programs)
    (3, 5, 2, 4, "g1", "fp32", True, True, dict(last_rows=1), True, True),  # ... and its A/B switch back to 1
    (3, 7, 5, 16, "3d", "bf16", True, False, {}, True, False),
    (3, 8, 4, 16, "g1", "bf16", True, True, dict(short_last=0), True, False),
    (2, 6, 2, 4, "g2", "fp32", True, True, dict(short_last=0), True, True),
    # chunk states wanted (chunk=2 < 4 steps, gradients on): _fwd_seq_kernel, which saves them
    (2, 6, 4, 4, "g1", "fp32", True, True, dict(chunk=2, seq_bwd=0), True, True),
]


@pytest.mark.parametrize("case", LAST_CASES, ids=lambda c: f"B{c[0]}-D{c[1]}-L{c[2]}-N{c[3]}-{c[4]}-{c[5]}"
                         f"{'-z' if c[6] else ''}{'-D' if c[7] else ''}{'-' + str(c[8]) if c[8] else ''}"
                         f"{'' if c[10] else '-zero_h0'}")
def test_last_only(case, device, spies, monkeypatch):
    """last_only=True: out (batch, dim, 1) equals the float64 reference's last step, last_state as without it, and
    every gradient of (out * dout).sum() + (last * dlast).sum() equals the reference's with dout on the last step
    alone; the sequential kernel gets a (batch, dim, 1) output buffer poisoned with NaN and fills it."""
    b, d, L, n, bc, dt, z, D, cfg, kern, h0 = case
    monkeypatch.setattr(scan_config, "_CFG", dict(cfg))
    ins = make_inputs(b, d, L, n, bc, dt, z=z, D=D, h0=h0, device=device)
    gen = torch.Generator().manual_seed(3)
    dout = torch.randn(b, d, 1, generator=gen).to(device)
    dlast = torch.randn(b, d, n, generator=gen).to(device)
    poisoned = []
    real_empty = torch.empty

    def nan_empty(*shape, **kw):  # the launcher's output buffers, NaN-poisoned
        t = real_empty(*shape, **kw)
        if t.is_floating_point():
            t.fill_(float("nan"))
            poisoned.append(tuple(t.shape))
        return t
    monkeypatch.setattr(scan.torch, "empty", nan_empty)
    xs = {k: v.detach().clone().requires_grad_() if v is not None else None for k, v in ins.items()}
    out, last = selective_scan_fn(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], D=xs["D"], z=xs["z"],
                                  delta_bias=xs["delta_bias"], delta_softplus=True, return_last_state=True,
                                  initial_state=xs["initial_state"], backend="triton", last_only=True)
    monkeypatch.setattr(scan.torch, "empty", real_empty)
    assert out.shape == (b, d, 1) and out.dtype == ins["u"].dtype and last.shape == (b, d, n)
    assert ((b, d, 1) in poisoned) == kern
    short = kern and L <= 4 and bool(cfg.get("short_last", 1)) and cfg.get("chunk", 4) >= L
    assert spies["_fwd_last_kernel"].launches == int(short)
    assert spies["_fwd_seq_kernel"].launches == int((kern and not short) or (L <= 32 and not kern
                                                                            and not cfg.get("tile")))
    for k in ("_fwd_seq_kernel", "_fwd_last_kernel"):
        if spies[k].launches:
            assert k == "_fwd_last_kernel" or spies[k].arg("LAST_ONLY") == kern
            assert spies[k].arg("PEEL") == bool(cfg.get("peel", kern))
    if spies["_fwd_last_kernel"].launches:
        assert spies["_fwd_last_kernel"].arg("ROWS") == cfg.get("last_rows", 4 if L <= 2 else 1)
    names = [k for k in NAMES if xs[k] is not None]
    loss = (out.double() * dout.double()).sum() + (last.double() * dlast.double()).sum()
    grads = torch.autograd.grad(loss, [xs[k] for k in names])
    full = torch.cat([torch.zeros(b, d, L - 1, device=device), dout], dim=2)
    rout, rlast, rg = run(ins, True, None, full, dlast, double=True)
    tol_o, tol_g = TOL[dt]
    assert rel_rms(out, rout[:, :, -1:]) < tol_o and rel_rms(last, rlast) < tol_o
    for k, g in zip(names, grads):
        assert g.shape == ins[k].shape and rel_rms(g, rg[k]) < tol_g, k


def test_last_only_other_backends(device):
    """The torch backend and the pure-PyTorch stand-in (m2s2l.engine.export.pure_torch_ops) slice the last step;
    last_only must be a bool."""
    from m2s2l import ops
    from m2s2l.engine.export import pure_torch_ops
    ins = make_inputs(2, 6, 5, 4, "g1", device=device)
    a = dict(D=ins["D"], z=ins["z"], delta_bias=ins["delta_bias"], delta_softplus=True,
             initial_state=ins["initial_state"])
    full = selective_scan_fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], **a, backend="torch")
    got = selective_scan_fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], **a, backend="torch",
                            last_only=True)
    assert torch.equal(got, full[:, :, -1:])
    with pure_torch_ops():
        o2, _ = ops.selective_scan_fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], **a,
                                      return_last_state=True, last_only=True)
    torch.testing.assert_close(o2, full[:, :, -1:])
    with pytest.raises(TypeError, match="last_only must be a bool"):
        selective_scan_fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], last_only=1)


def test_seq_bwd_equals_chunked_bwd(device, monkeypatch):
    """The two backward kernels agree to float32 rounding (persistent: 2 programs over 3 rows x 2 blocks)."""
    ins = make_inputs(3, 8, 6, 4, "g1", device=device)
    gen = torch.Generator().manual_seed(4)
    dout, dlast = torch.randn(3, 8, 6, generator=gen).to(device), torch.randn(3, 8, 4, generator=gen).to(device)
    res = []
    for cfg in (dict(seq_bwd=0), dict(seq_bwd_block_d=4, seq_bwd_programs=3)):
        monkeypatch.setattr(scan_config, "_CFG", cfg)
        res.append(run(ins, True, "triton", dout, dlast))
    assert rel_rms(res[0][0], res[1][0]) == 0.0
    for k in res[0][2]:
        assert rel_rms(res[1][2][k], res[0][2][k]) < 2e-6, k


def test_seq_bwd_gpu_tile_rule(monkeypatch):
    """The GPU launch rule (not the interpreter's): a whole group per program up to 2048 state values (no dB/dC
    atomics), else 32 x 16 tiles on one warp -- the H200 sweep's winners (scan_config._seq_bwd_block_d docstring)."""
    monkeypatch.setattr(scan_config, "_INTERPRET", False)
    monkeypatch.setattr(scan_config, "_CFG", {})
    shapes = [(64, 16), (128, 16), (100, 16), (256, 16), (512, 16), (32, 64), (64, 64), (3, 1)]
    picks = {(cpg, n): scan_config._seq_bwd_block_d(cpg, n) for cpg, n in shapes}
    assert picks == {(64, 16): 64, (128, 16): 128, (100, 16): 128, (256, 16): 32, (512, 16): 32, (32, 64): 32,
                     (64, 64): 8, (3, 1): 4}
    assert [scan_config._seq_bwd_warps(b, 16) for b in (32, 64, 128)] == [1, 2, 4]
    monkeypatch.setattr(scan_config, "_CFG", {"seq_bwd_block_d": 16})
    assert scan_config._seq_bwd_block_d(128, 16) == 16


def test_torch_backend_matches_triton(device):
    ins = make_inputs(2, 6, 21, 4, "g2", device=device)
    gen = torch.Generator().manual_seed(2)
    dout, dlast = torch.randn(2, 6, 21, generator=gen).to(device), torch.randn(2, 6, 4, generator=gen).to(device)
    o1, l1, g1 = run(ins, True, "triton", dout, dlast)
    o2, l2, g2 = run(ins, True, "torch", dout, dlast)
    assert rel_rms(o1, o2) < 2e-6 and rel_rms(l1, l2) < 2e-6
    for k in g1:
        assert rel_rms(g1[k], g2[k]) < 1e-5, k


def test_chunked_equals_whole(device):
    """Two calls chained through initial_state equal one call, forward and backward (through last_state)."""
    ins = make_inputs(2, 8, 40, 4, "g2", h0=True, device=device)
    split = 17
    gen = torch.Generator().manual_seed(3)
    dout, dlast = torch.randn(2, 8, 40, generator=gen).to(device), torch.randn(2, 8, 4, generator=gen).to(device)
    o, l, g = run(ins, True, "triton", dout, dlast)
    xs = {k: v.detach().clone().requires_grad_() if v is not None else None for k, v in ins.items()}
    cut = lambda t, s: None if t is None else t[..., s]  # noqa: E731
    common = dict(D=xs["D"], delta_bias=xs["delta_bias"], delta_softplus=True, return_last_state=True,
                  backend="triton")
    parts, h = [], xs["initial_state"]
    for s in (slice(0, split), slice(split, None)):
        out, h = selective_scan_fn(cut(xs["u"], s), cut(xs["delta"], s), xs["A"], cut(xs["B"], s), cut(xs["C"], s),
                                   z=cut(xs["z"], s), initial_state=h, **common)
        parts.append(out)
    out2 = torch.cat(parts, -1)
    assert rel_rms(out2, o) < 1e-6 and rel_rms(h, l) < 1e-6
    loss = (out2 * dout).sum() + (h * dlast).sum()
    grads = torch.autograd.grad(loss, [xs[k] for k in g])
    for k, gk in zip(g, grads):
        assert rel_rms(gk, g[k]) < 1e-5, k


def test_forward_only_and_no_last_state(device):
    ins = make_inputs(2, 6, 20, 4, "g1", device=device)
    with torch.no_grad():
        out = selective_scan_fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], backend="triton")
    ref = selective_scan_ref(ins["u"].double(), ins["delta"].double(), ins["A"], ins["B"].double(), ins["C"].double())
    assert isinstance(out, torch.Tensor) and rel_rms(out, ref) < 2e-5


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("last_only", [False, True])
def test_opcheck(backend, last_only, device):
    """Schema, fake (meta) implementation and autograd registration of m2s2l::selective_scan_fwd."""
    ins = make_inputs(2, 4, 20, 3, "g2", device=device)
    args = tuple(ins[k] for k in NAMES) + (True, True, True, last_only, backend)
    torch.library.opcheck(torch.ops.m2s2l.selective_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    args = tuple(ins[k].requires_grad_() for k in NAMES) + (True, True, True, last_only, backend)
    torch.library.opcheck(torch.ops.m2s2l.selective_scan_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def _bad(**over):
    ins = make_inputs(2, 4, 5, 3, "g2", h0=False, z=False, D=False, bias=False)
    ins = {k: v for k, v in ins.items() if v is not None}
    ins.update(over)
    return ins


BAD = [
    ("u-rank", dict(u=torch.randn(4, 5)), ValueError, "u"),
    ("delta-shape", dict(delta=torch.randn(2, 4, 6)), ValueError, "delta"),
    ("delta-dtype", dict(delta=torch.randn(2, 4, 5, dtype=torch.float16)), TypeError, "delta"),
    ("A-complex", dict(A=torch.randn(4, 3, dtype=torch.complex64)), TypeError, "A"),
    ("A-nonfinite", dict(A=torch.tensor([[float("inf")] * 3] * 4)), ValueError, "A"),
    ("A-bf16", dict(A=torch.randn(4, 3, dtype=torch.bfloat16)), TypeError, "A"),
    ("A-shape", dict(A=torch.randn(5, 3)), ValueError, "A"),
    ("B-groups", dict(B=torch.randn(2, 3, 3, 5), C=torch.randn(2, 3, 3, 5)), ValueError, "groups must divide"),
    ("B-rank", dict(B=torch.randn(2, 2, 3, 5, 1)), ValueError, "B"),
    ("C-shape", dict(C=torch.randn(2, 2, 4, 5)), ValueError, "C"),
    ("C-dtype", dict(C=torch.randn(2, 2, 3, 5, dtype=torch.bfloat16)), TypeError, "C"),
    ("BC-groups-differ", dict(C=torch.randn(2, 1, 3, 5)), ValueError, "same number of groups"),
    ("D-shape", dict(D=torch.randn(3)), ValueError, "D"),
    ("z-shape", dict(z=torch.randn(2, 4, 4)), ValueError, "z"),
    ("h0-shape", dict(initial_state=torch.randn(2, 4, 2)), ValueError, "initial_state"),
    ("h0-dtype", dict(initial_state=torch.randn(2, 4, 3, dtype=torch.float64)), TypeError, "initial_state"),
    ("bias-type", dict(delta_bias=[0.0] * 4), TypeError, "delta_bias"),
    ("meta-device", dict(D=torch.randn(4, device="meta")), ValueError, "D is on meta"),
]


@pytest.mark.parametrize("name,over,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(name, over, exc, match):
    ins = _bad(**over)
    with pytest.raises(exc, match=match):
        selective_scan_fn(ins.pop("u"), ins.pop("delta"), ins.pop("A"), ins.pop("B"), ins.pop("C"), **ins,
                          backend="torch")


def test_bad_flags_and_backend():
    ins = _bad()
    args = [ins[k] for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(TypeError, match="delta_softplus"):
        selective_scan_fn(*args, delta_softplus=1)
    with pytest.raises(ValueError, match="backend"):
        selective_scan_fn(*args, backend="numpy")


# ---- GPU: bench sizes, float32 reference on the GPU ----------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(8, 2048, 2048), (16384, 128, 8), (4096, 256, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_bench_sizes(shape):
    batch, dim, L = shape
    ins = make_inputs(batch, dim, L, 16, "g1", "bf16", h0=False, device="cuda")
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(batch, dim, L, generator=gen).cuda()
    dlast = torch.zeros(batch, dim, 16, device="cuda")
    out, last, g = run(ins, True, "triton", dout, dlast)
    xs = {k: v.float() if v is not None and k not in ("B", "C") else v for k, v in ins.items()}
    xs["B"], xs["C"] = ins["B"].float(), ins["C"].float()
    rout, rlast, rg = run(xs, True, "torch", dout, dlast)
    assert rel_rms(out, rout) < 1e-2 and rel_rms(last, rlast) < 1e-3
    for k in rg:
        assert rel_rms(g[k], rg[k]) < 3e-2, k


def run_configs(shape, cfgs, monkeypatch, N=16):
    """(out, last, grads) of the Triton scan on CUDA bf16 inputs of ``shape`` (one group, h0, dlast), once per
    launch config in ``cfgs`` (set as scan_config._CFG), same inputs and output gradients each time."""
    ins = make_inputs(*shape, N, "g1", "bf16", h0=True, device="cuda")
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(*shape, generator=gen).cuda()
    dlast = torch.randn(shape[0], shape[1], N, generator=gen).cuda()
    res = []
    for cfg in cfgs:
        monkeypatch.setattr(scan_config, "_CFG", cfg)
        res.append(run(ins, True, "triton", dout, dlast))
    return res


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(262144, 64, 4), (16384, 128, 8)], ids=lambda s: "x".join(map(str, s)))
def test_gpu_seq_bwd_matches_chunked(shape, monkeypatch):
    """The sequential backward (defaults: persistent grid, scratch) equals the chunked one on training/video shapes;
    262144 rows: > 65535 on any grid axis and int64 offsets."""
    res = run_configs(shape, (dict(seq_bwd=0), {}), monkeypatch)
    for k in res[0][2]:
        assert rel_rms(res[1][2][k].float(), res[0][2][k].float()) < 1e-2, k


@pytest.mark.gpu
def test_gpu_long_sequence_int64_offsets():
    """2**31+ elements in u: strong decay makes the last outputs depend only on the last few dozen steps."""
    batch, dim, L, N = 1, 2048, 2 ** 20 + 5, 16
    u = torch.randn(batch, dim, L, device="cuda", dtype=torch.bfloat16)
    delta = torch.full_like(u, 1.0)
    A = torch.full((dim, N), -8.0, device="cuda")
    B = torch.randn(batch, N, L, device="cuda", dtype=torch.bfloat16)
    C = torch.randn_like(B)
    with torch.no_grad():
        out = selective_scan_fn(u, delta, A, B, C, backend="triton")
        tail = slice(L - 64, L)
        ref = selective_scan_ref(u[..., tail], delta[..., tail], A, B[..., tail], C[..., tail])
    assert rel_rms(out[..., -32:], ref[..., -32:]) < 1e-2
