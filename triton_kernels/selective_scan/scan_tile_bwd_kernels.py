"""The time-tiled selective-scan backward ``_bwd_tile_kernel`` (staging as in ``scan_tile_kernels.py``, whose
helpers it uses; ``scan.py`` launches it, ``scan_config.use_tile_bwd`` says where).

Layout: the backward needs sums over the channels every step (input-dependent dB, dC) as well as over the states,
so its state tile is [BLOCK_D, BLOCK_N] in the layout the compiler picks for the 2-D parameter loads (4 channels x
4 states a thread at BLOCK_D 32: 48 shuffles a step for all five sums, against 160 with one channel a thread); its
slot rows are addressed with a unit stride passed at run time (``s1``), which hides their contiguity from the
compiler (a contiguous row would get a layout of its own and a conversion through shared memory every step). The
launcher makes the slots 64-byte aligned, so the state tiles in the slot load and store as 16-byte vectors in the
tile's own layout (sm_90 compile: 4 vector loads of h_{t-1} a step instead of 16 scalar ones, no per-step tile
conversion in the recomputation, no spills). Per-channel outputs are not formed in the step loop: it writes the
per-step sums over the states (``_adjoint_sums``) as slot rows, and ``_tile_outputs`` turns them into du,
d delta and dz for the whole tile (fewer rows read, and fewer layout conversions, a step). NVIDIA H200, bf16,
``bench/gpu_tree_ab.sh`` against the session-10 kernel, same call, two rounds: LM (8, 2048, 2048) fwd+bwd 4.46 ->
3.93 ms, (16, 192, 4096) 1.87 -> 1.63-1.64, (4096, 256, 16) 1.60 -> 1.27. Measured and not kept: a next-step
prefetch of the rows and state (equal within 1%), the tile's states in registers instead of slot area H (tiles of
4 steps: 0.95-1.00x), register caps of 128-168 (12-16 warps a SM instead of 8: 0.64-0.89x).

Pass 2 issues the global loads of its next tile's inputs (``_bwd_loads``) before computing the current tile, so
that they arrive while it computes (ncu had ~20% of the stall samples on the staging loads; same call: LM fwd+bwd
3.64 -> 3.38 ms, (16, 192, 4096) 1.50 -> 1.41, (4096, 256, 16) 1.13 -> 1.06). Its gradient atomics are relaxed
(``scan.py``'s module doc).

Per row (one time chunk of one batch row): pass 1 runs forward over all tiles but the last and keeps the chunk's
start state and every tile's end state (slot area HB); pass 2 takes the tiles in reverse, recomputes the tile's
states from its start state into slot area H, runs the adjoint backwards over the tile and writes du, d delta, dz
and input-dependent dB / dC (added atomically when several channel blocks share a group). ADJ_ONLY is the
chunk-parallel pass 1 (start adjoints from a zero end adjoint). Persistent: program p owns one (group, channel block) and walks rows (accumulating dA, dD,
d(delta_bias), fixed dB / dC in registers), reusing scratch slot p.
"""
import triton
import triton.language as tl

from .scan_common import _adjoint_sums, _bwd_prologue, _delta, _flush_grads, _load_state, _row_chunk, _zero_grads
from .scan_tile_kernels import _load_raw, _stage, _stage_x, _store_tile, _unstage


@triton.jit
def _stage_dy_x(do, z, s_dy, s_zf, o_t, W: tl.constexpr, HAS_Z: tl.constexpr, ZF: tl.constexpr = True):
    """Stage the backward's per-step output factors of a [TT, W] tile from the dout and z tiles: dy = dout * silu(z)
    into ``s_dy`` and, with z and ZF, zf = dout * d silu(z) / dz into ``s_zf`` (so that dz = y * zf; the start-adjoint
    pass needs no zf); without z, dy = dout."""
    do = do.to(tl.float32)
    o_s = o_t[:, None] * W + tl.arange(0, W)[None, :]
    if HAS_Z:
        z = z.to(tl.float32)
        sig = tl.sigmoid(z)
        tl.store(s_dy + o_s, do * z * sig)
        if ZF:
            tl.store(s_zf + o_s, do * sig * (1.0 + z * (1.0 - sig)))
    else:
        tl.store(s_dy + o_s, do)


@triton.jit
def _stage_dy(p_do, p_z, s_dy, s_zf, o_t, o_d, m_t, m_d, full, so_t, so_d, sz_t, sz_d, W: tl.constexpr,
              HAS_Z: tl.constexpr, ZF: tl.constexpr = True):
    """``_stage_dy_x`` of the [TT, W] tiles at ``p_do`` / ``p_z`` (masks as ``_stage``)."""
    do = _load_raw(p_do + o_t[:, None] * so_t + o_d[None, :] * so_d, m_t, m_d, full)
    z = do
    if HAS_Z:
        z = _load_raw(p_z + o_t[:, None] * sz_t + o_d[None, :] * sz_d, m_t, m_d, full)
    _stage_dy_x(do, z, s_dy, s_zf, o_t, W, HAS_Z, ZF)


@triton.jit
def _bwd_loads(p_u, p_dt, p_do, p_z, p_B, p_C, k0, n_t, o_t, o_d, o_n, m_d, m_n, su_t, su_d, sdt_t, sdt_d, so_t,
               so_d, sz_t, sz_d, sB3, sB2, sC3, sC2, TT: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
               HAS_Z: tl.constexpr):
    """The global [TT, ..] input tiles of the backward's tile at step k0 of the row (u, delta, dout, z, B, C in their
    dtypes; the first one stands in for those the flags leave out): issued a tile ahead of their use, so that the
    loads run while the current tile is computed."""
    m_t = o_t + k0 < n_t
    full = k0 + TT <= n_t
    r_u = _load_raw(p_u + (o_t + k0)[:, None] * su_t + o_d[None, :] * su_d, m_t, m_d, full)
    r_dt = _load_raw(p_dt + (o_t + k0)[:, None] * sdt_t + o_d[None, :] * sdt_d, m_t, m_d, full)
    r_do = _load_raw(p_do + (o_t + k0)[:, None] * so_t + o_d[None, :] * so_d, m_t, m_d, full)
    r_z = r_do
    if HAS_Z:
        r_z = _load_raw(p_z + (o_t + k0)[:, None] * sz_t + o_d[None, :] * sz_d, m_t, m_d, full)
    r_B = r_u
    if B_VAR:
        r_B = _load_raw(p_B + (o_t + k0)[:, None] * sB3 + o_n[None, :] * sB2, m_t, m_n, full)
    r_C = r_u
    if C_VAR:
        r_C = _load_raw(p_C + (o_t + k0)[:, None] * sC3 + o_n[None, :] * sC2, m_t, m_n, full)
    return r_u, r_dt, r_do, r_z, r_B, r_C


@triton.jit
def _bc_row(s_X, j, o_n, b_X, BLOCK_N: tl.constexpr, VAR: tl.constexpr):
    """B_t or C_t of step j against a [BLOCK_D, BLOCK_N] tile: the staged slot row j (input-dependent, VAR) or the
    fixed tile ``b_X``."""
    if VAR:
        return tl.load(s_X + j * BLOCK_N + o_n)[None, :]
    else:
        return b_X


@triton.jit
def _state_step(b_h, s_dtu, s_dt, s_B, j, o_j, o_n, b_A2, b_B, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                B_VAR: tl.constexpr):
    """The backward's recomputation of one step from the staged rows j (effective delta, delta * u):
    h_j = exp(delta A) h_{j-1} + delta u B."""
    b_dtu = tl.load(s_dtu + j * BLOCK_D + o_j)
    b_dt = tl.load(s_dt + j * BLOCK_D + o_j)
    return tl.exp2(b_dt[:, None] * b_A2) * b_h + b_dtu[:, None] * _bc_row(s_B, j, o_n, b_B, BLOCK_N, B_VAR)


@triton.jit
def _stage_u_dt(u, dtr, s_u, s_dt, s_dtu, o_t, bias, W: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, STORE_U: tl.constexpr = True):
    """Stage a tile's effective delta, delta * u and (STORE_U) u rows from its u and raw delta tiles (one layout: no
    reload)."""
    o_s = o_t[:, None] * W + tl.arange(0, W)[None, :]
    u = u.to(tl.float32)
    _, dt = _delta(dtr.to(tl.float32), bias[None, :], HAS_BIAS, SOFTPLUS)
    if STORE_U:
        tl.store(s_u + o_s, u)
    tl.store(s_dt + o_s, dt)
    tl.store(s_dtu + o_s, dt * u)


@triton.jit
def _tile_outputs(s_u, s_dt, s_dy, s_zf, s_sg, s_gB, s_gA, s_y, p_du, p_ddt, p_dz, o_t, m_t, m_d, full, b_D,
                  W: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr):
    """A tile's per-channel outputs from its staged rows and the adjoint's per-step sums (``_adjoint_sums``:
    gB = sum_n g B, gA = sum_n g a h A2; y = sum_n C h): du = delta gB + D dy, d delta = (gA ln 2 + u gB) times
    sigmoid(delta + bias) under softplus, dz = (y + D u) zf, written as [TT, W] tiles at ``p_* + t`` (time
    contiguous). Returns the tile's sums over its steps of d delta and dy u (for d delta_bias and dD)."""
    o_s = o_t[:, None] * W + tl.arange(0, W)[None, :]
    m = m_t[:, None] & m_d[None, :]
    b_u = tl.load(s_u + o_s)
    b_dy = tl.load(s_dy + o_s)
    b_gB = tl.load(s_gB + o_s)
    b_du = tl.load(s_dt + o_s) * b_gB
    if HAS_D:
        b_du += b_D[None, :] * b_dy
    b_ddt = tl.load(s_gA + o_s) * 0.6931471805599453 + b_u * b_gB
    if SOFTPLUS:
        b_ddt = b_ddt * tl.load(s_sg + o_s)
    _store_tile(p_du + o_t[:, None], b_du, m_t, m_d, full)
    _store_tile(p_ddt + o_t[:, None], b_ddt, m_t, m_d, full)
    if HAS_Z:
        b_y = tl.load(s_y + o_s)
        if HAS_D:
            b_y += b_D[None, :] * b_u
        _store_tile(p_dz + o_t[:, None], b_y * tl.load(s_zf + o_s), m_t, m_d, full)
    return tl.sum(tl.where(m, b_ddt, 0.0), 0), tl.sum(b_dy * b_u, 0)


@triton.jit
def _adj_tile_step(b_carry, b_h, b_hp, j, acc_dA, acc_dB, acc_dC, s_dt, s_dy, s_dtu, s_B, s_C, s_gB, s_gA, s_y, s_dB,
                   s_dC, o_j, o_n, b_A2, b_B, b_C, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, B_VAR: tl.constexpr,
                   C_VAR: tl.constexpr, HAS_Z: tl.constexpr):
    """One adjoint step of the tiled backward at slot row j, from h_j (``b_h``) and h_{j-1} (``b_hp``): writes the
    per-step sums gB, gA (``_adjoint_sums``), y = sum_n C h_j (with z) and input-dependent dB / dC as slot rows,
    accumulates dA and fixed dB / dC; returns (dL/dh_{j-1}, acc_dA, acc_dB, acc_dC)."""
    b_dt = tl.load(s_dt + j * BLOCK_D + o_j)
    b_dy = tl.load(s_dy + j * BLOCK_D + o_j)
    b_dtu = tl.load(s_dtu + j * BLOCK_D + o_j)
    b_Bt = _bc_row(s_B, j, o_n, b_B, BLOCK_N, B_VAR)
    b_Ct = _bc_row(s_C, j, o_n, b_C, BLOCK_N, C_VAR)
    b_a = tl.exp2(b_dt[:, None] * b_A2)
    if HAS_Z:
        tl.store(s_y + j * BLOCK_D + o_j, tl.sum(b_h * b_Ct, 1))
    b_g, b_gah, s_gBt, s_gAt = _adjoint_sums(b_carry, b_dy, b_Bt, b_Ct, b_a * b_hp, b_A2)
    tl.store(s_gB + j * BLOCK_D + o_j, s_gBt)
    tl.store(s_gA + j * BLOCK_D + o_j, s_gAt)
    acc_dA += b_gah * b_dt[:, None]
    if B_VAR:
        tl.store(s_dB + j * BLOCK_N + o_n, tl.sum(b_g * b_dtu[:, None], 0))
    else:
        acc_dB += b_g * b_dtu[:, None]
    if C_VAR:
        tl.store(s_dC + j * BLOCK_N + o_n, tl.sum(b_dy[:, None] * b_h, 0))
    else:
        acc_dC += b_dy[:, None] * b_h
    return b_a * b_g, acc_dA, acc_dB, acc_dC


@triton.jit(do_not_specialize=["NC", "n_cp", "c0", "n_rowtot", "n_rows", "s1"])
def _bwd_tile_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, dout_ptr, dlast_ptr,
                     du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr, dh0_ptr, scr_ptr,
                     hb_ptr, gb_ptr, dsum_ptr,
                     L, LC, NC, n_cp, c0, n_rowtot, dim, cpg, nblk, n_gd, n_rows, slot, s1,
                     su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t, so_b, so_d, so_t,
                     sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3, sdB0, sdB1, sdB2, sdB3, sdC0, sdC1, sdC2, sdC3,
                     N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, TT: tl.constexpr,
                     B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                     HAS_DLAST: tl.constexpr, VAR_ATOMIC: tl.constexpr, CSEQ: tl.constexpr, ADJ_ONLY: tl.constexpr):
    """The backward with time-tiled staging: same arguments, outputs and buffers as ``_bwd_seq_kernel`` (program
    p owns (group, channel block) p % n_gd and walks rows p // n_gd, + n_rows, ...; a row is one time chunk of one
    batch row) plus ``slot``, the float32 scratch per program, and TT, the steps a tile.

    A row's steps are walked in tiles of TT. Pass 1 stores the chunk's start state and runs forward over all tiles
    but the last, storing each one's end state (slot area HB: the start state of every tile). Pass 2 takes the tiles
    in reverse: stage the tile's inputs (u, effective delta, delta * u, sigmoid(delta + bias), dy = dout * silu(z),
    zf = dout * silu'(z), B, C; elementwise work done here, for the whole tile), recompute the tile's states from
    its start state into slot area H (slot 0 the start state, slot j + 1 h_j; the last state stays in registers),
    run the adjoint backwards over the tile (``_adj_tile_step``) with its per-step sums and input-dependent dB / dC
    written as slot rows, then form du, d delta and dz from them for the whole tile (``_tile_outputs``) and write
    them and dB / dC out as [TT, ..] tiles (a channel's steps contiguous; dB / dC added atomically when several
    channel blocks share a group). The state tile is [BLOCK_D, BLOCK_N] in whatever layout the compiler picks for the 2-D
    parameter loads (module doc). ADJ_ONLY: the chunk-parallel pass 1 (start adjoints from a zero end adjoint),
    tiles in reverse, no states."""
    pid, i_r, i_g, o_c, m_d, o_d, o_n, m_n, m_dn, b_A2, b_D, b_bias, b_B, b_C = _bwd_prologue(
        n_gd, nblk, cpg, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr, sB0, sB1, sC0, sC1, N, BLOCK_D, BLOCK_N, B_VAR, C_VAR,
        HAS_D, HAS_BIAS)
    # the slot: rows [TT, BLOCK_D] x 9, rows [TT, BLOCK_N] x 4, then state tiles (H: TT, HB: the rest)
    TILE: tl.constexpr = BLOCK_D * BLOCK_N
    RD: tl.constexpr = TT * BLOCK_D
    RN: tl.constexpr = TT * BLOCK_N
    s_u = scr_ptr + pid.to(tl.int64) * slot
    s_dt = s_u + RD
    s_sg = s_dt + RD
    s_dy = s_sg + RD
    s_zf = s_dy + RD
    s_dtu = s_zf + RD
    s_gB = s_dtu + RD  # the adjoint's per-step sums (``_adjoint_sums``) and y = sum_n C h, for ``_tile_outputs``
    s_gA = s_gB + RD
    s_y = s_gA + RD
    s_B = s_y + RD
    s_C = s_B + RN
    s_dB = s_C + RN
    s_dC = s_dB + RN
    s_h = s_dC + RN    # area H: TT states (the tile's start state, then h_0 .. h_{n-2})
    s_hb = s_h + TT * TILE  # area HB: the chunk's start state, then the state at the end of each tile but the last
    o_t = tl.arange(0, TT)
    o_j = tl.arange(0, BLOCK_D) * s1  # slot rows; s1 = 1 at run time (hides the contiguity: see below)
    o_s = o_j[:, None] * BLOCK_N + o_n[None, :]
    o_dn0 = o_d[:, None] * N + o_n[None, :]
    acc_dA, acc_dB, acc_dC, acc_dD, acc_db = _zero_grads(BLOCK_D, BLOCK_N)
    n_it = tl.cdiv(n_rowtot - i_r, n_rows)
    for k in range(0, n_it):
        i_b, i_c, t0, n_t = _row_chunk(i_r + k * n_rows, n_cp, c0, LC, L)
        n_tl = tl.cdiv(n_t, TT)
        r_dn = i_b * dim * N
        rb_d = (i_b * (NC - 1) + i_c - 1) * dim  # hb[b, c - 1] / gb[b, c - 1] / dsum[b, c - 1]
        rb_dn = rb_d * N
        f_c = (o_n * 0 + i_c)[None, :]  # the chunk index as a [1, BLOCK_N] tile (the interpreter masks with tiles)
        p_u = u_ptr + i_b * su_b + t0 * su_t
        p_dt = dt_ptr + i_b * sdt_b + t0 * sdt_t
        p_z = z_ptr + i_b * sz_b + t0 * sz_t
        p_do = dout_ptr + i_b * so_b + t0 * so_t
        p_B = B_ptr + i_b * sB0 + i_g * sB1 + t0 * sB3
        p_C = C_ptr + i_b * sC0 + i_g * sC1 + t0 * sC3
        if ADJ_ONLY:
            b_carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
            b_dts = tl.zeros([BLOCK_D], dtype=tl.float32)
            for kk in range(0, n_tl):
                k0 = (n_tl - 1 - kk) * TT
                m_t = o_t + k0 < n_t
                full = k0 + TT <= n_t
                tl.debug_barrier()  # the previous tile's steps have read the rows
                _stage(p_dt + k0 * sdt_t, s_dt, o_t, o_d, m_t, m_d, full, sdt_t, sdt_d, b_bias, BLOCK_D, 1, HAS_BIAS,
                       SOFTPLUS)
                _stage_dy(p_do + k0 * so_t, p_z + k0 * sz_t, s_dy, s_zf, o_t, o_d, m_t, m_d, full, so_t, so_d,
                          sz_t, sz_d, BLOCK_D, HAS_Z, False)
                if C_VAR:
                    _stage(p_C + k0 * sC3, s_C, o_t, o_n, m_t, m_n, full, sC3, sC2, b_bias, BLOCK_N, 0)
                tl.debug_barrier()
                n_in = tl.minimum(TT, n_t - k0)
                for jj in range(0, n_in):
                    j = n_in - 1 - jj
                    b_dt = tl.load(s_dt + j * BLOCK_D + o_j)
                    b_dy = tl.load(s_dy + j * BLOCK_D + o_j)
                    b_Ct = _bc_row(s_C, j, o_n, b_C, BLOCK_N, C_VAR)
                    b_carry = tl.exp2(b_dt[:, None] * b_A2) * (b_carry + b_dy[:, None] * b_Ct)
                    b_dts += b_dt
            tl.store(gb_ptr + rb_dn + o_dn0, b_carry, mask=m_dn)
            tl.store(dsum_ptr + rb_d + o_d, b_dts, mask=m_d)
        else:
            b_h = _load_state(h0_ptr + r_dn, o_dn0, m_dn & (f_c == 0), HAS_H0, BLOCK_D, BLOCK_N)
            if CSEQ:
                b_h += tl.load(hb_ptr + rb_dn + o_dn0, mask=m_dn & (f_c > 0), other=0.0)
            # ---- pass 1: the chunk's start state and the state at the end of every tile but the last (area HB;
            # states are written and read back by the same thread, in the same layout: no barrier needed)
            tl.store(s_hb + o_s, b_h)
            for kt in range(0, n_tl - 1):
                k0 = kt * TT
                tl.debug_barrier()  # the previous tile's steps have read the rows
                o_tt = (o_t + k0)[:, None]
                _stage_u_dt(_load_raw(p_u + o_tt * su_t + o_d[None, :] * su_d, o_t >= 0, m_d, True),
                            _load_raw(p_dt + o_tt * sdt_t + o_d[None, :] * sdt_d, o_t >= 0, m_d, True), s_u, s_dt,
                            s_dtu, o_t, b_bias, BLOCK_D, HAS_BIAS, SOFTPLUS, False)  # pass 1 reads no u
                if B_VAR:
                    _stage(p_B + k0 * sB3, s_B, o_t, o_n, o_t >= 0, m_n, True, sB3, sB2, b_bias, BLOCK_N, 0)
                tl.debug_barrier()
                for j in range(0, TT):
                    b_h = _state_step(b_h, s_dtu, s_dt, s_B, j, o_j, o_n, b_A2, b_B, BLOCK_D, BLOCK_N, B_VAR)
                tl.store(s_hb + (kt + 1) * TILE + o_s, b_h)
            # ---- pass 2: tiles in reverse
            b_carry = _load_state(dlast_ptr + r_dn, o_dn0, m_dn & (f_c == NC - 1), HAS_DLAST, BLOCK_D, BLOCK_N)
            if CSEQ:
                b_carry += tl.load(gb_ptr + rb_dn + dim * N + o_dn0, mask=m_dn & (f_c < NC - 1), other=0.0)
            # the global input tiles are loaded a tile ahead (``_bwd_loads``): the last tile's here
            r_u, r_dt, r_do, r_z, r_B, r_C = _bwd_loads(
                p_u, p_dt, p_do, p_z, p_B, p_C, (n_tl - 1) * TT, n_t, o_t, o_d, o_n, m_d, m_n, su_t, su_d, sdt_t,
                sdt_d, so_t, so_d, sz_t, sz_d, sB3, sB2, sC3, sC2, TT, B_VAR, C_VAR, HAS_Z)
            for kk in range(0, n_tl):
                kt = n_tl - 1 - kk
                k0 = kt * TT
                m_t = o_t + k0 < n_t
                full = k0 + TT <= n_t
                b_h = tl.load(s_hb + kt * TILE + o_s)  # the tile's start state
                tl.debug_barrier()  # the previous tile's steps and output writes have read the rows
                _stage_u_dt(r_u, r_dt, s_u, s_dt, s_dtu, o_t, b_bias, BLOCK_D, HAS_BIAS, SOFTPLUS)
                if SOFTPLUS:
                    _stage_x(r_dt, s_sg, o_t, b_bias, BLOCK_D, 3, HAS_BIAS)
                _stage_dy_x(r_do, r_z, s_dy, s_zf, o_t, BLOCK_D, HAS_Z)
                if B_VAR:
                    _stage_x(r_B, s_B, o_t, b_bias, BLOCK_N, 0)
                if C_VAR:
                    _stage_x(r_C, s_C, o_t, b_bias, BLOCK_N, 0)
                # the next tile's (kt - 1; none after the first tile: the loads are then masked off entirely)
                r_u, r_dt, r_do, r_z, r_B, r_C = _bwd_loads(
                    p_u, p_dt, p_do, p_z, p_B, p_C, tl.maximum(kt - 1, 0) * TT, tl.where(kt > 0, n_t, 0), o_t, o_d, o_n,
                    m_d, m_n, su_t, su_d, sdt_t, sdt_d, so_t, so_d, sz_t, sz_d, sB3, sB2, sC3, sC2, TT, B_VAR, C_VAR, HAS_Z)
                tl.debug_barrier()
                n_in = tl.minimum(TT, n_t - k0)
                tl.store(s_h + o_s, b_h)
                for j in range(0, n_in):  # recompute h_0 .. h_{n_in-1}; h_0 .. h_{n_in-2} into area H after it
                    b_h = _state_step(b_h, s_dtu, s_dt, s_B, j, o_j, o_n, b_A2, b_B, BLOCK_D, BLOCK_N, B_VAR)
                    if j < n_in - 1:
                        tl.store(s_h + (j + 1) * TILE + o_s, b_h)
                # the adjoint, backwards over the tile: the state-wise work and the sums over states and
                # channels; the per-channel outputs are formed from the sums for the whole tile after it
                for jj in range(0, n_in):
                    j = n_in - 1 - jj
                    b_hp = tl.load(s_h + j * TILE + o_s)
                    b_carry, acc_dA, acc_dB, acc_dC = _adj_tile_step(
                        b_carry, b_h, b_hp, j, acc_dA, acc_dB, acc_dC, s_dt, s_dy, s_dtu, s_B, s_C, s_gB, s_gA,
                        s_y, s_dB, s_dC, o_j, o_n, b_A2, b_B, b_C, BLOCK_D, BLOCK_N, B_VAR, C_VAR, HAS_Z)
                    b_h = b_hp
                tl.debug_barrier()  # the sums' rows were written by other threads
                o_o = (i_b * dim + o_d) * L + t0 + k0  # du / ddelta / dz are (batch, dim, L) contiguous
                t_db, t_dD = _tile_outputs(s_u, s_dt, s_dy, s_zf, s_sg, s_gB, s_gA, s_y, du_ptr + o_o[None, :],
                                           ddt_ptr + o_o[None, :], dz_ptr + o_o[None, :], o_t, m_t, m_d, full, b_D,
                                           BLOCK_D, HAS_D, HAS_Z, SOFTPLUS)
                if HAS_BIAS:
                    acc_db += t_db
                if HAS_D:
                    acc_dD += t_dD
                if B_VAR:
                    _unstage(dB_ptr + i_b * sdB0 + i_g * sdB1 + (t0 + k0) * sdB3, s_dB, o_t, o_n, m_t, m_n, full,
                             sdB3, sdB2, BLOCK_N, VAR_ATOMIC)
                if C_VAR:
                    _unstage(dC_ptr + i_b * sdC0 + i_g * sdC1 + (t0 + k0) * sdC3, s_dC, o_t, o_n, m_t, m_n, full,
                             sdC3, sdC2, BLOCK_N, VAR_ATOMIC)
            if HAS_H0:
                tl.store(dh0_ptr + r_dn + o_dn0, b_carry, mask=m_dn & (f_c == 0))
    if not ADJ_ONLY:
        _flush_grads(dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, acc_dA, acc_dB, acc_dC, acc_dD, acc_db, o_d, o_dn0,
                     m_d, m_dn, B_VAR, C_VAR, HAS_D, HAS_BIAS)
