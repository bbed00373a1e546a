"""Sequential-in-time Triton forward kernels of the selective scan for short sequences (``scan.py`` picks them when
``use_seq_fwd(seqlen)``, by default seqlen <= 32, and launches them), and the chunk-state combine of the
chunk-parallel scan.

Forward (``_fwd_seq_kernel``): one program per (batch row, group, channel block); the [BLOCK_D, BLOCK_N] state
stays in registers and the program steps through time (fla's fused_recurrent layout). (The same forward with the
state as [BLOCK_N, BLOCK_D] -- no barrier or shuffle per step in the sm_90 compile -- measured 0.25-1.01x of this
one on the H200 and was removed: docs/BENCHMARKS.md, session 9.) ``_fwd_last_kernel``: the last step alone of whole
rows of at most 4 steps with all of a row's inputs loaded at once (the video model's temporal scans).

The backward of these kernels (``_bwd_seq_kernel``) is in ``scan_seq_bwd_kernels.py``.
"""
import triton
import triton.language as tl

from .scan_common import (_channel_offsets, _channel_params, _delta, _load_fixed_bc, _load_state, _row_ptrs,
                          _sigmoid, _var_bc_ptrs)


@triton.jit
def _gated_output(b_h, b_Ct, b_u, b_D, b_z, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, FAST: tl.constexpr = False):
    """y = C . h + D u, times silu(z): one step's [BLOCK_D] output from its [BLOCK_D, BLOCK_N] state (FAST: the
    approximate sigmoid, ``_sigmoid``)."""
    b_y = tl.sum(b_h * b_Ct, 1)
    if HAS_D:
        b_y += b_D * b_u
    if HAS_Z:
        b_y = b_y * b_z * _sigmoid(b_z, FAST)
    return b_y


@triton.jit
def _bc_step(n_X, b_X, p_X, t_next, s3, m_next, VAR: tl.constexpr):
    """B or C for the current step and the prefetch of the next: input-dependent (VAR), the prefetched row ``n_X``
    as a float32 [1, BLOCK_N] and ``n_X`` reloaded from step ``t_next`` (masked by ``m_next``); fixed, the tile
    ``b_X`` and ``n_X`` unchanged."""
    if VAR:
        b_Xt = n_X.to(tl.float32)[None, :]
        n_X = tl.load(p_X + t_next * s3, mask=m_next, other=0.0)
    else:
        b_Xt = b_X
    return b_Xt, n_X


@triton.jit
def _seq_fwd_step(t, n_t, b_h, b_dts, n_u, n_dt, n_z, n_B, n_C, b_B, b_C, b_A2, b_D, b_bias, p_u, p_dt, p_z, p_B, p_C,
                  p_o, hc_ptr, i_b, L, dim, o_c, o_d, o_n, m_d, m_n, m_dn, su_t, sdt_t, sz_t, sB3, sC3,
                  N: tl.constexpr, T_C: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr,
                  HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE_CHUNKS: tl.constexpr,
                  STATE_ONLY: tl.constexpr, PER_STEP_Y: tl.constexpr, DECAY: tl.constexpr, FAST: tl.constexpr):
    """Step t of ``_fwd_seq_kernel``: n_* hold step t's inputs (prefetched) and come back holding step t + 1's;
    h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t (without DECAY: h_t = delta_t u_t B_t, step 0 from a zero
    state); with PER_STEP_Y y_t is stored at ``p_o + t``. Returns (h, delta sum, the next step's n_*)."""
    if SAVE_CHUNKS:
        if (t > 0) & (t % T_C == 0):
            hc_off = ((i_b * ((L + T_C - 1) // T_C - 1) + t // T_C - 1) * dim + o_d[:, None]) * N + o_n[None, :]
            tl.store(hc_ptr + hc_off, b_h, mask=m_dn)
    b_u, b_dt = n_u.to(tl.float32), n_dt.to(tl.float32)
    m_dn1 = m_d & (o_c * 0 + t + 1 < n_t)
    m_nn1 = m_n & (o_n * 0 + t + 1 < n_t)
    n_u = tl.load(p_u + (t + 1) * su_t, mask=m_dn1, other=0.0)
    n_dt = tl.load(p_dt + (t + 1) * sdt_t, mask=m_dn1, other=0.0)
    b_Bt, n_B = _bc_step(n_B, b_B, p_B, t + 1, sB3, m_nn1, B_VAR)
    b_dtr, b_dt = _delta(b_dt, b_bias, HAS_BIAS, SOFTPLUS, FAST)
    if DECAY:
        b_h = tl.exp2(b_dt[:, None] * b_A2) * b_h + (b_dt * b_u)[:, None] * b_Bt
    else:
        b_h = (b_dt * b_u)[:, None] * b_Bt
    if STATE_ONLY:
        b_dts += b_dt
    if PER_STEP_Y:
        b_z = b_u  # (unused without z)
        if HAS_Z:
            b_z = n_z.to(tl.float32)
            n_z = tl.load(p_z + (t + 1) * sz_t, mask=m_dn1, other=0.0)
        b_Ct, n_C = _bc_step(n_C, b_C, p_C, t + 1, sC3, m_nn1, C_VAR)
        b_y = _gated_output(b_h, b_Ct, b_u, b_D, b_z, HAS_D, HAS_Z, FAST)
        tl.store(p_o + t, b_y.to(p_o.dtype.element_ty), mask=m_d)
    return b_h, b_dts, n_u, n_dt, n_z, n_B, n_C


@triton.jit(do_not_specialize=["L", "NC", "n_cp"])
def _fwd_seq_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, hlast_ptr, hc_ptr,
                    hb_ptr, dsum_ptr,
                    L, LC, NC, n_cp, dim, cpg, nblk,
                    su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t,
                    sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3,
                    N: tl.constexpr, BLOCK_D: tl.constexpr, T_C: tl.constexpr, BLOCK_N: tl.constexpr,
                    B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                    STORE_LAST: tl.constexpr, SAVE_CHUNKS: tl.constexpr, STATE_ONLY: tl.constexpr,
                    CSEQ: tl.constexpr, LAST_ONLY: tl.constexpr = False, PEEL: tl.constexpr = True,
                    FAST: tl.constexpr = False):
    """Sequential-in-time forward: the [BLOCK_D, BLOCK_N] state stays in registers and the program steps through
    time, loading [BLOCK_D] of u/delta/z and [BLOCK_N] of B/C per step (no scan, no cross-thread traffic except
    the sum over N). Same outputs as ``_fwd_kernel``, including the chunk states (SAVE_CHUNKS, NC == 1 only).

    Program (pid0, i_gd): batch row pid0 // n_cp, time chunk c = pid0 % n_cp of NC chunks of LC steps (NC = 1,
    LC = L: the whole sequence). STATE_ONLY (chunk-parallel pass 1): from a zero state, no outputs; stores the
    chunk's end state into hb[b, c] (batch, NC - 1, dim, N) and its delta sum into dsum[b, c] (batch, NC - 1, dim).
    CSEQ (pass 2): chunk c > 0 starts from hb[b, c - 1] (the combined boundary state), chunk 0 from h0; last_state
    is stored by the last chunk. LAST_ONLY (NC == 1): out is (batch, dim, 1), the last step's output alone, formed
    once from the final state (no per-step C / z loads, sums over N or stores). PEEL: a zero start state's first
    step runs without the decay (see below; False only for A/B runs). FAST: the approximate softplus (``_softplus``;
    CUDA, half-precision delta)."""
    pid = tl.program_id(0)
    i_b, i_c = (pid // n_cp).to(tl.int64), pid % n_cp
    i_gd = tl.program_id(1)
    t0 = i_c.to(tl.int64) * LC  # first step of the chunk
    n_t = tl.minimum(L - i_c * LC, LC)  # steps in the chunk
    i_g, o_c, m_d, o_d, o_n, m_n = _channel_offsets(i_gd, nblk, cpg, N, BLOCK_D, BLOCK_N)
    m_dn = m_d[:, None] & m_n[None, :]
    b_A, b_A2, b_D, b_bias = _channel_params(A_ptr, D_ptr, bias_ptr, o_d, o_n, m_d, m_dn, N, BLOCK_D, HAS_D, HAS_BIAS)
    o_dn = (i_b * dim + o_d[:, None]) * N + o_n[None, :]
    f_c = (o_n * 0 + i_c)[None, :]  # the chunk index as a [1, BLOCK_N] tile (the interpreter masks with tiles)
    b_h = _load_state(h0_ptr, o_dn, m_dn & (f_c == 0), HAS_H0, BLOCK_D, BLOCK_N)
    if CSEQ:
        o_hb = ((i_b * (NC - 1) + i_c - 1) * dim + o_d[:, None]) * N + o_n[None, :]
        b_h += tl.load(hb_ptr + o_hb, mask=m_dn & (f_c > 0), other=0.0)
    p_B = B_ptr  # (placeholders: only the flags' pointer or tile is used)
    p_C = C_ptr
    b_B = b_A2
    b_C = b_A2
    if B_VAR:
        p_B = _var_bc_ptrs(B_ptr, i_b, i_g, o_n, sB0, sB1, sB2) + t0 * sB3
    else:
        b_B = _load_fixed_bc(B_ptr, o_d, o_n, m_dn, sB0, sB1)
    if C_VAR:
        p_C = _var_bc_ptrs(C_ptr, i_b, i_g, o_n, sC0, sC1, sC2) + t0 * sC3
    else:
        b_C = _load_fixed_bc(C_ptr, o_d, o_n, m_dn, sC0, sC1)
    p_u, p_dt, p_z = _row_ptrs(u_ptr, dt_ptr, z_ptr, i_b, o_d, su_b, su_d, sdt_b, sdt_d, sz_b, sz_d)
    p_u, p_dt, p_z = p_u + t0 * su_t, p_dt + t0 * sdt_t, p_z + t0 * sz_t
    p_o = out_ptr + (i_b * dim + o_d) * L + t0
    b_dts = tl.zeros([BLOCK_D], dtype=tl.float32)
    # software prefetch: step t + 1's inputs are loaded while step t is computed
    n_u = tl.load(p_u, mask=m_d, other=0.0)
    n_dt = tl.load(p_dt, mask=m_d, other=0.0)
    PER_STEP_Y: tl.constexpr = not STATE_ONLY and not LAST_ONLY  # outputs formed every step
    n_z = n_u  # placeholders for the flags' absent inputs
    n_B = n_u
    n_C = n_u
    if HAS_Z and PER_STEP_Y:
        n_z = tl.load(p_z, mask=m_d, other=0.0)
    if B_VAR:
        n_B = tl.load(p_B, mask=m_n, other=0.0)
    if C_VAR and PER_STEP_Y:
        n_C = tl.load(p_C, mask=m_n, other=0.0)
    # from a zero state (no h0, no chunk carry-in) step 0 is h_0 = delta_0 u_0 B_0: no decay exponentials (1 / L of
    # them; a quarter at the video model's 4 steps, half at its 2-step scale)
    ZERO_START: tl.constexpr = PEEL and not HAS_H0 and not CSEQ
    if ZERO_START:
        b_h, b_dts, n_u, n_dt, n_z, n_B, n_C = _seq_fwd_step(
            0, n_t, b_h, b_dts, n_u, n_dt, n_z, n_B, n_C, b_B, b_C, b_A2, b_D, b_bias, p_u, p_dt, p_z, p_B, p_C, p_o,
            hc_ptr, i_b, L, dim, o_c, o_d, o_n, m_d, m_n, m_dn, su_t, sdt_t, sz_t, sB3, sC3, N, T_C, B_VAR, C_VAR,
            HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SAVE_CHUNKS, STATE_ONLY, PER_STEP_Y, False, FAST)
    for t in range(1 if ZERO_START else 0, n_t):
        b_h, b_dts, n_u, n_dt, n_z, n_B, n_C = _seq_fwd_step(
            t, n_t, b_h, b_dts, n_u, n_dt, n_z, n_B, n_C, b_B, b_C, b_A2, b_D, b_bias, p_u, p_dt, p_z, p_B, p_C, p_o,
            hc_ptr, i_b, L, dim, o_c, o_d, o_n, m_d, m_n, m_dn, su_t, sdt_t, sz_t, sB3, sC3, N, T_C, B_VAR, C_VAR,
            HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, SAVE_CHUNKS, STATE_ONLY, PER_STEP_Y, True, FAST)
    if LAST_ONLY:  # the last step's output from the final state
        b_u = tl.load(p_u + (n_t - 1) * su_t, mask=m_d, other=0.0).to(tl.float32)
        if C_VAR:
            b_Ct = tl.load(p_C + (n_t - 1) * sC3, mask=m_n, other=0.0).to(tl.float32)[None, :]
        else:
            b_Ct = b_C
        b_z = b_u  # (unused without z)
        if HAS_Z:
            b_z = tl.load(p_z + (n_t - 1) * sz_t, mask=m_d, other=0.0).to(tl.float32)
        b_y = _gated_output(b_h, b_Ct, b_u, b_D, b_z, HAS_D, HAS_Z, FAST)
        tl.store(out_ptr + i_b * dim + o_d, b_y.to(out_ptr.dtype.element_ty), mask=m_d)
    if STATE_ONLY:  # n_cp = NC - 1 programs a row: pid0 = b * (NC - 1) + c
        tl.store(hb_ptr + (pid.to(tl.int64) * dim + o_d[:, None]) * N + o_n[None, :], b_h, mask=m_dn)
        tl.store(dsum_ptr + pid.to(tl.int64) * dim + o_d, b_dts, mask=m_d)
    if STORE_LAST:
        tl.store(hlast_ptr + o_dn, b_h, mask=m_dn & (f_c == NC - 1))


@triton.jit
def _ld_step(p, t, stride, mask, L: tl.constexpr):
    """Step ``t`` of a row (float32; zeros past L: never used)."""
    if t < L:
        return tl.load(p + t * stride, mask=mask, other=0.0).to(tl.float32)
    return tl.zeros(p.shape, dtype=tl.float32)


@triton.jit
def _pick(t, x0, x1, x2, x3):
    """x_t for a compile-time t in 0..3."""
    if t == 0:
        return x0
    elif t == 1:
        return x1
    elif t == 2:
        return x2
    return x3


@triton.jit
def _fwd_last_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, hlast_ptr,
                     dim, cpg, nblk, su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t,
                     sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3,
                     L: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                     STORE_LAST: tl.constexpr, PEEL: tl.constexpr = True, FAST: tl.constexpr = False,
                     ROWS: tl.constexpr = 1, n_rows=1):
    """The last step's output (and last state) of whole rows of L <= 4 steps (a compile-time constant):
    ``_fwd_seq_kernel``'s LAST_ONLY result with every input of the row -- each step's u, delta and
    input-dependent B, the last step's z and C -- loaded at the start, so a program waits for memory once instead of
    once a step (the video model's 2- and 4-step temporal scans: hundreds of thousands of rows of a few steps, bound
    by that latency). Then the state steps through time in registers (unrolled) as in ``_fwd_seq_kernel``; PEEL: a
    zero start state's first step without the decay. Program (row block, group x channel block): ROWS batch rows
    (of ``n_rows``; unrolled) share the program's channel setup (A, D, delta_bias, offsets and masks)."""
    i_gd = tl.program_id(1)
    i_g, o_c, m_d0, o_d, o_n, m_n = _channel_offsets(i_gd, nblk, cpg, N, BLOCK_D, BLOCK_N)
    m_dn0 = m_d0[:, None] & m_n[None, :]
    b_A, b_A2, b_D, b_bias = _channel_params(A_ptr, D_ptr, bias_ptr, o_d, o_n, m_d0, m_dn0, N, BLOCK_D, HAS_D,
                                             HAS_BIAS)
    b_Bf = b_A2  # fixed B / C: loaded once a program
    b_Cf = b_A2
    if not B_VAR:
        b_Bf = _load_fixed_bc(B_ptr, o_d, o_n, m_dn0, sB0, sB1)
    if not C_VAR:
        b_Cf = _load_fixed_bc(C_ptr, o_d, o_n, m_dn0, sC0, sC1)
    for r in tl.static_range(ROWS):
        i_b = tl.program_id(0).to(tl.int64) * ROWS + r
        m_d, m_n_r, m_dn = m_d0, m_n, m_dn0
        if ROWS > 1:  # the last program's rows past n_rows
            m_d = m_d0 & (o_c * 0 + i_b < n_rows)
            m_n_r = m_n & (o_n * 0 + i_b < n_rows)
            m_dn = m_d[:, None] & m_n_r[None, :]
        _last_row(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, h0_ptr, out_ptr, hlast_ptr, i_b, i_g, o_d, o_n, m_d, m_n_r,
                  m_dn, b_A2, b_D, b_bias, b_Bf, b_Cf, dim, su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t,
                  sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3, L, N, BLOCK_D, BLOCK_N, B_VAR, C_VAR, HAS_D, HAS_Z,
                  HAS_BIAS, SOFTPLUS, HAS_H0, STORE_LAST, PEEL, FAST)


@triton.jit
def _last_row(u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, h0_ptr, out_ptr, hlast_ptr, i_b, i_g, o_d, o_n, m_d, m_n, m_dn,
              b_A2, b_D, b_bias, b_Bf, b_Cf, dim, su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t,
              sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3, L: tl.constexpr, N: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_N: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr,
              HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
              STORE_LAST: tl.constexpr, PEEL: tl.constexpr, FAST: tl.constexpr):
    """One batch row of ``_fwd_last_kernel``: load the row's inputs, run its L steps, store its last output."""
    p_u, p_dt, p_z = _row_ptrs(u_ptr, dt_ptr, z_ptr, i_b, o_d, su_b, su_d, sdt_b, sdt_d, sz_b, sz_d)
    u0, u1 = _ld_step(p_u, 0, su_t, m_d, L), _ld_step(p_u, 1, su_t, m_d, L)
    u2, u3 = _ld_step(p_u, 2, su_t, m_d, L), _ld_step(p_u, 3, su_t, m_d, L)
    d0, d1 = _ld_step(p_dt, 0, sdt_t, m_d, L), _ld_step(p_dt, 1, sdt_t, m_d, L)
    d2, d3 = _ld_step(p_dt, 2, sdt_t, m_d, L), _ld_step(p_dt, 3, sdt_t, m_d, L)
    if B_VAR:
        p_B = _var_bc_ptrs(B_ptr, i_b, i_g, o_n, sB0, sB1, sB2)
        B0, B1 = _ld_step(p_B, 0, sB3, m_n, L), _ld_step(p_B, 1, sB3, m_n, L)
        B2, B3 = _ld_step(p_B, 2, sB3, m_n, L), _ld_step(p_B, 3, sB3, m_n, L)
    else:
        B0, B1, B2, B3 = b_Bf, b_Bf, b_Bf, b_Bf
    if C_VAR:
        b_Ct = _ld_step(_var_bc_ptrs(C_ptr, i_b, i_g, o_n, sC0, sC1, sC2), L - 1, sC3, m_n, L)[None, :]
    else:
        b_Ct = b_Cf
    b_z = u0
    if HAS_Z:
        b_z = _ld_step(p_z, L - 1, sz_t, m_d, L)
    o_dn = (i_b * dim + o_d[:, None]) * N + o_n[None, :]
    b_h = _load_state(h0_ptr, o_dn, m_dn, HAS_H0, BLOCK_D, BLOCK_N)
    ZERO_START: tl.constexpr = PEEL and not HAS_H0
    for t in tl.static_range(L):
        _, b_dt = _delta(_pick(t, d0, d1, d2, d3), b_bias, HAS_BIAS, SOFTPLUS, FAST)
        b_Bt = _pick(t, B0, B1, B2, B3)
        if B_VAR:
            b_Bt = b_Bt[None, :]
        b_in = (b_dt * _pick(t, u0, u1, u2, u3))[:, None] * b_Bt
        if ZERO_START and t == 0:
            b_h = b_in
        else:
            b_h = tl.exp2(b_dt[:, None] * b_A2) * b_h + b_in
    b_y = _gated_output(b_h, b_Ct, _pick(L - 1, u0, u1, u2, u3), b_D, b_z, HAS_D, HAS_Z, FAST)
    tl.store(out_ptr + i_b * dim + o_d, b_y.to(out_ptr.dtype.element_ty), mask=m_d)
    if STORE_LAST:
        tl.store(hlast_ptr + o_dn, b_h, mask=m_dn)


@triton.jit
def _chunk_combine_kernel(x0_ptr, x_ptr, dsum_ptr, A_ptr, dim, n_b,
                          N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_X0: tl.constexpr,
                          REVERSE: tl.constexpr):
    """The chunk-parallel scan's sequential combine over chunk boundaries, one program per (batch row, channel
    block): x <- exp(A * dsum[b, j]) * x + X[b, j], X[b, j] <- x for j = 0 .. n_b - 1 (REVERSE: n_b - 1 .. 0),
    in place on X (batch, n_b, dim, N) float32, starting from x0[b] (batch, dim, N) or zeros. Forward: X = the
    chunks' local end states -> the states entering chunks 1..; backward: X = the chunks' local start adjoints ->
    the adjoints of chunks 0..n_b-1's end states."""
    i_b = tl.program_id(0).to(tl.int64)
    o_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    m_d = o_d < dim
    m_dn = m_d[:, None] & (o_n < N)[None, :]
    o_dn = o_d[:, None] * N + o_n[None, :]
    b_A2 = tl.load(A_ptr + o_dn, mask=m_dn, other=0.0) * 1.4426950408889634
    if HAS_X0:
        b_x = tl.load(x0_ptr + i_b * dim * N + o_dn, mask=m_dn, other=0.0)
    else:
        b_x = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for k in range(0, n_b):
        if REVERSE:
            j = n_b - 1 - k
        else:
            j = k
        r = i_b * n_b + j
        b_s = tl.load(dsum_ptr + r * dim + o_d, mask=m_d, other=0.0)
        b_x = tl.exp2(b_s[:, None] * b_A2) * b_x + tl.load(x_ptr + r * dim * N + o_dn, mask=m_dn, other=0.0)
        tl.store(x_ptr + r * dim * N + o_dn, b_x, mask=m_dn)
