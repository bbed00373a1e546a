"""The sequential-in-time forward of the selective scan with the state tile as [BLOCK_N, BLOCK_D] (channels last),
opt-in through ``scan_config.use_seq_nd`` (M2S2L_SCAN_CFG seq_nd=1) until it is timed on a GPU against
``scan_seq_kernels._fwd_seq_kernel``, which it mirrors line for line (same arguments, outputs and buffers); the one
that loses goes.

Why: ``_fwd_seq_kernel``'s [BLOCK_D, BLOCK_N] tile gets a layout with 4 states a thread and 4 threads a channel, so
each step converts its [BLOCK_D] vectors through shared memory (6 bar.sync in the sm_90 PTX) and sums over N with
shuffles. Here no 2-D memory access fixes a coalesced layout (parameters and states are read and written one state
column at a time), so Triton's default layout gives each thread one channel with all its states: the sum over N
stays in registers and the vectors need no conversion (0 bar.sync / shfl / ld.shared; docs/BENCHMARKS.md).
"""
import triton
import triton.language as tl

from .scan_common import _channel_offsets, _delta, _row_ptrs, _var_bc_ptrs


@triton.jit
def _load_cols(ptr, base, s_n, m_d, o_n, N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """The float32 [BLOCK_N, BLOCK_D] tile of ``ptr + base + n * s_n`` (``base`` [BLOCK_D]: the offset of each
    channel's first state; a (dim, N) parameter or a (.., dim, N) state), built from N [BLOCK_D] loads masked by m_d:
    no 2-D load, whose coalesced layout (states split over threads) would become that of the whole recurrence."""
    tile = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for n in tl.static_range(BLOCK_N):
        if n < N:
            col = tl.load(ptr + base + n * s_n, mask=m_d, other=0.0).to(tl.float32)
            tile = tl.where(o_n[:, None] == n, col[None, :], tile)
    return tile


@triton.jit
def _store_cols(ptr, base, tile, m_d, o_n, N: tl.constexpr, BLOCK_N: tl.constexpr):
    """Store a [BLOCK_N, BLOCK_D] state tile to ``ptr + base + n`` (the inverse of ``_load_cols``), one [BLOCK_D]
    store per state; each column is taken out of the tile with an in-thread sum (a thread holds all N states)."""
    for n in tl.static_range(BLOCK_N):
        if n < N:
            col = tl.sum(tl.where(o_n[:, None] == n, tile, 0.0), 0)
            tl.store(ptr + base + n, col, mask=m_d)


@triton.jit(do_not_specialize=["L", "NC", "n_cp"])
def _fwd_seq_nd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, hlast_ptr, hc_ptr,
                       hb_ptr, dsum_ptr,
                       L, LC, NC, n_cp, dim, cpg, nblk,
                       su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t,
                       sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3,
                       N: tl.constexpr, BLOCK_D: tl.constexpr, T_C: tl.constexpr, BLOCK_N: tl.constexpr,
                       B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                       STORE_LAST: tl.constexpr, SAVE_CHUNKS: tl.constexpr, STATE_ONLY: tl.constexpr,
                       CSEQ: tl.constexpr, PREFETCH_BC: tl.constexpr):
    """``_fwd_seq_kernel`` with the state tile transposed to [BLOCK_N, BLOCK_D] (channels last): Triton's default
    layout then spreads the channels over the threads and keeps a channel's BLOCK_N states in one thread, so the
    sum over N stays in registers and the [BLOCK_D] vectors (u, delta, z, y) need no layout conversion per step.
    Same arguments, outputs and buffer layouts (states are still (.., dim, N) in memory)."""
    pid = tl.program_id(0)
    i_b, i_c = (pid // n_cp).to(tl.int64), pid % n_cp
    i_gd = tl.program_id(1)
    t0 = i_c.to(tl.int64) * LC
    n_t = tl.minimum(L - i_c * LC, LC)
    i_g, o_c, m_d, o_d, o_n, m_n = _channel_offsets(i_gd, nblk, cpg, N, BLOCK_D, BLOCK_N)
    b_A2 = _load_cols(A_ptr, o_d * N, 1, m_d, o_n, N, BLOCK_N, BLOCK_D) * 1.4426950408889634
    if HAS_D:
        b_D = tl.load(D_ptr + o_d, mask=m_d, other=0.0)
    if HAS_BIAS:
        b_bias = tl.load(bias_ptr + o_d, mask=m_d, other=0.0)
    else:
        b_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    # every (.., dim, N) state tile is read and written one state column at a time (_load_cols / _store_cols): a
    # 2-D access would impose its coalesced layout (states split over threads) on the whole recurrence
    b_row = (i_b * dim + o_d) * N  # [BLOCK_D] offsets of this row's states
    f_c = o_d * 0 + i_c            # the chunk index as a [BLOCK_D] tile (the interpreter masks with tiles)
    if HAS_H0:
        b_h = _load_cols(h0_ptr, b_row, 1, m_d & (f_c == 0), o_n, N, BLOCK_N, BLOCK_D)
    else:
        b_h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if CSEQ:
        b_hb = ((i_b * (NC - 1) + i_c - 1) * dim + o_d) * N
        b_h += _load_cols(hb_ptr, b_hb, 1, m_d & (f_c > 0), o_n, N, BLOCK_N, BLOCK_D)
    if B_VAR:
        p_B = _var_bc_ptrs(B_ptr, i_b, i_g, o_n, sB0, sB1, sB2) + t0 * sB3
    else:
        b_B = _load_cols(B_ptr, o_d * sB0, sB1, m_d, o_n, N, BLOCK_N, BLOCK_D)
    if C_VAR:
        p_C = _var_bc_ptrs(C_ptr, i_b, i_g, o_n, sC0, sC1, sC2) + t0 * sC3
    else:
        b_C = _load_cols(C_ptr, o_d * sC0, sC1, m_d, o_n, N, BLOCK_N, BLOCK_D)
    p_u, p_dt, p_z = _row_ptrs(u_ptr, dt_ptr, z_ptr, i_b, o_d, su_b, su_d, sdt_b, sdt_d, sz_b, sz_d)
    p_u, p_dt, p_z = p_u + t0 * su_t, p_dt + t0 * sdt_t, p_z + t0 * sz_t
    p_o = out_ptr + (i_b * dim + o_d) * L + t0
    b_dts = tl.zeros([BLOCK_D], dtype=tl.float32)
    n_u = tl.load(p_u, mask=m_d, other=0.0)
    n_dt = tl.load(p_dt, mask=m_d, other=0.0)
    if HAS_Z and not STATE_ONLY:
        n_z = tl.load(p_z, mask=m_d, other=0.0)
    if B_VAR and PREFETCH_BC:
        n_B = tl.load(p_B, mask=m_n, other=0.0)
    if C_VAR and PREFETCH_BC and not STATE_ONLY:
        n_C = tl.load(p_C, mask=m_n, other=0.0)
    for t in range(0, n_t):
        if SAVE_CHUNKS:
            if (t > 0) & (t % T_C == 0):
                b_hc = ((i_b * ((L + T_C - 1) // T_C - 1) + t // T_C - 1) * dim + o_d) * N
                _store_cols(hc_ptr, b_hc, b_h, m_d, o_n, N, BLOCK_N)
        b_u, b_dt = n_u.to(tl.float32), n_dt.to(tl.float32)
        m_dn1 = m_d & (o_c * 0 + t + 1 < n_t)
        m_nn1 = m_n & (o_n * 0 + t + 1 < n_t)
        n_u = tl.load(p_u + (t + 1) * su_t, mask=m_dn1, other=0.0)
        n_dt = tl.load(p_dt + (t + 1) * sdt_t, mask=m_dn1, other=0.0)
        if B_VAR:
            if PREFETCH_BC:
                b_Bt = n_B.to(tl.float32)[:, None]
                n_B = tl.load(p_B + (t + 1) * sB3, mask=m_nn1, other=0.0)
            else:
                b_Bt = tl.load(p_B + t * sB3, mask=m_n, other=0.0).to(tl.float32)[:, None]
        else:
            b_Bt = b_B
        b_dtr, b_dt = _delta(b_dt, b_bias, HAS_BIAS, SOFTPLUS)
        b_h = tl.exp2(b_A2 * b_dt[None, :]) * b_h + b_Bt * (b_dt * b_u)[None, :]
        if STATE_ONLY:
            b_dts += b_dt
        else:
            if HAS_Z:
                b_z = n_z.to(tl.float32)
                n_z = tl.load(p_z + (t + 1) * sz_t, mask=m_dn1, other=0.0)
            if C_VAR:
                if PREFETCH_BC:
                    b_Ct = n_C.to(tl.float32)[:, None]
                    n_C = tl.load(p_C + (t + 1) * sC3, mask=m_nn1, other=0.0)
                else:
                    b_Ct = tl.load(p_C + t * sC3, mask=m_n, other=0.0).to(tl.float32)[:, None]
            else:
                b_Ct = b_C
            b_y = tl.sum(b_h * b_Ct, 0)
            if HAS_D:
                b_y += b_D * b_u
            if HAS_Z:
                b_y = b_y * b_z * tl.sigmoid(b_z)
            tl.store(p_o + t, b_y.to(out_ptr.dtype.element_ty), mask=m_d)
    if STATE_ONLY:
        _store_cols(hb_ptr, (pid.to(tl.int64) * dim + o_d) * N, b_h, m_d, o_n, N, BLOCK_N)
        tl.store(dsum_ptr + pid.to(tl.int64) * dim + o_d, b_dts, mask=m_d)
    if STORE_LAST:
        _store_cols(hlast_ptr, b_row, b_h, m_d & (f_c == NC - 1), o_n, N, BLOCK_N)
