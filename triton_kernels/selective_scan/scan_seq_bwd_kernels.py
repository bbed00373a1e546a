"""Sequential-in-time Triton backward of the selective scan for short sequences (``scan.py`` picks it when
``use_seq_bwd(seqlen)``, by default seqlen <= 32, and the tiled backward is not taken: ``use_tile_bwd``); the
forward kernels are in ``scan_seq_kernels.py``.

Backward (``_bwd_seq_kernel``): the adjoint runs backwards in time and needs h_{t-1} and h_t at every step, but
Triton cannot index a register tile by a loop variable, so the states of one sequence cannot be kept in registers.
Pass 1 (forward in time) recomputes h_t exactly as the forward does and writes h_0 .. h_{L-2} (float32) to a
per-program SCRATCH slot in global memory; pass 2 (reverse in time) keeps h_t in registers, loads h_{t-1} from
the slot (h0 or zeros at t = 0) and runs the adjoint with g_t = dL/dh_t = carry + dy_t C_t, carry = a_t g_t.
Unlike recomputing the prefix at every step (O(L^2) exponentials) or inverting the recurrence
(h_{t-1} = (h_t - b_t) / a_t, unstable for small a_t), the scratch costs one float32 store and load per state.
The kernel is PERSISTENT: the grid is about (programs per SM x SMs), program p owns one (group, channel block)
and walks the batch rows p // n_gd, p // n_gd + n_rows, ...; it reuses slot p for every row, so the whole
scratch (n_programs x (L - 1) x BLOCK_D x BLOCK_N float32) is written and read in place and can stay in L2
instead of streaming to HBM, and dA/dD/d(delta_bias)/fixed dB/dC accumulate in registers over all the program's
rows and are added atomically once at the end. Barriers: one between the passes (a state may be read by another
thread than the one that wrote it) and one before each row's pass 1 (write-after-read on the slot).
"""
import triton
import triton.language as tl

from .scan_common import (_adjoint_step, _bwd_prologue, _delta, _flush_grads, _load_state, _row_chunk, _row_ptrs,
                          _sigmoid, _store_or_add, _var_bc_ptrs, _zero_grads)


@triton.jit(do_not_specialize=["L", "NC", "n_cp", "c0", "n_rowtot", "n_rows"])
def _bwd_seq_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, dout_ptr, dlast_ptr,
                    du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr, dh0_ptr, scr_ptr,
                    hb_ptr, gb_ptr, dsum_ptr,
                    L, LC, NC, n_cp, c0, n_rowtot, dim, cpg, nblk, n_gd, n_rows,
                    su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t, so_b, so_d, so_t,
                    sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3, sdB0, sdB1, sdB2, sdB3, sdC0, sdC1, sdC2, sdC3,
                    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                    HAS_DLAST: tl.constexpr, VAR_ATOMIC: tl.constexpr, CSEQ: tl.constexpr, ADJ_ONLY: tl.constexpr,
                    FAST: tl.constexpr = False):
    """Sequential-in-time backward, persistent over rows (design in the module docstring). Same outputs and
    buffer conventions as ``_bwd_kernel``; program p owns (group, channel block) p % n_gd. FAST: the approximate
    softplus and sigmoids (``_softplus``, ``_sigmoid``; CUDA, half-precision delta), as the forward.

    A row is one time chunk of one batch row: row r < n_rowtot is chunk c = r % n_cp + c0 of batch row r // n_cp,
    steps c * LC .. min((c + 1) * LC, L) - 1 of NC chunks (NC = 1, LC = L, n_cp = 1, c0 = 0: whole sequences).
    CSEQ: chunk c > 0 starts from hb[b, c - 1] (forward boundary states, (batch, NC - 1, dim, N)) instead of h0,
    and chunk c < NC - 1 receives the adjoint gb[b, c] (the gradient of its end state through the later chunks)
    instead of dlast; d initial_state is chunk 0's. ADJ_ONLY (pass 1, c0 = 1, n_cp = NC - 1): only the adjoint
    from a zero end adjoint, no h, no gradients; stores the chunk's d(start state) into gb[b, c - 1] and its delta
    sum into dsum[b, c - 1]."""
    pid, i_r, i_g, o_c, m_d, o_d, o_n, m_n, m_dn, b_A2, b_D, b_bias, b_B, b_C = _bwd_prologue(
        n_gd, nblk, cpg, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr, sB0, sB1, sC0, sC1, N, BLOCK_D, BLOCK_N, B_VAR, C_VAR,
        HAS_D, HAS_BIAS)
    # this program's scratch slot: (LC - 1) tiles of [BLOCK_D, BLOCK_N] float32
    TILE: tl.constexpr = BLOCK_D * BLOCK_N
    s_base = scr_ptr + pid.to(tl.int64) * (LC - 1) * TILE
    o_s = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + o_n[None, :]
    # int32 [BLOCK_D, BLOCK_N] offsets + int64 scalar bases (keeps 64-bit pointer tiles out of the loops)
    o_dn0 = o_d[:, None] * N + o_n[None, :]
    acc_dA, acc_dB, acc_dC, acc_dD, acc_db = _zero_grads(BLOCK_D, BLOCK_N)
    n_it = tl.cdiv(n_rowtot - i_r, n_rows)
    for k in range(0, n_it):
        i_b, i_c, t0, n_t = _row_chunk(i_r + k * n_rows, n_cp, c0, LC, L)
        r_dn = i_b * dim * N
        rb_d = (i_b * (NC - 1) + i_c - 1) * dim  # hb[b, c - 1] / gb[b, c - 1] / dsum[b, c - 1]
        rb_dn = rb_d * N
        f_c = (o_n * 0 + i_c)[None, :]  # the chunk index as a [1, BLOCK_N] tile (the interpreter masks with tiles)
        p_B = _var_bc_ptrs(B_ptr, i_b, i_g, o_n, sB0, sB1, sB2) + t0 * sB3
        p_C = _var_bc_ptrs(C_ptr, i_b, i_g, o_n, sC0, sC1, sC2) + t0 * sC3
        p_u, p_dt, p_z = _row_ptrs(u_ptr, dt_ptr, z_ptr, i_b, o_d, su_b, su_d, sdt_b, sdt_d, sz_b, sz_d)
        p_u, p_dt, p_z = p_u + t0 * su_t, p_dt + t0 * sdt_t, p_z + t0 * sz_t
        p_do = dout_ptr + i_b * so_b + o_d * so_d + t0 * so_t
        if ADJ_ONLY:
            _adjoint_only(p_dt, p_z, p_do, p_C, gb_ptr + rb_dn + o_dn0, dsum_ptr + rb_d + o_d, b_A2, b_bias,
                          b_C, m_d, m_n, m_dn, n_t, sdt_t, sz_t, so_t, sC3, BLOCK_D, BLOCK_N, C_VAR, HAS_Z, HAS_BIAS,
                          SOFTPLUS, FAST)
        else:
            o_o = (i_b * dim + o_d) * L + t0
            p_dB = dB_ptr + i_b * sdB0 + i_g * sdB1 + o_n * sdB2 + t0 * sdB3
            p_dC = dC_ptr + i_b * sdC0 + i_g * sdC1 + o_n * sdC2 + t0 * sdC3
            tl.debug_barrier()  # the previous row's pass 2 has read the slot before pass 1 overwrites it
            b_h = _load_state(h0_ptr + r_dn, o_dn0, m_dn & (f_c == 0), HAS_H0, BLOCK_D, BLOCK_N)
            if CSEQ:
                b_h += tl.load(hb_ptr + rb_dn + o_dn0, mask=m_dn & (f_c > 0), other=0.0)
            # ---- pass 1, forward in time: h_t for t = 0 .. n_t-2 into the slot; h_{n_t-1} stays in registers
            n_u = tl.load(p_u, mask=m_d, other=0.0)
            n_dt = tl.load(p_dt, mask=m_d, other=0.0)
            if B_VAR:
                n_B = tl.load(p_B, mask=m_n, other=0.0)
            for t in range(0, n_t):
                b_u, b_dt = n_u.to(tl.float32), n_dt.to(tl.float32)
                m_d1 = m_d & (o_c * 0 + t + 1 < n_t)
                n_u = tl.load(p_u + (t + 1) * su_t, mask=m_d1, other=0.0)
                n_dt = tl.load(p_dt + (t + 1) * sdt_t, mask=m_d1, other=0.0)
                if B_VAR:
                    b_Bt = n_B.to(tl.float32)[None, :]
                    n_B = tl.load(p_B + (t + 1) * sB3, mask=m_n & (o_n * 0 + t + 1 < n_t), other=0.0)
                else:
                    b_Bt = b_B
                b_dtr, b_dt = _delta(b_dt, b_bias, HAS_BIAS, SOFTPLUS, FAST)
                b_h = tl.exp2(b_dt[:, None] * b_A2) * b_h + (b_dt * b_u)[:, None] * b_Bt
                if t < n_t - 1:
                    tl.store(s_base + t * TILE + o_s, b_h, eviction_policy="evict_last")
            tl.debug_barrier()  # pass 2 may read a state another thread wrote
            # ---- pass 2, reverse in time; step t - 1's inputs and state are prefetched while step t is computed
            b_carry = _load_state(dlast_ptr + r_dn, o_dn0, m_dn & (f_c == NC - 1), HAS_DLAST, BLOCK_D, BLOCK_N)
            if CSEQ:
                b_carry += tl.load(gb_ptr + rb_dn + dim * N + o_dn0, mask=m_dn & (f_c < NC - 1), other=0.0)
            t = n_t - 1
            n_u = tl.load(p_u + t * su_t, mask=m_d, other=0.0)
            n_dt = tl.load(p_dt + t * sdt_t, mask=m_d, other=0.0)
            n_do = tl.load(p_do + t * so_t, mask=m_d, other=0.0)
            if HAS_Z:
                n_z = tl.load(p_z + t * sz_t, mask=m_d, other=0.0)
            if B_VAR:
                n_B = tl.load(p_B + t * sB3, mask=m_n, other=0.0)
            if C_VAR:
                n_C = tl.load(p_C + t * sC3, mask=m_n, other=0.0)
            n_hp = _load_state_before(s_base, o_s, h0_ptr + r_dn, hb_ptr + rb_dn, o_dn0, m_dn, o_n, f_c, t - 1, TILE,
                                      HAS_H0, CSEQ)
            for ti in range(0, n_t):
                t = n_t - 1 - ti
                b_u, b_dtr, b_do, b_hp = n_u.to(tl.float32), n_dt.to(tl.float32), n_do.to(tl.float32), n_hp
                m_d1 = m_d & (o_c * 0 + t >= 1)
                n_u = tl.load(p_u + (t - 1) * su_t, mask=m_d1, other=0.0)
                n_dt = tl.load(p_dt + (t - 1) * sdt_t, mask=m_d1, other=0.0)
                n_do = tl.load(p_do + (t - 1) * so_t, mask=m_d1, other=0.0)
                if HAS_Z:
                    b_z = n_z.to(tl.float32)
                    n_z = tl.load(p_z + (t - 1) * sz_t, mask=m_d1, other=0.0)
                if B_VAR:
                    b_Bt = n_B.to(tl.float32)[None, :]
                    n_B = tl.load(p_B + (t - 1) * sB3, mask=m_n & (o_n * 0 + t >= 1), other=0.0)
                else:
                    b_Bt = b_B
                if C_VAR:
                    b_Ct = n_C.to(tl.float32)[None, :]
                    n_C = tl.load(p_C + (t - 1) * sC3, mask=m_n & (o_n * 0 + t >= 1), other=0.0)
                else:
                    b_Ct = b_C
                n_hp = _load_state_before(s_base, o_s, h0_ptr + r_dn, hb_ptr + rb_dn, o_dn0, m_dn, o_n, f_c, t - 2,
                                          TILE, HAS_H0, CSEQ)
                b_dtr, b_dt = _delta(b_dtr, b_bias, HAS_BIAS, SOFTPLUS, FAST)
                b_a = tl.exp2(b_dt[:, None] * b_A2)
                b_ah = b_a * b_hp  # a_t h_{t-1}
                if HAS_Z:
                    b_sig = _sigmoid(b_z, FAST)
                    b_y = tl.sum(b_h * b_Ct, 1)
                    if HAS_D:
                        b_y += b_D * b_u
                    b_dz = b_do * b_y * b_sig * (1.0 + b_z * (1.0 - b_sig))
                    tl.store(dz_ptr + o_o + t, b_dz.to(dz_ptr.dtype.element_ty), mask=m_d)
                    b_dy = b_do * b_z * b_sig
                else:
                    b_dy = b_do
                b_g, b_gah, b_ddt, b_du = _adjoint_step(b_carry, b_dy, b_u, b_dt, b_Bt, b_Ct, b_ah, b_A2, b_D, HAS_D)
                if HAS_D:
                    acc_dD += b_dy * b_u
                acc_dA += b_gah * b_dt[:, None]
                if SOFTPLUS:
                    b_ddt = b_ddt * _sigmoid(b_dtr, FAST)
                if HAS_BIAS:
                    acc_db += b_ddt
                tl.store(du_ptr + o_o + t, b_du.to(du_ptr.dtype.element_ty), mask=m_d)
                tl.store(ddt_ptr + o_o + t, b_ddt.to(ddt_ptr.dtype.element_ty), mask=m_d)
                if B_VAR:
                    b_dB = tl.sum(b_g * (b_dt * b_u)[:, None], 0)
                    _store_or_add(p_dB + t * sdB3, b_dB, m_n, VAR_ATOMIC)
                else:
                    acc_dB += b_g * (b_dt * b_u)[:, None]
                if C_VAR:
                    b_dC = tl.sum(b_dy[:, None] * b_h, 0)
                    _store_or_add(p_dC + t * sdC3, b_dC, m_n, VAR_ATOMIC)
                else:
                    acc_dC += b_dy[:, None] * b_h
                b_carry = b_a * b_g  # dL/dh_{t-1} through h_t
                b_h = b_hp
            if HAS_H0:
                tl.store(dh0_ptr + r_dn + o_dn0, b_carry, mask=m_dn & (f_c == 0))
    if not ADJ_ONLY:
        _flush_grads(dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, acc_dA, acc_dB, acc_dC, acc_dD, acc_db, o_d, o_dn0,
                     m_d, m_dn, B_VAR, C_VAR, HAS_D, HAS_BIAS)


@triton.jit
def _load_state_before(s_base, o_s, p_h0, p_hb, o_dn0, m_dn, o_n, f_c, tp, TILE: tl.constexpr,
                       HAS_H0: tl.constexpr, CSEQ: tl.constexpr):
    """h_tp of the row in the backward's pass 2: scratch slot tp for tp >= 0; for tp = -1 the state entering the
    chunk (initial_state for chunk 0 when given, the forward's boundary state hb for chunks > 0 under CSEQ, else 0)."""
    b_h = tl.load(s_base + tp * TILE + o_s, mask=m_dn & (o_n * 0 + tp >= 0)[None, :], other=0.0,
                  eviction_policy="evict_last")
    if HAS_H0:
        b_h += tl.load(p_h0 + o_dn0, mask=m_dn & (o_n * 0 + tp == -1)[None, :] & (f_c == 0), other=0.0)
    if CSEQ:
        b_h += tl.load(p_hb + o_dn0, mask=m_dn & (o_n * 0 + tp == -1)[None, :] & (f_c > 0), other=0.0)
    return b_h


@triton.jit
def _adjoint_only(p_dt, p_z, p_do, p_C, p_g, p_s, b_A2, b_bias, b_C, m_d, m_n, m_dn, n_t, sdt_t, sz_t, so_t, sC3,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, C_VAR: tl.constexpr, HAS_Z: tl.constexpr,
                  HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """Pass 1 of the chunk-parallel backward for one chunk: the adjoint g_t = a_{t+1} g_{t+1} + dy_t C_t from a
    zero end adjoint (no h needed); stores a_0 g_0 (the chunk's outputs' gradient of its start state) at ``p_g`` and
    the chunk's delta sum at ``p_s``."""
    b_carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    b_dts = tl.zeros([BLOCK_D], dtype=tl.float32)
    for ti in range(0, n_t):
        t = n_t - 1 - ti
        b_dtr, b_dt = _delta(tl.load(p_dt + t * sdt_t, mask=m_d, other=0.0).to(tl.float32), b_bias, HAS_BIAS,
                             SOFTPLUS, FAST)
        b_dy = tl.load(p_do + t * so_t, mask=m_d, other=0.0).to(tl.float32)
        if HAS_Z:
            b_z = tl.load(p_z + t * sz_t, mask=m_d, other=0.0).to(tl.float32)
            b_dy = b_dy * b_z * _sigmoid(b_z, FAST)
        if C_VAR:
            b_Ct = tl.load(p_C + t * sC3, mask=m_n, other=0.0).to(tl.float32)[None, :]
        else:
            b_Ct = b_C
        b_carry = tl.exp2(b_dt[:, None] * b_A2) * (b_carry + b_dy[:, None] * b_Ct)
        b_dts += b_dt
    tl.store(p_g, b_carry, mask=m_dn)
    tl.store(p_s, b_dts, mask=m_d)
