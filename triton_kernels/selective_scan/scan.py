"""Chunked selective scan (S6) in Triton: the launchers of the kernels in ``scan_kernels.py`` and, for short
sequences (``use_seq_fwd`` / ``use_seq_bwd``, seqlen <= 32 by default), of the sequential-in-time kernels in
``scan_seq_kernels.py`` (state in registers; the backward is persistent with a per-program scratch of the states).

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
block covers the group, else added atomically per chunk. Results are therefore deterministic only up to
float32 summation order in those gradients.

Launchers (plain functions, no autograd): ``selective_scan_fwd`` and ``selective_scan_bwd``; ``chunk_len``
gives the chunk length both use.
"""
import functools
import os

import torch
import triton

from .._config import env_int_config
from .scan_kernels import _bwd_kernel, _combine, _fwd_kernel
from .scan_seq_kernels import _bwd_seq_kernel, _chunk_combine_kernel, _fwd_seq_kernel


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


_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if _INTERPRET:
    _vectorize_interpreter_scan()


# ---- launchers --------------------------------------------------------------------------------------------

def _env_config():
    """Optional overrides for tuning sweeps, e.g.
    M2S2L_SCAN_CFG="chunk=16,fwd_block_d=16,bwd_block_d=8,fwd_warps=4,bwd_warps=4" (chunk is capped by the sequence
    length; block sizes must be powers of two); the sequential forward: seq=0|1 (both directions), seq_max_len,
    seq_block_d, seq_warps; the sequential backward: seq_bwd=0|1 (overrides seq for the backward only),
    seq_bwd_block_d, seq_bwd_warps, seq_bwd_progs_per_sm, seq_bwd_programs (total program target), seq_bwd_maxnreg
    (register cap passed to the compiler; unset = none: sm_90 AOT shows 255 registers unconstrained); the
    chunk-parallel sequential scan (``cseq_chunk``): cseq=0|1, cseq_min_len, cseq_chunk, cseq_max_chunks,
    cseq_block_d, cseq_warps, cseq_bwd_block_d, cseq_bwd_warps, cseq_bwd_programs, cseq_combine_block_d."""
    return env_int_config("M2S2L_SCAN_CFG")


_CFG = _env_config()


def _pow2(x):
    return triton.next_power_of_2(max(int(x), 1))


def chunk_len(seqlen, dstate):
    """Chunk length T_C shared by the forward (where it saves states) and the backward."""
    bn = max(2, _pow2(dstate))
    tc = _CFG.get("chunk") or (16 if bn <= 16 else (8 if bn <= 64 else 4))
    return max(2, min(tc, _pow2(seqlen)))


def cseq_chunk(seqlen):
    """Chunk length Lc of the chunk-parallel sequential scan ("cseq") for this seqlen, or 0 when it is not used.

    cseq splits time into chunks of Lc steps and runs the sequential kernels on every (batch row, chunk, channel
    block) at once: the forward in two passes (chunk end states from zero, then the outputs from the combined
    chunk start states), the backward likewise (chunk start adjoints from zero, then the full backward per chunk);
    the diagonal A makes a chunk's effect on the state h_end = exp(A * sum(delta)) h_start + h_local. Both
    directions use it for the same lengths, so the backward gets the forward's chunk-boundary states.
    On by default for seqlen >= 1024 (cseq_min_len) with Lc = 32 (cseq_chunk): NVIDIA H200, bench/tune_scan.py
    --cseq, bf16, N 16, same run: (16, 192, 4096) fwd 1.055 -> 0.641 ms, fwd+bwd 6.50 -> 2.92 ms; (8, 2048, 2048)
    fwd 3.155 -> 1.510, fwd+bwd 12.68 -> 7.45 ms (Lc 32 was the best fwd+bwd chunk on both; forward alone prefers
    256-512, but the backward needs the forward's chunking). Shorter sequences were not measured with it and keep
    the other kernels. M2S2L_SCAN_CFG cseq=1 forces it on for every length, cseq=0 off, cseq_min_len=M sets the
    threshold. Lc is grown so that there are at most cseq_max_chunks (default 1024) chunks (saved states and the
    combine's serial steps stay bounded)."""
    on = _CFG.get("cseq")
    if on is None:
        on = seqlen >= _CFG.get("cseq_min_len", 1024)
    if not on:
        return 0
    lc = max(1, _CFG.get("cseq_chunk", 32))
    return max(lc, triton.cdiv(seqlen, max(1, _CFG.get("cseq_max_chunks", 1024))))


def saved_state_count(seqlen, dstate):
    """The number of chunk states ``selective_scan_fwd(..., save_states=True)`` returns per (batch row, channel)
    (the chunk_states shape is (batch, count, dim, dstate); count 0 means None)."""
    lc = cseq_chunk(seqlen)
    return triton.cdiv(seqlen, lc or chunk_len(seqlen, dstate)) - 1


@functools.lru_cache(maxsize=None)
def _num_sms(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _fill(bd, cpg, rows, device, min_bd):
    """Halve the channel block while the grid has fewer than 4 programs per SM (e.g. (16, 192, 4096): 192
    programs of 16 channels left an H200 (132 SMs, 2-3 resident programs each) under half busy)."""
    while bd > min_bd and rows * triton.cdiv(cpg, bd) < 4 * _num_sms(device):
        bd //= 2
    return bd


def _block_d(cpg, seqlen, dstate, budget, key, rows, device):
    if key in _CFG:
        return _CFG[key]
    if _INTERPRET:  # CPU tests: numpy cost is per op, not per element, so take whole groups
        return max(2, min(_pow2(cpg), 256))
    tile = chunk_len(seqlen, dstate) * max(2, _pow2(dstate))
    return _fill(max(2, min(_pow2(cpg), max(budget // tile, 1), 64)), cpg, rows, device, 4)


def use_seq_fwd(seqlen):
    """Whether the forward runs the sequential-in-time kernel (short sequences; the chunked scan's per-chunk
    shared-memory/shuffle traffic dominates there). Override: M2S2L_SCAN_CFG seq=0|1 or seq_max_len=..."""
    if "seq" in _CFG:
        return bool(_CFG["seq"])
    return seqlen <= _CFG.get("seq_max_len", 32)


def _seq_block_d(cpg, dstate, rows, device, key="seq_block_d"):
    if key in _CFG:
        return _CFG[key]
    if _INTERPRET:
        return max(2, min(_pow2(cpg), 256))
    return _fill(max(2, min(_pow2(cpg), max(2048 // max(2, _pow2(dstate)), 1), 64)), cpg, rows, device, 16)


def _seq_warps(block_d, dstate):
    """2 warps for tiles up to 64 x 16 (measured on an H200 with tune_scan.py: (16384, 128, 8) 0.188 ms vs 0.340
    ms at 4 warps, (4096, 256, 16) 0.218 vs 0.323); larger tiles keep 4 (not measured)."""
    return 2 if block_d * max(2, _pow2(dstate)) <= 1024 else 4


def use_seq_bwd(seqlen):
    """Whether the backward runs the sequential-in-time kernel: as the forward (``use_seq_fwd``) unless
    M2S2L_SCAN_CFG seq_bwd=0|1 says otherwise."""
    if "seq_bwd" in _CFG:
        return bool(_CFG["seq_bwd"])
    return use_seq_fwd(seqlen)


def _seq_bwd_block_d(cpg, dstate, key="seq_bwd_block_d"):
    """A whole group's channels when that tile has at most 2048 state values (128 x 16 at dstate 16): dB/dC then
    need no atomics. Else tiles of 512 values (32 x 16), one warp. H200 sweep (bench/tune_scan.py --modes bwd,
    bf16): (16384, 128, 8) 1.12 ms at 128 x 16 vs 1.46 at 32 x 16; (262144, 64, 4) 4.46 vs 5.93; (65536, 128, 4)
    2.27 vs 2.90; where the group is wider than 128 channels 32 x 16 was best ((16384, 256, 4) 1.46 vs 1.65 at
    128; (4096, 256, 16) 1.56 vs 1.73)."""
    if key in _CFG:
        return _CFG[key]
    if _INTERPRET:
        return max(2, min(_pow2(cpg), 256))
    n2 = max(2, _pow2(dstate))
    if _pow2(cpg) * n2 <= 2048:
        return max(2, _pow2(cpg))
    return max(2, min(_pow2(cpg), max(512 // n2, 1), 64))


def _seq_bwd_warps(block_d, dstate, key="seq_bwd_warps"):
    return _CFG.get(key, max(1, min(8, block_d * max(2, _pow2(dstate)) // 512)))


def _seq_bwd_rows(batch, n_gd, slot_bytes, warps, device, prefix="seq_bwd"):
    """Batch-row stride of the persistent backward; programs = rows x n_gd. Target: seq_bwd_programs, else
    seq_bwd_progs_per_sm x SMs, else 8 warps per SM (what fits at the 255 registers the sm_90 AOT compile shows, so
    one wave) with the scratch capped at 32 MiB (to stay in L2)."""
    sms = _num_sms(device)
    if prefix + "_programs" in _CFG:
        target = _CFG[prefix + "_programs"]
    elif prefix + "_progs_per_sm" in _CFG:
        target = _CFG[prefix + "_progs_per_sm"] * sms
    elif prefix == "cseq_bwd":
        # H200, tune_scan --cseq: 16 programs per SM (LM fwd+bwd at 32-step chunks 7.45 ms vs 9.09 ms with the 32 MiB
        # cap below; 134 MB of scratch there); capped at 256 MiB of scratch, which binds only for longer chunks
        # (seqlen > 32768 grows the chunk: 2^20 steps -> 1025-step chunks) or dstate > 32
        target = min(16 * sms, max(sms, (256 << 20) // max(slot_bytes, 1)))
    else:
        target = min(max(1, 8 // warps) * sms, max(sms, (32 << 20) // max(slot_bytes, 1)))
    return max(1, min(batch, target // n_gd))


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


def _dummy(ref):
    return torch.zeros(1, device=ref.device, dtype=torch.float32)


def _combine_chunks(x0, X, dsum, A, reverse):
    """In place on X (batch, nb, dim, N): the sequential combine over chunk boundaries (``_chunk_combine_kernel``)."""
    batch, nb, dim, N = X.shape
    BN = max(2, _pow2(N))
    bd = _CFG.get("cseq_combine_block_d") or max(1, min(_pow2(dim), (4096 if _INTERPRET else 512) // BN))
    _chunk_combine_kernel[(batch, triton.cdiv(dim, bd))](x0 if x0 is not None else _dummy(X), X, dsum, A, dim, nb,
                                                        N=N, BLOCK_D=bd, BLOCK_N=BN, HAS_X0=x0 is not None,
                                                        REVERSE=reverse, num_warps=4)


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                       delta_softplus=False, return_last_state=False, save_states=False):
    """Forward launcher. Shapes as in ``m2s2l.ops.selective_scan_fn`` (arguments assumed validated).

    Returns (out (batch, dim, L) in u's dtype, last_state (batch, dim, N) float32 or None,
    chunk_states (batch, nchunks - 1, dim, N) float32 or None — the states entering chunks 1.., for the backward;
    chunks of ``chunk_len`` steps, or of ``cseq_chunk`` steps when the chunk-parallel sequential scan runs).
    """
    batch, dim, L, N, B4, b_var, sB, C4, c_var, sC, G, cpg, T_C = _layout(u, A, B, C)
    Lc = cseq_chunk(L)
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
    out = torch.empty(batch, dim, L, device=u.device, dtype=u.dtype)
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
        warps = _CFG.get("cseq_warps" if Lc else "seq_warps", _seq_warps(BLOCK_D, N))
        hb = dsum = dmy
        if nc > 1:  # pass 1: chunks 0 .. nc-2 from zero -> local end states; combine -> states entering chunks 1..
            hb = torch.empty(batch, nc - 1, dim, N, device=u.device, dtype=torch.float32)
            dsum = torch.empty(batch, nc - 1, dim, device=u.device, dtype=torch.float32)
            pass1 = dict(meta, HAS_D=False, HAS_Z=False, HAS_H0=False, STORE_LAST=False)
            _fwd_seq_kernel[(batch * (nc - 1), G * nblk)](*ptrs, hb, dsum, L, Lc, nc, nc - 1, dim, cpg, nblk,
                                                          *strides, **pass1, STATE_ONLY=True, CSEQ=False,
                                                          num_warps=warps)
            _combine_chunks(h0, hb, dsum, A, reverse=False)
            hc = hb if save_states else None
        _fwd_seq_kernel[(batch * nc, G * nblk)](*ptrs, hb, dsum, L, Lc if nc > 1 else L, nc, nc, dim, cpg, nblk,
                                                *strides, **meta, STATE_ONLY=False, CSEQ=nc > 1, num_warps=warps)
    else:
        _fwd_kernel[(batch, G * nblk)](*ptrs, L, nchunks, dim, cpg, nblk, *strides, **meta,
                                       num_warps=_CFG.get("fwd_warps", 4))
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
    Lc = cseq_chunk(L)
    nc = triton.cdiv(L, Lc) if Lc else 1  # cseq chunks (1: one sequential pass)
    seq = bool(Lc) or use_seq_bwd(L)
    BN = max(2, _pow2(N))
    if seq:
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
        warps = _seq_bwd_warps(BLOCK_D, N, "cseq_bwd_warps" if Lc else "seq_bwd_warps")
        LC = Lc if nc > 1 else L
        gb = dsum = dmy
        if nc > 1:  # pass 1: chunks 1 .. nc-1's start adjoints from zero; combine -> end adjoints of chunks 0..nc-2
            gb = torch.empty(batch, nc - 1, dim, N, **f32)
            dsum = torch.empty(batch, nc - 1, dim, **f32)
            nr = batch * (nc - 1)
            pass1 = dict(meta, HAS_D=False, HAS_H0=False, HAS_DLAST=False)
            _bwd_seq_kernel[(nr * n_gd,)](*ptrs, dout, dmy, *grads, dmy, dmy, gb, dsum, L, LC, nc, nc - 1, 1, nr,
                                          dim, cpg, nblk, n_gd, nr, *strides, **pass1, CSEQ=False, ADJ_ONLY=True,
                                          num_warps=warps)
            _combine_chunks(dl, gb, dsum, ptrs[2], reverse=True)
        nr = batch * nc
        rows = _seq_bwd_rows(nr, n_gd, (LC - 1) * BLOCK_D * BN * 4, warps, u.device, "cseq_bwd" if Lc else "seq_bwd")
        scratch = torch.empty(max(1, rows * n_gd * (LC - 1) * BLOCK_D * BN), **f32)
        extra = {"maxnreg": _CFG["seq_bwd_maxnreg"]} if "seq_bwd_maxnreg" in _CFG else {}
        _bwd_seq_kernel[(rows * n_gd,)](*ptrs, dout, opt(dl), *grads, scratch, opt(chunk_states) if nc > 1 else dmy,
                                        gb, dsum, L, LC, nc, nc, 0, nr, dim, cpg, nblk, n_gd, rows, *strides, **meta,
                                        CSEQ=nc > 1, ADJ_ONLY=False, num_warps=warps, **extra)
    else:
        bpp = max(1, (batch * G * nblk) // 2048)
        _bwd_kernel[(triton.cdiv(batch, bpp), G * nblk)](
            *ptrs, opt(chunk_states), dout, opt(dl), *grads, L, nchunks, batch, dim, cpg, nblk, bpp, *strides,
            T_C=T_C, **meta, num_warps=_CFG.get("bwd_warps", 4))
    dB = dB4.reshape(B.shape).to(B.dtype) if b_var else dB4
    dC = dC4.reshape(C.shape).to(C.dtype) if c_var else dC4
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0
