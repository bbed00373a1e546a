"""Chunked selective scan (S6) in Triton: the launchers of the kernels in ``scan_kernels.py`` and, for short
sequences (``use_seq_fwd`` / ``use_seq_bwd``, seqlen <= 32 by default), of the sequential-in-time kernels in
``scan_seq_kernels.py`` / ``scan_seq_bwd_kernels.py`` (state in registers; the backward is persistent with a
per-program scratch of the states) and their time-tiled versions in ``scan_tile_kernels.py`` /
``scan_tile_bwd_kernels.py`` (``use_tile_fwd`` / ``use_tile_bwd``: under the chunk-parallel scan, and the backward
of whole sequences of 16+ steps).

Layout of the work: one program owns BLOCK_D channels of one group (a block never straddles two groups, so
input-dependent B/C load once as a [T_C, BLOCK_N] tile shared by all its channels) and one batch row, and walks
the sequence in chunks of T_C steps. Inside a chunk the recurrence h_t = a_t h_{t-1} + b_t runs as a
``tl.associative_scan`` over a [BLOCK_D, T_C, BLOCK_N] register tile; the state is carried across chunks.
All math is float32. The forward stores the state at every chunk start except the first (float32,
O(seqlen / T_C * dstate) per channel) when asked to; the backward walks the chunks in reverse, recomputes
h inside the chunk from that state and runs the adjoint recurrence dh_t = C_t dy_t + a_{t+1} dh_{t+1} as a
reverse associative scan.

Cross-program reductions in the backward use float32 atomics into zeroed buffers: dA, dD, d(delta_bias)
and fixed dB/dC once per program (each program loops over B_PER_PROG batch rows first to keep contention
low); input-dependent dB/dC are summed over the block's channels in registers and stored directly when one
block covers the group, else added atomically per chunk. The atomics are relaxed (``sem="relaxed"``: no
ordering is needed for sums; Triton's default acq_rel fenced and invalidated L1 around each add). Results are
therefore deterministic only up to float32 summation order in those gradients.

Launchers (plain functions, no autograd): ``selective_scan_fwd`` and ``selective_scan_bwd``; ``chunk_len``
gives the chunk length both use.
"""
import torch
import triton

from . import scan_config
from .scan_config import (_INTERPRET, _block_d, _pow2, _seq_block_d, _seq_bwd_block_d, _seq_bwd_rows,
                          _seq_bwd_warps, _seq_warps, _tile_block_d, _tile_programs, _tile_steps, _tile_warps,
                          chunk_len, cseq_chunk, use_seq_bwd, use_tile_bwd, use_tile_fwd)
from .scan_config import saved_state_count, use_seq_fwd  # noqa: F401  (public: m2s2l.ops, tests, bench)
from .scan_kernels import _bwd_kernel, _combine, _fwd_kernel
from .scan_seq_bwd_kernels import _bwd_seq_kernel
from .scan_seq_kernels import _chunk_combine_kernel, _fwd_last_kernel, _fwd_seq_kernel
from .scan_tile_bwd_kernels import _bwd_tile_kernel
from .scan_tile_kernels import _fwd_tile_kernel


def _vectorize_interpreter_scan():
    """Speed up ``tl.associative_scan`` under TRITON_INTERPRET=1 (CPU tests).

    Triton's interpreter runs a scan with a user combine function one element at a time (~1 ms per element,
    minutes per test). A combine function is elementwise by definition, so stepping along the scan axis with
    whole slices computes the same values. Installed only in interpreter mode; a no-op if the interpreter's
    internals differ from what is expected here (then tests are just slow).
    """
    try:
        import numpy as np
        from triton.runtime import interpreter as interp
    except Exception:  # pragma: no cover
        return
    scan_ops = getattr(interp, "ScanOps", None)
    if scan_ops is None or not hasattr(scan_ops, "generic_scan") or getattr(scan_ops, "_m2s2l_vectorized", False):
        return

    def generic_scan(self, input):
        ax, datas = self.axis, [a.handle.data for a in input]
        outs = [np.empty_like(d) for d in datas]
        if getattr(self.combine_fn, "fn", None) is _combine.fn:  # the linear recurrence, directly in numpy
            a, b = datas
            outs[0] = np.cumprod(a, axis=ax).astype(a.dtype)
            acc = np.take(b, [0], axis=ax)
            for i in range(b.shape[ax]):
                sl = (slice(None),) * ax + (slice(i, i + 1),)
                acc = b[sl] if i == 0 else a[sl] * acc + b[sl]
                outs[1][sl] = acc
            return [self.to_tensor(o, x.dtype) for o, x in zip(outs, input)]
        acc = None
        for i in range(datas[0].shape[ax]):
            cur = tuple(self.to_tensor(np.take(d, [i], axis=ax), a.dtype) for d, a in zip(datas, input))
            if acc is None:
                acc = cur
            else:
                r = self.combine_fn.fn(*acc, *cur)
                acc = r if isinstance(r, tuple) else (r,)
            for o, t in zip(outs, acc):
                o[(slice(None),) * ax + (slice(i, i + 1),)] = t.handle.data
        return [self.to_tensor(o, a.dtype) for o, a in zip(outs, input)]

    scan_ops.generic_scan = generic_scan
    scan_ops._m2s2l_vectorized = True


if _INTERPRET:
    _vectorize_interpreter_scan()


# ---- launchers --------------------------------------------------------------------------------------------

def _bc(X, batch):
    """(tensor, is_variable, four strides) with (batch, dstate, L) viewed as (batch, 1, dstate, L)."""
    if X.dim() == 2:
        return X, False, (X.stride(0), X.stride(1), 0, 0), 1
    if X.dim() == 3:
        X = X.unsqueeze(1)
    return X, True, tuple(X.stride()), X.shape[1]


def _groups(Bt, Ct):
    gb = Bt.shape[1] if Bt.dim() == 4 else None
    gc = Ct.shape[1] if Ct.dim() == 4 else None
    return gb or gc or 1


def _layout(u, A, B, C):
    """Sizes and B/C views shared by both launchers: (batch, dim, L, N, B4, b_var, sB, C4, c_var, sC, groups,
    channels per group, chunk length)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    B4, b_var, sB, gb = _bc(B, batch)
    C4, c_var, sC, gc = _bc(C, batch)
    G = max(gb, gc)
    return batch, dim, L, N, B4, b_var, sB, C4, c_var, sC, G, dim // G, chunk_len(L, N)


def _maxnreg(key):
    """{"maxnreg": n} when the launch config sets ``key`` (a register cap for the compiler), else {}."""
    return {"maxnreg": scan_config._CFG[key]} if key in scan_config._CFG else {}


def _dummy(ref):
    return torch.zeros(1, device=ref.device, dtype=torch.float32)


def _combine_chunks(x0, X, dsum, A, reverse):
    """In place on X (batch, nb, dim, N): the sequential combine over chunk boundaries (``_chunk_combine_kernel``)."""
    batch, nb, dim, N = X.shape
    BN = max(2, _pow2(N))
    bd = scan_config._CFG.get("cseq_combine_block_d") or max(1, min(_pow2(dim), (4096 if _INTERPRET else 512) // BN))
    _chunk_combine_kernel[(batch, triton.cdiv(dim, bd))](x0 if x0 is not None else _dummy(X), X, dsum, A, dim, nb,
                                                        N=N, BLOCK_D=bd, BLOCK_N=BN, HAS_X0=x0 is not None,
                                                        REVERSE=reverse, num_warps=4)


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                       delta_softplus=False, return_last_state=False, save_states=False, last_only=False):
    """Forward launcher. Shapes as in ``m2s2l.ops.selective_scan_fn`` (arguments assumed validated).

    Returns (out (batch, dim, L) in u's dtype -- (batch, dim, 1), the last step's output, with ``last_only``,
    last_state (batch, dim, N) float32 or None,
    chunk_states (batch, nchunks - 1, dim, N) float32 or None — the states entering chunks 1.., for the backward;
    chunks of ``chunk_len`` steps, or of ``cseq_chunk`` steps when the chunk-parallel sequential scan runs).
    """
    batch, dim, L, N, B4, b_var, sB, C4, c_var, sC, G, cpg, T_C = _layout(u, A, B, C)
    Lc = cseq_chunk(L, batch * dim)
    nc = triton.cdiv(L, Lc) if Lc else 1  # cseq chunks (1: one sequential pass)
    seq = bool(Lc) or use_seq_fwd(L)
    if Lc:
        BLOCK_D = _seq_block_d(cpg, N, batch * nc * G, u.device, "cseq_block_d")
    elif seq:
        BLOCK_D = _seq_block_d(cpg, N, batch * G, u.device)
    else:
        BLOCK_D = _block_d(cpg, L, N, 4096, "fwd_block_d", batch * G, u.device)
    nblk = triton.cdiv(cpg, BLOCK_D)
    nchunks = triton.cdiv(L, T_C)
    A = A.contiguous()
    # last_only: the sequential kernel forms the last step's output alone (M2S2L_SCAN_CFG last_kernel=0: it forms
    # all, as the other kernels do, and the launcher slices)
    kern_last = bool(last_only and seq and nc == 1 and not use_tile_fwd(bool(Lc))
                     and scan_config._CFG.get("last_kernel", 1))
    out = torch.empty(batch, dim, 1 if kern_last else L, device=u.device, dtype=u.dtype)
    hlast = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) if return_last_state else None
    hc = None
    if save_states and nchunks > 1 and not Lc:
        hc = torch.empty(batch, nchunks - 1, dim, N, device=u.device, dtype=torch.float32)
    h0 = initial_state.contiguous() if initial_state is not None else None
    dmy = _dummy(u)
    zz = z if z is not None else u
    ptrs = (u, delta, A, B4, C4, D if D is not None else dmy, zz, delta_bias if delta_bias is not None else dmy,
            h0 if h0 is not None else dmy, out, hlast if hlast is not None else dmy, hc if hc is not None else dmy)
    strides = (*u.stride(), *delta.stride(), *zz.stride(), *sB, *sC)
    meta = dict(N=N, BLOCK_D=BLOCK_D, T_C=T_C, BLOCK_N=max(2, _pow2(N)), B_VAR=b_var, C_VAR=c_var,
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_H0=h0 is not None, STORE_LAST=hlast is not None,
                SAVE_CHUNKS=hc is not None)
    if seq:
        tile = use_tile_fwd(bool(Lc))
        if tile:  # time-tiled persistent kernel: its own channel block (one channel a thread)
            BLOCK_D = _tile_block_d(cpg)
            nblk = triton.cdiv(cpg, BLOCK_D)
            meta["BLOCK_D"] = BLOCK_D
            warps = _tile_warps(BLOCK_D)
            TT = _tile_steps(Lc if nc > 1 else L)
            # one scratch for both passes, sized for the larger (output) pass: programs never exceed its work items
            progs_max = max(1, min(batch * nc * G * nblk, _tile_programs(u.device)))
            scratch = torch.empty(progs_max * TT * (4 * BLOCK_D + 2 * meta["BLOCK_N"]), device=u.device,
                                  dtype=torch.float32)
        else:
            warps = scan_config._CFG.get("cseq_warps" if Lc else "seq_warps", _seq_warps(BLOCK_D, N))

        fast = scan_config.use_fast_softplus(delta)
        # whole short rows, every input loaded at once (it saves no chunk states: only where none are wanted)
        if kern_last and not tile and hc is None and scan_config.use_short_last(L):
            m = {k: v for k, v in meta.items() if k not in ("T_C", "SAVE_CHUNKS")}
            rows = scan_config.last_rows(L)
            _fwd_last_kernel[(triton.cdiv(batch, rows), G * nblk)](*ptrs[:11], dim, cpg, nblk, *strides, L=L, **m,
                                                                   PEEL=scan_config.use_peel(True), FAST=fast,
                                                                   ROWS=rows, n_rows=batch,
                                                                   num_warps=scan_config.last_warps(warps))
            return out, hlast, hc

        def launch(rows, n_cp, LC, **kw):
            if not tile:
                _fwd_seq_kernel[(rows, G * nblk)](*ptrs, hb, dsum, L, LC, nc, n_cp, dim, cpg, nblk, *strides, **kw,
                                                  LAST_ONLY=kern_last, PEEL=scan_config.use_peel(kern_last),
                                                  FAST=fast, num_warps=warps)
                return
            n_work = rows * G * nblk
            progs = max(1, min(n_work, _tile_programs(u.device)))
            _fwd_tile_kernel[(progs,)](*ptrs, hb, dsum, scratch, L, LC, nc, n_cp, n_work, dim, cpg, nblk, G * nblk,
                                       *strides, **kw, TT=TT, num_warps=warps, **_maxnreg("tile_maxnreg"))
        hb = dsum = dmy
        if nc > 1:  # pass 1: chunks 0 .. nc-2 from zero -> local end states; combine -> states entering chunks 1..
            hb = torch.empty(batch, nc - 1, dim, N, device=u.device, dtype=torch.float32)
            dsum = torch.empty(batch, nc - 1, dim, device=u.device, dtype=torch.float32)
            pass1 = dict(meta, HAS_D=False, HAS_Z=False, HAS_H0=False, STORE_LAST=False)
            launch(batch * (nc - 1), nc - 1, Lc, **pass1, STATE_ONLY=True, CSEQ=False)
            _combine_chunks(h0, hb, dsum, A, reverse=False)
            hc = hb if save_states else None
        launch(batch * nc, nc, Lc if nc > 1 else L, **meta, STATE_ONLY=False, CSEQ=nc > 1)
    else:
        _fwd_kernel[(batch, G * nblk)](*ptrs, L, nchunks, dim, cpg, nblk, *strides, **meta,
                                       num_warps=scan_config._CFG.get("fwd_warps", 4))
    if last_only and not kern_last:
        out = out[:, :, -1:].contiguous()
    return out, hlast, hc


def selective_scan_bwd(dout, u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                       chunk_states=None, delta_softplus=False, dlast=None):
    """Backward launcher: gradients of (out, last_state) -> inputs.

    ``chunk_states`` is what ``selective_scan_fwd(..., save_states=True)`` returned (None when
    ``saved_state_count`` is 0);
    ``dlast`` the gradient of last_state or None. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias,
    dinitial_state); du/ddelta/dz in the input dtype, dB/dC in B's/C's dtype, the rest float32
    (None where the input was None).
    """
    batch, dim, L, N, B4, b_var, sB, C4, c_var, sC, G, cpg, T_C = _layout(u, A, B, C)
    Lc = cseq_chunk(L, batch * dim)
    nc = triton.cdiv(L, Lc) if Lc else 1  # cseq chunks (1: one sequential pass)
    seq = bool(Lc) or use_seq_bwd(L)
    BN = max(2, _pow2(N))
    tile = seq and use_tile_bwd(L, bool(Lc))
    if tile:
        BLOCK_D = _tile_block_d(cpg, "tile_bwd_block_d")
    elif seq:
        BLOCK_D = _seq_bwd_block_d(cpg, N, "cseq_bwd_block_d" if Lc else "seq_bwd_block_d")
    else:
        BLOCK_D = _block_d(cpg, L, N, 2048, "bwd_block_d", batch * G, u.device)
    nblk = triton.cdiv(cpg, BLOCK_D)
    nchunks = triton.cdiv(L, T_C)
    need = nc - 1 if Lc else (0 if seq else nchunks - 1)
    if need > 0 and (chunk_states is None or chunk_states.shape != (batch, need, dim, N)):
        raise ValueError(f"chunk_states must have shape {(batch, need, dim, N)}")
    var_atomic = nblk > 1
    f32 = dict(device=u.device, dtype=torch.float32)
    du = torch.empty(batch, dim, L, device=u.device, dtype=u.dtype)
    ddelta = torch.empty(batch, dim, L, device=u.device, dtype=delta.dtype)
    dz = torch.empty(batch, dim, L, device=u.device, dtype=z.dtype) if z is not None else None
    dA = torch.zeros(dim, N, **f32)

    def grad_buf(X4, var):
        if not var:
            return torch.zeros(dim, N, **f32)
        return (torch.zeros if var_atomic else torch.empty)(X4.shape, **f32)
    dB4, dC4 = grad_buf(B4, b_var), grad_buf(C4, c_var)
    dD = torch.zeros(dim, **f32) if D is not None else None
    dbias = torch.zeros(dim, **f32) if delta_bias is not None else None
    h0 = initial_state.contiguous() if initial_state is not None else None
    dh0 = torch.empty(batch, dim, N, **f32) if h0 is not None else None
    dl = dlast.contiguous() if dlast is not None else None
    dmy = _dummy(u)
    zz = z if z is not None else u
    sdB = dB4.stride() if b_var else (0, 0, 0, 0)
    sdC = dC4.stride() if c_var else (0, 0, 0, 0)
    opt = lambda t: t if t is not None else dmy  # noqa: E731
    ptrs = (u, delta, A.contiguous(), B4, C4, opt(D), zz, opt(delta_bias), opt(h0))
    grads = (du, ddelta, dA, dB4, dC4, opt(dD), opt(dz), opt(dbias), opt(dh0))
    strides = (*u.stride(), *delta.stride(), *zz.stride(), *dout.stride(), *sB, *sC, *sdB, *sdC)
    meta = dict(N=N, BLOCK_D=BLOCK_D, BLOCK_N=BN, B_VAR=b_var, C_VAR=c_var, HAS_D=D is not None,
                HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                HAS_H0=h0 is not None, HAS_DLAST=dl is not None, VAR_ATOMIC=var_atomic)
    if seq:
        n_gd = G * nblk
        LC = Lc if nc > 1 else L
        if tile:
            warps = _tile_warps(BLOCK_D, "tile_bwd_warps")
            TT = _tile_steps(LC, "tile_bwd_steps", 8)
            tile_st = BLOCK_D * BN
            slot = TT * (9 * BLOCK_D + 4 * BN) + (TT + triton.cdiv(LC, TT)) * tile_st
            slot = triton.cdiv(slot, 16) * 16  # 64-byte aligned slots: vector loads and stores of the state tiles
        else:
            warps = _seq_bwd_warps(BLOCK_D, N, "cseq_bwd_warps" if Lc else "seq_bwd_warps")

        def launch(progs, scratch, dl_, hb_, c0, n_cp, nr, rows, **kw):
            if tile:
                _bwd_tile_kernel[(progs,)](*ptrs, dout, dl_, *grads, scratch, hb_, gb, dsum, L, LC, nc, n_cp, c0, nr,
                                           dim, cpg, nblk, n_gd, rows, slot, 1, *strides, **kw, TT=TT,
                                           num_warps=warps, **_maxnreg("tile_bwd_maxnreg"))
            else:
                _bwd_seq_kernel[(progs,)](*ptrs, dout, dl_, *grads, scratch, hb_, gb, dsum, L, LC, nc, n_cp, c0, nr,
                                          dim, cpg, nblk, n_gd, rows, *strides, **kw,
                                          FAST=scan_config.use_fast_softplus(delta), num_warps=warps)
        nr = batch * nc

        def tile_rows(n):  # the persistent tiled backward's row stride for n rows
            return max(1, min(n, _tile_programs(u.device, "tile_bwd_progs_per_sm") // n_gd))
        if tile:  # one scratch for both passes, sized for the main pass (pass 1 has fewer rows)
            rows = tile_rows(nr)
            scratch = torch.empty(rows * n_gd * slot, **f32)
        else:
            rows = _seq_bwd_rows(nr, n_gd, (LC - 1) * BLOCK_D * BN * 4, warps, u.device,
                                 "cseq_bwd" if Lc else "seq_bwd")
            scratch = torch.empty(max(1, rows * n_gd * (LC - 1) * BLOCK_D * BN), **f32)
        gb = dsum = dmy
        if nc > 1:  # pass 1: chunks 1 .. nc-1's start adjoints from zero; combine -> end adjoints of chunks 0..nc-2
            gb = torch.empty(batch, nc - 1, dim, N, **f32)
            dsum = torch.empty(batch, nc - 1, dim, **f32)
            nr1 = batch * (nc - 1)
            rows1 = tile_rows(nr1) if tile else nr1
            pass1 = dict(meta, HAS_D=False, HAS_H0=False, HAS_DLAST=False)
            launch(rows1 * n_gd, scratch if tile else dmy, dmy, dmy, 1, nc - 1, nr1, rows1, **pass1, CSEQ=False,
                   ADJ_ONLY=True)
            _combine_chunks(dl, gb, dsum, ptrs[2], reverse=True)
        launch(rows * n_gd, scratch, opt(dl), opt(chunk_states) if nc > 1 else dmy, 0, nc, nr, rows, **meta,
               CSEQ=nc > 1, ADJ_ONLY=False, **({} if tile else _maxnreg("seq_bwd_maxnreg")))
    else:
        bpp = max(1, (batch * G * nblk) // 2048)
        _bwd_kernel[(triton.cdiv(batch, bpp), G * nblk)](
            *ptrs, opt(chunk_states), dout, opt(dl), *grads, L, nchunks, batch, dim, cpg, nblk, bpp, *strides,
            T_C=T_C, **meta, num_warps=scan_config._CFG.get("bwd_warps", 4))
    dB = dB4.reshape(B.shape).to(B.dtype) if b_var else dB4
    dC = dC4.reshape(C.shape).to(C.dtype) if c_var else dC4
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0
