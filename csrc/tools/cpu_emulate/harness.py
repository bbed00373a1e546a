# Drives the csrc kernels compiled for the CPU (shim.h) through ctypes, against the float64 references.
# Run through run.sh, which builds libemu.so with AddressSanitizer.
import ctypes as C, math, os, sys, torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref
from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_ref
lib = C.CDLL(os.environ["EMU_LIB"])
I, B_, P, L64 = C.c_int, C.c_bool, C.c_void_p, C.c_int64
class SS(C.Structure):
    _fields_ = [(n, I) for n in "batch dim L N B_groups B_dpg C_groups C_dpg nchunks".split()] + \
        [(n, B_) for n in "softplus B_var C_var".split()] + \
        [(n, P) for n in "u delta z B C dout A D delta_bias init dlast".split()] + \
        [(n, L64) for n in "u_sb u_sd u_sl dl_sb dl_sd dl_sl z_sb z_sd z_sl do_sb do_sd do_sl B_sb B_sg B_sn B_sl C_sb C_sg C_sn C_sl".split()] + \
        [(n, P) for n in "out last saved du ddelta dz dA dB dC dD ddelta_bias dinit".split()]
class CV(C.Structure):
    _fields_ = [(n, I) for n in "batch dim L W".split()] + [(n, B_) for n in "silu batch_major".split()] + \
        [("x", P)] + [(n, L64) for n in "x_sb x_sd x_sl".split()] + [(n, P) for n in "weight bias init out final_states dout".split()] + \
        [(n, L64) for n in "do_sb do_sd do_sl".split()] + [(n, P) for n in "dfinal dx dinit dweight dbias".split()]
assert C.sizeof(SS) == lib.emu_sizeof_ss(), (C.sizeof(SS), lib.emu_sizeof_ss())
assert C.sizeof(CV) == lib.emu_sizeof_conv(), (C.sizeof(CV), lib.emu_sizeof_conv())
FAILED = []
def cfg(N, rows, sms=132):
    if N <= 16: return (4, 4) if (N <= 4 or rows * 4 >= sms * 1024) else (16, 1)
    return (16, 4) if N <= 64 else (32, 8)
def ptr(t): return None if t is None else C.c_void_p(t.data_ptr())
def set_bc(p, X, nm, batch, dim, N, L):
    if X.dim() == 2: var, G, s = False, dim, (0, X.stride(0), X.stride(1), 0)
    elif X.dim() == 3: var, G, s = True, 1, (X.stride(0), 0, X.stride(1), X.stride(2))
    else: var, G, s = True, X.shape[1], X.stride()
    setattr(p, nm, ptr(X)); setattr(p, nm + "_var", var); setattr(p, nm + "_groups", G); setattr(p, nm + "_dpg", dim // G)
    for k, v in zip("sb sg sn sl".split(), s): setattr(p, f"{nm}_{k}", v)
def run_scan(batch, dim, L, N, bc, G, dt, noncontig=False, seed=0):
    torch.manual_seed(seed)
    r = lambda *s: torch.randn(*s).to(dt)
    u, delta, z = r(batch, dim, L), (0.5 * torch.randn(batch, dim, L) - 1).to(dt), r(batch, dim, L)
    if noncontig: u = u.transpose(1, 2).contiguous().transpose(1, 2)
    A = -torch.rand(dim, N) * 2 - 0.1
    shape = {"fixed": (dim, N), "var3": (batch, N, L), "var": (batch, G, N, L)}[bc]
    Bm = torch.randn(*shape) if bc == "fixed" else r(*shape); Cm = torch.randn(*shape) if bc == "fixed" else r(*shape)
    if bc == "fixed" and dt != torch.float32: Bm, Cm = Bm.to(dt), Cm.to(dt)
    D, bias, h0 = torch.randn(dim), 0.3 * torch.randn(dim), torch.randn(batch, dim, N)
    dout, dlast = r(batch, dim, L), torch.randn(batch, dim, N)
    p = SS(); p.batch, p.dim, p.L, p.N = batch, dim, L, N; p.nchunks = -(-L // 64); p.softplus = True
    p.u, p.delta, p.z, p.A, p.D, p.delta_bias, p.init = ptr(u), ptr(delta), ptr(z), ptr(A), ptr(D), ptr(bias), ptr(h0)
    p.u_sb, p.u_sd, p.u_sl = u.stride(); p.dl_sb, p.dl_sd, p.dl_sl = delta.stride(); p.z_sb, p.z_sd, p.z_sl = z.stride()
    set_bc(p, Bm, "B", batch, dim, N, L); set_bc(p, Cm, "C", batch, dim, N, L)
    nan = lambda *s, d=torch.float32: torch.full(s, float("nan"), dtype=d)
    out, last, saved = nan(batch, dim, L, d=dt), nan(batch, dim, N), nan(batch, dim, p.nchunks, N)
    p.out, p.last, p.saved = ptr(out), ptr(last), ptr(saved)
    LN, NP = cfg(N, batch * dim)
    bf = dt == torch.bfloat16
    assert lib.emu_ss(C.byref(p), 1, LN, NP, bf) == 0
    p.dout, p.dlast = ptr(dout), ptr(dlast); p.do_sb, p.do_sd, p.do_sl = dout.stride()
    du, ddelta, dz = nan(batch, dim, L, d=dt), nan(batch, dim, L, d=dt), nan(batch, dim, L, d=dt)
    dA, dB, dC, dD, db, dinit = torch.zeros(dim, N), torch.zeros(Bm.shape), torch.zeros(Cm.shape), torch.zeros(dim), torch.zeros(dim), nan(batch, dim, N)
    p.du, p.ddelta, p.dz, p.dA, p.dB, p.dC, p.dD, p.ddelta_bias, p.dinit = map(ptr, (du, ddelta, dz, dA, dB, dC, dD, db, dinit))
    assert lib.emu_ss(C.byref(p), 0, LN, NP, bf) == 0
    lv = [t.double().requires_grad_() for t in (u, delta, A, Bm, Cm, D, z, bias, h0)]
    ro, rl = selective_scan_ref(*lv[:8], True, True, lv[8])
    ((ro * dout.double()).sum() + (rl * dlast.double()).sum()).backward()
    tol = 2e-3 if dt == torch.float32 else 4e-2
    errs = {}
    for nm, got, ref in [("out", out, ro), ("last", last, rl)] + list(zip("du ddelta dA dB dC dD dz dbias dinit".split(), (du, ddelta, dA, dB, dC, dD, dz, db, dinit), [t.grad for t in lv[:5]] + [lv[5].grad, lv[6].grad, lv[7].grad, lv[8].grad])):
        e = (got.double() - ref.detach()).abs().max().item() / max(ref.abs().max().item(), 1e-6)
        errs[nm] = e
    bad = {k: v for k, v in errs.items() if not v <= tol * 2}
    FAILED.extend(bad)
    print(f"scan B{batch} D{dim} L{L} N{N} {bc}{G} {dt} lanes{LN}x{NP}: worst {max(errs.values()):.1e}", "FAIL " + str(bad) if bad else "ok", flush=True)
def run_conv(batch, dim, L, W, dt, cl=False):
    torch.manual_seed(0)
    x = torch.randn(batch, dim, L).to(dt)
    if cl: x = x.transpose(1, 2).contiguous().transpose(1, 2)
    w, b, init = torch.randn(dim, W) / math.sqrt(W), torch.randn(dim), torch.randn(batch, dim, W - 1).to(dt)
    dout, dfin = torch.randn(batch, dim, L).to(dt), torch.randn(batch, dim, W - 1).to(dt)
    p = CV(); p.batch, p.dim, p.L, p.W, p.silu = batch, dim, L, W, True
    p.x = ptr(x); p.x_sb, p.x_sd, p.x_sl = x.stride(); p.weight, p.bias = ptr(w), ptr(b)
    p.init = ptr(init) if W > 1 else None
    p.batch_major = (-(-L // 8)) == 1 and batch >= 32
    out, fin = torch.full((batch, dim, L), float("nan")).to(dt), torch.full((batch, dim, W - 1), float("nan")).to(dt)
    p.out, p.final_states = ptr(out), (ptr(fin) if W > 1 else None)
    wm = 4 if W <= 4 else 8 if W <= 8 else 16
    bf = dt == torch.bfloat16
    assert lib.emu_conv(C.byref(p), 1, wm, bf) == 0
    p.dout = ptr(dout); p.do_sb, p.do_sd, p.do_sl = dout.stride(); p.dfinal = ptr(dfin) if W > 1 else None
    dx, dinit = torch.full((batch, dim, L), float("nan")).to(dt), torch.zeros(batch, dim, W - 1).to(dt)
    dw, db = torch.zeros(dim, W), torch.zeros(dim)
    p.dx, p.dinit, p.dweight, p.dbias = ptr(dx), (ptr(dinit) if W > 1 else None), ptr(dw), ptr(db)
    assert lib.emu_conv(C.byref(p), 0, wm, bf) == 0
    lv = [t.double().requires_grad_() for t in (x, w, b, init)]
    ro, rf = causal_conv1d_ref(lv[0], lv[1], lv[2], "silu", lv[3], True)
    ((ro * dout.double()).sum() + (rf * dfin.double()).sum()).backward()
    errs = {}
    for nm, got, ref in [("out", out, ro), ("fin", fin, rf), ("dx", dx, lv[0].grad), ("dw", dw, lv[1].grad), ("db", db, lv[2].grad), ("dinit", dinit, lv[3].grad)]:
        if ref.numel(): errs[nm] = (got.double() - ref.detach()).abs().max().item() / max(ref.abs().max().item(), 1e-6)
    tol = 2e-3 if dt == torch.float32 else 4e-2
    bad = {k: v for k, v in errs.items() if not v <= tol * 2}
    FAILED.extend(bad)
    print(f"conv B{batch} D{dim} L{L} W{W} {dt} cl={cl}: worst {max(errs.values()):.1e}", "FAIL " + str(bad) if bad else "ok", flush=True)
which = sys.argv[1] if len(sys.argv) > 1 else "all"
if which in ("all", "scan"):
    for case in [(2, 5, 1, 1, "var", 1), (2, 24, 7, 4, "var", 1), (1, 40, 70, 16, "var", 2), (2, 5, 70, 33, "var", 1),
                 (1, 3, 65, 256, "var", 1), (3, 8, 37, 8, "fixed", 1), (3, 8, 37, 8, "var3", 1), (3, 8, 37, 8, "var", 4)]:
        run_scan(*case, torch.float32)
    run_scan(2, 8, 40, 16, "var", 2, torch.bfloat16)
    run_scan(2, 16, 50, 8, "var", 2, torch.float32, noncontig=True)
if which in ("all", "conv"):
    for L in (1, 7, 9, 129):
        for W in (1, 3, 4, 5, 11, 16):
            run_conv(2, 6, L, W, torch.float32)
    run_conv(40, 4, 8, 4, torch.float32)   # batch-major
    run_conv(2, 16, 40, 4, torch.bfloat16, cl=True)
print("FAILED:" if FAILED else "all ok", *FAILED)
sys.exit(1 if FAILED else 0)
