"""Triton kernels of the selective scan (see ``scan.py`` for the work layout, the launchers and the
gradient formulas): the chunked forward and the chunked backward. The sequential-in-time kernels for short
sequences are in ``scan_seq_kernels.py``. Only ``scan.py`` launches them."""
import triton
import triton.language as tl

from .scan_common import (_channel_offsets, _channel_params, _delta, _flush_grads, _load_fixed_bc, _load_state,
                          _row_ptrs, _softplus, _store_or_add, _zero_grads)


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _load_bc(ptr, base_bg, offs_d, offs_n, offs_t, mask_d, mask_n, mask_t, s0, s1, s2, s3, VAR: tl.constexpr):
    """B or C as a [1, T_C, BLOCK_N] (input-dependent) or [BLOCK_D, 1, BLOCK_N] (fixed) float32 tile."""
    if VAR:
        p = ptr + base_bg + offs_n[None, :] * s2 + offs_t[:, None] * s3
        x = tl.load(p, mask=mask_t[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        return x[None, :, :]
    else:
        return _load_fixed_bc(ptr, offs_d, offs_n, mask_d[:, None] & mask_n[None, :], s0, s1)[:, None, :]


@triton.jit
def _fwd_tiles(o_t, p_u, p_dt, p_z, B_ptr, C_ptr, bB_base, bC_base, o_d, o_n, m_d, m_n, L, su_t, sdt_t, sz_t,
               sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
               HAS_Z: tl.constexpr):
    """The forward's inputs at time offsets ``o_t`` (masked past L): u, delta, z (raw dtypes; a scalar 0 without
    z, so no tile is carried for it), B, C (float32). Loaded one chunk ahead of the compute (software prefetch)."""
    m_t = o_t < L
    m_dt = m_d[:, None] & m_t[None, :]
    u = tl.load(p_u + o_t[None, :] * su_t, mask=m_dt, other=0.0)
    dt = tl.load(p_dt + o_t[None, :] * sdt_t, mask=m_dt, other=0.0)
    if HAS_Z:
        z = tl.load(p_z + o_t[None, :] * sz_t, mask=m_dt, other=0.0)
    else:
        z = 0.0
    b_B = _load_bc(B_ptr, bB_base, o_d, o_n, o_t, m_d, m_n, m_t, sB0, sB1, sB2, sB3, B_VAR)
    b_C = _load_bc(C_ptr, bC_base, o_d, o_n, o_t, m_d, m_n, m_t, sC0, sC1, sC2, sC3, C_VAR)
    return u, dt, z, b_B, b_C


@triton.jit(do_not_specialize=["L", "nchunks"])
def _fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, hlast_ptr, hc_ptr,
                L, nchunks, dim, cpg, nblk,
                su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t,
                sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3,
                N: tl.constexpr, BLOCK_D: tl.constexpr, T_C: tl.constexpr, BLOCK_N: tl.constexpr,
                B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                STORE_LAST: tl.constexpr, SAVE_CHUNKS: tl.constexpr):
    # batch on grid axis 0 (up to 2**31 - 1 programs; axes 1 and 2 stop at 65535)
    i_b, i_gd = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_g, o_c, m_d, o_d, o_n, m_n = _channel_offsets(i_gd, nblk, cpg, N, BLOCK_D, BLOCK_N)
    o_tl = tl.arange(0, T_C)
    m_dn = m_d[:, None] & m_n[None, :]
    b_A, b_A2, b_D, b_bias = _channel_params(A_ptr, D_ptr, bias_ptr, o_d, o_n, m_d, m_dn, N, BLOCK_D, HAS_D, HAS_BIAS)
    o_dn = (i_b * dim + o_d[:, None]) * N + o_n[None, :]
    b_h = _load_state(h0_ptr, o_dn, m_dn, HAS_H0, BLOCK_D, BLOCK_N)
    bB_base = i_b * sB0 + i_g * sB1
    bC_base = i_b * sC0 + i_g * sC1
    p_u, p_dt, p_z = _row_ptrs(u_ptr, dt_ptr, z_ptr, i_b, o_d[:, None], su_b, su_d, sdt_b, sdt_d, sz_b, sz_d)
    # software prefetch: the tiles of chunk c + 1 are loaded while chunk c is computed
    n_u, n_dt, n_z, n_B, n_C = _fwd_tiles(o_tl, p_u, p_dt, p_z, B_ptr, C_ptr, bB_base, bC_base, o_d, o_n, m_d, m_n,
                                          L, su_t, sdt_t, sz_t, sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3,
                                          B_VAR, C_VAR, HAS_Z)
    for c in range(0, nchunks):
        if SAVE_CHUNKS:
            if c > 0:
                hc_off = ((i_b * (nchunks - 1) + c - 1) * dim + o_d[:, None]) * N + o_n[None, :]
                tl.store(hc_ptr + hc_off, b_h, mask=m_dn)
        o_t = c * T_C + o_tl
        m_t = o_t < L
        m_dt = m_d[:, None] & m_t[None, :]
        b_u, b_dt, b_B, b_C = n_u.to(tl.float32), n_dt.to(tl.float32), n_B, n_C
        if HAS_Z:
            b_z = n_z.to(tl.float32)
        n_u, n_dt, n_z, n_B, n_C = _fwd_tiles(o_t + T_C, p_u, p_dt, p_z, B_ptr, C_ptr, bB_base, bC_base, o_d, o_n,
                                              m_d, m_n, L, su_t, sdt_t, sz_t, sB0, sB1, sB2, sB3, sC0, sC1, sC2,
                                              sC3, B_VAR, C_VAR, HAS_Z)
        b_dtr, b_dt = _delta(b_dt, b_bias[:, None], HAS_BIAS, SOFTPLUS)
        b_dt = tl.where(m_dt, b_dt, 0.0)  # padded steps: a = 1, b = 0 (state passes through)
        b_a = tl.exp2(b_dt[:, :, None] * b_A2[:, None, :])
        b_x = (b_dt * b_u)[:, :, None] * b_B
        s_a, s_x = tl.associative_scan((b_a, b_x), 1, _combine)
        b_hs = s_a * b_h[:, None, :] + s_x
        b_y = tl.sum(b_hs * b_C, 2)
        if HAS_D:
            b_y += b_D[:, None] * b_u
        if HAS_Z:
            b_y = b_y * b_z * tl.sigmoid(b_z)
        o_out = (i_b * dim + o_d[:, None]) * L + o_t[None, :]
        tl.store(out_ptr + o_out, b_y.to(out_ptr.dtype.element_ty), mask=m_dt)
        b_h = tl.sum(tl.where((o_tl == T_C - 1)[None, :, None], b_hs, 0.0), 1)
    if STORE_LAST:
        tl.store(hlast_ptr + o_dn, b_h, mask=m_dn)


@triton.jit
def _bwd_tiles(cn, p_u, p_dt, p_z, p_do, B_ptr, C_ptr, hc_ptr, h0_ptr, bB_base, bC_base, i_b, o_d, o_n, o_tl, o_dn,
               m_d, m_n, L, nchunks, dim, su_t, sdt_t, sz_t, so_t, sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3,
               N: tl.constexpr, T_C: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_Z: tl.constexpr,
               HAS_H0: tl.constexpr):
    """The backward's inputs for chunk ``cn`` (everything masked off when cn < 0): u, delta, delta shifted by one
    step, z, dout (raw dtypes), B, C (float32) and the state entering the chunk."""
    o_t = cn * T_C + o_tl
    m_t = (o_t >= 0) & (o_t < L)
    m_dt = m_d[:, None] & m_t[None, :]
    m_dt1 = m_d[:, None] & ((o_t >= 0) & (o_t + 1 < L))[None, :]
    u = tl.load(p_u + o_t[None, :] * su_t, mask=m_dt, other=0.0)
    dtr = tl.load(p_dt + o_t[None, :] * sdt_t, mask=m_dt, other=0.0)
    dtr1 = tl.load(p_dt + (o_t + 1)[None, :] * sdt_t, mask=m_dt1, other=0.0)
    if HAS_Z:
        z = tl.load(p_z + o_t[None, :] * sz_t, mask=m_dt, other=0.0)
    else:
        z = u
    do = tl.load(p_do + o_t[None, :] * so_t, mask=m_dt, other=0.0)
    b_B = _load_bc(B_ptr, bB_base, o_d, o_n, o_t, m_d, m_n, m_t, sB0, sB1, sB2, sB3, B_VAR)
    b_C = _load_bc(C_ptr, bC_base, o_d, o_n, o_t, m_d, m_n, m_t, sC0, sC1, sC2, sC3, C_VAR)
    c_n = o_n * 0 + cn
    m_dn = m_d[:, None] & (o_n < N)[None, :]
    hc_off = ((i_b * (nchunks - 1) + cn - 1) * dim + o_d[:, None]) * N + o_n[None, :]
    h = tl.load(hc_ptr + hc_off, mask=m_dn & (c_n > 0)[None, :], other=0.0)
    if HAS_H0:
        h += tl.load(h0_ptr + o_dn, mask=m_dn & (c_n == 0)[None, :], other=0.0)
    return u, dtr, dtr1, z, do, b_B, b_C, h


@triton.jit(do_not_specialize=["L", "nchunks", "batch"])
def _bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, hc_ptr, dout_ptr, dlast_ptr,
                du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr, dh0_ptr,
                L, nchunks, batch, dim, cpg, nblk, B_PER_PROG,
                su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t, so_b, so_d, so_t,
                sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3, sdB0, sdB1, sdB2, sdB3, sdC0, sdC1, sdC2, sdC3,
                N: tl.constexpr, BLOCK_D: tl.constexpr, T_C: tl.constexpr, BLOCK_N: tl.constexpr,
                B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                HAS_DLAST: tl.constexpr, VAR_ATOMIC: tl.constexpr):
    i_bp, i_gd = tl.program_id(0), tl.program_id(1)
    i_g, o_c, m_d, o_d, o_n, m_n = _channel_offsets(i_gd, nblk, cpg, N, BLOCK_D, BLOCK_N)
    o_tl = tl.arange(0, T_C)
    m_dn = m_d[:, None] & m_n[None, :]
    b_Anat, b_A2, b_D, b_bias = _channel_params(A_ptr, D_ptr, bias_ptr, o_d, o_n, m_d, m_dn, N, BLOCK_D, HAS_D,
                                                HAS_BIAS)
    acc_dA, acc_dB, acc_dC, acc_dD, acc_db = _zero_grads(BLOCK_D, BLOCK_N)
    nb = tl.minimum(B_PER_PROG, batch - i_bp * B_PER_PROG)
    for ib in range(0, nb):
        i_b = (i_bp * B_PER_PROG + ib).to(tl.int64)
        o_dn = (i_b * dim + o_d[:, None]) * N + o_n[None, :]
        b_carry = _load_state(dlast_ptr, o_dn, m_dn, HAS_DLAST, BLOCK_D, BLOCK_N)
        bB_base = i_b * sB0 + i_g * sB1
        bC_base = i_b * sC0 + i_g * sC1
        p_u, p_dt, p_z = _row_ptrs(u_ptr, dt_ptr, z_ptr, i_b, o_d[:, None], su_b, su_d, sdt_b, sdt_d, sz_b, sz_d)
        p_do = dout_ptr + i_b * so_b + o_d[:, None] * so_d
        # software prefetch: the tiles of chunk c - 1 are loaded while chunk c is computed
        n_u, n_dtr, n_dtr1, n_z, n_do, n_B, n_C, n_h0 = _bwd_tiles(
            nchunks - 1, p_u, p_dt, p_z, p_do, B_ptr, C_ptr, hc_ptr, h0_ptr, bB_base, bC_base, i_b, o_d, o_n, o_tl,
            o_dn, m_d, m_n, L, nchunks, dim, su_t, sdt_t, sz_t, so_t, sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3,
            N, T_C, B_VAR, C_VAR, HAS_Z, HAS_H0)
        for ci in range(0, nchunks):
            c = nchunks - 1 - ci
            b_u, b_dtr, b_dtr1, b_do = n_u.to(tl.float32), n_dtr.to(tl.float32), n_dtr1.to(tl.float32), n_do
            b_z, b_B, b_C, b_h0 = n_z, n_B, n_C, n_h0
            n_u, n_dtr, n_dtr1, n_z, n_do, n_B, n_C, n_h0 = _bwd_tiles(
                c - 1, p_u, p_dt, p_z, p_do, B_ptr, C_ptr, hc_ptr, h0_ptr, bB_base, bC_base, i_b, o_d, o_n, o_tl,
                o_dn, m_d, m_n, L, nchunks, dim, su_t, sdt_t, sz_t, so_t, sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3,
                N, T_C, B_VAR, C_VAR, HAS_Z, HAS_H0)
            o_t = c * T_C + o_tl
            m_t = o_t < L
            m_dt = m_d[:, None] & m_t[None, :]
            m_t1 = o_t + 1 < L
            m_dt1 = m_d[:, None] & m_t1[None, :]
            if HAS_BIAS:  # not _delta twice: this order gives the compiler the same schedule as before
                b_dtr += b_bias[:, None]
                b_dtr1 += b_bias[:, None]
            if SOFTPLUS:
                b_dt = _softplus(b_dtr)
                b_dt1 = _softplus(b_dtr1)
            else:
                b_dt = b_dtr
                b_dt1 = b_dtr1
            b_dt = tl.where(m_dt, b_dt, 0.0)
            b_dt1 = tl.where(m_dt1, b_dt1, 0.0)
            # recompute h inside the chunk from its start state
            b_a = tl.exp2(b_dt[:, :, None] * b_A2[:, None, :])
            b_dtu = b_dt * b_u
            b_x = b_dtu[:, :, None] * b_B
            s_a, s_x = tl.associative_scan((b_a, b_x), 1, _combine)
            b_hs = s_a * b_h0[:, None, :] + s_x
            b_do = b_do.to(tl.float32)
            if HAS_Z:
                b_z = b_z.to(tl.float32)
                b_sig = tl.sigmoid(b_z)
                b_y = tl.sum(b_hs * b_C, 2)
                if HAS_D:
                    b_y += b_D[:, None] * b_u
                b_dz = b_do * b_y * b_sig * (1.0 + b_z * (1.0 - b_sig))
                o_zo = (i_b * dim + o_d[:, None]) * L + o_t[None, :]
                tl.store(dz_ptr + o_zo, b_dz.to(dz_ptr.dtype.element_ty), mask=m_dt)
                b_dy = b_do * b_z * b_sig
            else:
                b_dy = b_do
            # adjoint: dh_t = C_t dy_t + a_{t+1} dh_{t+1}; a reverse scan, the next chunk enters via b_carry
            b_a1 = tl.exp2(b_dt1[:, :, None] * b_A2[:, None, :])
            b_g = b_dy[:, :, None] * b_C
            r_a, r_g = tl.associative_scan((b_a1, b_g), 1, _combine, reverse=True)
            b_dh = r_g + r_a * b_carry[:, None, :]
            b_carry = tl.sum(tl.where((o_tl == 0)[None, :, None], b_dh, 0.0), 1)
            b_hprev = b_hs - b_x  # = a_t * h_{t-1}
            b_du = tl.sum(b_dh * b_B, 2) * b_dt
            if HAS_D:
                b_du += b_D[:, None] * b_dy
                acc_dD += tl.sum(b_dy * b_u, 1)
            b_ddt = tl.sum(b_dh * (b_B * b_u[:, :, None] + b_Anat[:, None, :] * b_hprev), 2)
            acc_dA += tl.sum(b_dh * b_dt[:, :, None] * b_hprev, 1)
            if SOFTPLUS:
                b_ddt = b_ddt * tl.sigmoid(b_dtr)
            b_ddt = tl.where(m_dt, b_ddt, 0.0)
            if HAS_BIAS:
                acc_db += tl.sum(b_ddt, 1)
            o_out = (i_b * dim + o_d[:, None]) * L + o_t[None, :]
            tl.store(du_ptr + o_out, b_du.to(du_ptr.dtype.element_ty), mask=m_dt)
            tl.store(ddt_ptr + o_out, b_ddt.to(ddt_ptr.dtype.element_ty), mask=m_dt)
            if B_VAR:
                b_dB = tl.sum(b_dh * b_dtu[:, :, None], 0)
                p_dB = dB_ptr + i_b * sdB0 + i_g * sdB1 + o_n[None, :] * sdB2 + o_t[:, None] * sdB3
                _store_or_add(p_dB, b_dB, m_t[:, None] & m_n[None, :], VAR_ATOMIC)
            else:
                acc_dB += tl.sum(b_dh * b_dtu[:, :, None], 1)
            if C_VAR:
                b_dC = tl.sum(b_dy[:, :, None] * b_hs, 0)
                p_dC = dC_ptr + i_b * sdC0 + i_g * sdC1 + o_n[None, :] * sdC2 + o_t[:, None] * sdC3
                _store_or_add(p_dC, b_dC, m_t[:, None] & m_n[None, :], VAR_ATOMIC)
            else:
                acc_dC += tl.sum(b_dy[:, :, None] * b_hs, 1)
        if HAS_H0:
            # d h_{-1} = a_0 * dh_0, with b_carry = dh_0 after the last (first-in-time) chunk
            b_dt0 = tl.load(dt_ptr + i_b * sdt_b + o_d * sdt_d, mask=m_d, other=0.0).to(tl.float32)
            b_dt0r, b_dt0 = _delta(b_dt0, b_bias, HAS_BIAS, SOFTPLUS)
            b_a0 = tl.exp2(b_dt0[:, None] * b_A2)
            tl.store(dh0_ptr + o_dn, b_a0 * b_carry, mask=m_dn)
    o_dn0 = o_d[:, None] * N + o_n[None, :]
    _flush_grads(dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, acc_dA, acc_dB, acc_dC, acc_dD, acc_db, o_d, o_dn0, m_d,
                 m_dn, B_VAR, C_VAR, HAS_D, HAS_BIAS)
