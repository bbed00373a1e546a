"""Triton kernels of the causal depthwise conv1d (launchers and the layout/precision notes: ``conv.py``).

Tile kernels (``_conv_fwd_kernel`` / ``_conv_bwd_kernel``): a [BLOCK_B, BLOCK_C, BLOCK_T] tile of (batch,
channel, time) per program, the halo read by shifted loads; they serve short sequences (video shapes such as
(16384, 128, 8)), channel-last and strided-time inputs. Long-path kernels (``_conv_fwd_long_kernel`` /
``_conv_bwd_long_kernel``): inputs with a unit time stride and long sequences, see the note above them.
"""
import triton
import triton.language as tl


@triton.jit
def _load_xpad(p_x, p_i, s, m_bc, L, sxt, sit, W: tl.constexpr, HAS_INIT: tl.constexpr):
    """x at time positions s (float32); s < 0 reads initial_states[..., s + W - 1] (or 0).
    p_x / p_i point at time 0 of each (batch, channel) row of x / initial_states."""
    v = tl.load(p_x + s * sxt, mask=m_bc & (s >= 0) & (s < L), other=0.).to(tl.float32)
    if HAS_INIT:
        v += tl.load(p_i + (s + W - 1) * sit, mask=m_bc & (s < 0) & (s >= 1 - W), other=0.).to(tl.float32)
    return v


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, out_ptr, final_ptr,
                     B, D, L, sxb, sxc, sxt, swc, swk, sib, sic, sit, sob, soc, sot, sfb, sfc, sft,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
                     STORE_FINAL: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    i_b, i_c, i_t = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_b = (i_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)[:, None, None]
    o_c = (i_c * BLOCK_C + tl.arange(0, BLOCK_C))[None, :, None]
    o_t = (i_t * BLOCK_T + tl.arange(0, BLOCK_T))[None, None, :]
    m_c = o_c < D
    m_bc = (o_b < B) & m_c
    p_x = x_ptr + o_b * sxb + o_c * sxc
    p_i = init_ptr + o_b * sib + o_c * sic if HAS_INIT else init_ptr
    p_w = w_ptr + o_c * swc
    b_acc = tl.zeros([BLOCK_B, BLOCK_C, BLOCK_T], dtype=tl.float32)
    for k in tl.static_range(W):
        b_x = _load_xpad(p_x, p_i, o_t - (W - 1) + k, m_bc, L, sxt, sit, W, HAS_INIT)
        b_acc += tl.load(p_w + k * swk, mask=m_c, other=0.).to(tl.float32) * b_x
        if STORE_FINAL:
            if k > 0:  # final_states[k-1] = xpad[L-1+k] = the k-th shifted input seen at t = L-1
                p_f = final_ptr + o_b * sfb + o_c * sfc + (k - 1) * sft + o_t * 0
                tl.store(p_f, b_x.to(final_ptr.dtype.element_ty), mask=m_bc & (o_t == L - 1))
    if HAS_BIAS:
        b_acc += tl.load(bias_ptr + o_c, mask=m_c, other=0.).to(tl.float32)
    if SILU:
        b_acc = b_acc * tl.sigmoid(b_acc)
    tl.store(out_ptr + o_b * sob + o_c * soc + o_t * sot, b_acc.to(out_ptr.dtype.element_ty),
             mask=m_bc & (o_t < L))


@triton.jit
def _grad_pre(p_x, p_i, p_w, p_d, b_bias, t, m_bc, m_c, L, sxt, sit, swk, sdt,
              W: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr):
    """g = dout * act'(pre) at time positions t (0 outside [0, L)); b_bias is the (float32) bias or 0."""
    b_g = tl.load(p_d + t * sdt, mask=m_bc & (t >= 0) & (t < L), other=0.).to(tl.float32)
    if SILU:
        b_pre = tl.zeros(b_g.shape, dtype=tl.float32) + b_bias
        for k in tl.static_range(W):
            s = t - (W - 1) + k
            b_x = tl.load(p_x + s * sxt, mask=m_bc & (s >= 0) & (s < L), other=0.).to(tl.float32)
            if HAS_INIT:
                b_x += tl.load(p_i + (s + W - 1) * sit, mask=m_bc & (s < 0) & (s >= 1 - W),
                               other=0.).to(tl.float32)
            b_pre += tl.load(p_w + k * swk, mask=m_c, other=0.).to(tl.float32) * b_x
        b_sig = tl.sigmoid(b_pre)
        b_g = b_g * b_sig * (1. + b_pre * (1. - b_sig))
    return b_g


@triton.jit
def _grad_xpad(p_x, p_i, p_w, p_d, p_f, b_bias, s, m_bc, m_c, L, sxt, sit, swk, sdt, sgt,
               W: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr, HAS_DFINAL: tl.constexpr):
    """Gradient of the padded input at positions s: sum_j w[W-1-j] g[s+j] + d final_states[s-L+W-1]."""
    b_dx = tl.zeros(s.shape, dtype=tl.float32) + tl.zeros(m_bc.shape, dtype=tl.float32)
    for j in tl.static_range(W):
        b_w = tl.load(p_w + (W - 1 - j) * swk, mask=m_c, other=0.).to(tl.float32)
        b_dx += b_w * _grad_pre(p_x, p_i, p_w, p_d, b_bias, s + j, m_bc, m_c, L, sxt, sit, swk, sdt,
                                W, HAS_INIT, SILU)
    if HAS_DFINAL:
        i_f = s - L + (W - 1)
        b_dx += tl.load(p_f + i_f * sgt, mask=m_bc & (i_f >= 0) & (i_f < W - 1) & (s < L), other=0.).to(tl.float32)
    return b_dx


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, dout_ptr, dfinal_ptr,
                     dx_ptr, dinit_ptr, dw_part_ptr, db_part_ptr,
                     B, D, L, b_iters, n_t,
                     sxb, sxc, sxt, swc, swk, sib, sic, sit, sdb, sdc, sdt, sgb, sgc, sgt,
                     sxgb, sxgc, sxgt, sigb, sigc, sigt,
                     W: tl.constexpr, WPAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
                     SILU: tl.constexpr, HAS_DFINAL: tl.constexpr, STORE_DINIT: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    i_b, i_c, i_t = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_c = (i_c * BLOCK_C + tl.arange(0, BLOCK_C))[None, :, None]
    o_t = (i_t * BLOCK_T + tl.arange(0, BLOCK_T))[None, None, :]
    o_k = tl.arange(0, WPAD)[None, :]
    m_c = o_c < D
    p_w = w_ptr + o_c * swc
    b_bias = tl.load(bias_ptr + o_c, mask=m_c, other=0.).to(tl.float32) if HAS_BIAS else 0.
    b_dw = tl.zeros([BLOCK_C, WPAD], dtype=tl.float32)
    b_db = tl.zeros([BLOCK_C], dtype=tl.float32)
    for ib in range(b_iters):
        o_b = ((i_b * b_iters + ib) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)[:, None, None]
        m_bc = (o_b < B) & m_c
        p_x = x_ptr + o_b * sxb + o_c * sxc
        p_i = init_ptr + o_b * sib + o_c * sic if HAS_INIT else init_ptr
        p_d = dout_ptr + o_b * sdb + o_c * sdc
        p_f = dfinal_ptr + o_b * sgb + o_c * sgc if HAS_DFINAL else dfinal_ptr
        b_dx = _grad_xpad(p_x, p_i, p_w, p_d, p_f, b_bias, o_t, m_bc, m_c, L, sxt, sit, swk, sdt, sgt,
                          W, HAS_INIT, SILU, HAS_DFINAL)
        tl.store(dx_ptr + o_b * sxgb + o_c * sxgc + o_t * sxgt, b_dx.to(dx_ptr.dtype.element_ty),
                 mask=m_bc & (o_t < L))
        if STORE_DINIT:
            if i_t == 0:  # the W-1 positions before x: s = -(W-1) .. -1
                o_s = tl.arange(0, WPAD)[None, None, :] - (W - 1)
                b_di = _grad_xpad(p_x, p_i, p_w, p_d, p_f, b_bias, o_s, m_bc, m_c, L, sxt, sit, swk, sdt, sgt,
                                  W, HAS_INIT, SILU, HAS_DFINAL)
                tl.store(dinit_ptr + o_b * sigb + o_c * sigc + (o_s + W - 1) * sigt,
                         b_di.to(dinit_ptr.dtype.element_ty), mask=m_bc & (o_s < 0))
        b_g = _grad_pre(p_x, p_i, p_w, p_d, b_bias, o_t, m_bc, m_c, L, sxt, sit, swk, sdt, W, HAS_INIT, SILU)
        b_db += tl.sum(tl.sum(b_g, axis=2), axis=0)
        for k in tl.static_range(W):
            b_x = _load_xpad(p_x, p_i, o_t - (W - 1) + k, m_bc, L, sxt, sit, W, HAS_INIT)
            b_dw += tl.where(o_k == k, tl.sum(tl.sum(b_g * b_x, axis=2), axis=0)[:, None], 0.)
    o_row = i_b * n_t + i_t
    o_cc = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(dw_part_ptr + (o_row * D + o_cc[:, None]) * W + o_k, b_dw, mask=(o_cc[:, None] < D) & (o_k < W))
    if HAS_BIAS:
        tl.store(db_part_ptr + o_row * D + o_cc, b_db, mask=o_cc < D)


# ---- long path: contiguous time axis ----------------------------------------------------------------------
# A program owns BLOCK_D channels of one batch row and BLOCK_Q * V time steps, as a [BLOCK_D, BLOCK_Q, V] tile
# whose rows are V consecutive steps (16 bytes, one vector load per thread). The width-1 halo comes from the
# neighbouring rows (loaded once, aligned, vectorised: they are the neighbour thread's rows, so they hit L1),
# and the shifted operands x[t - s] are rebuilt in registers by _shift (V >= width - 1 keeps every shift within
# one neighbouring row). Shifted loads straight from memory would be misaligned scalar loads, W of them per
# element: the cost of the tile kernels above on long sequences.

@triton.jit
def _col(X, o_r, j: tl.constexpr):
    """Column j of a [D, Q, V] tile: a select on a constant condition plus a sum along the in-thread axis, which
    the compiler folds to a register read (-0. is the exact additive identity)."""
    return tl.sum(tl.where(o_r == j, X, -0.), axis=2)


@triton.jit
def _shift(Xm, X0, X1, o_r, s: tl.constexpr, V: tl.constexpr):
    """The tile at positions t + s (-V <= s <= V) from the previous (Xm), own (X0) and next (X1) rows."""
    if s == 0:
        res = X0
    else:
        res = tl.zeros_like(X0)
        for r in tl.static_range(V):
            if r + s < 0:
                c = _col(Xm, o_r, r + s + V)
            elif r + s < V:
                c = _col(X0, o_r, r + s)
            else:
                c = _col(X1, o_r, r + s - V)
            res = tl.where(o_r == r, c[:, :, None], res)
    return res


@triton.jit
def _rows(p, o_t, m3, L, st):
    """A [D, Q, V] tile of p at time positions o_t (0 outside [0, L)), float32."""
    return tl.load(p + o_t * st, mask=m3 & (o_t >= 0) & (o_t < L), other=0.).to(tl.float32)


@triton.jit
def _pre(Xm, X0, X1, p_w, m3, b_bias, o_r, swk, W: tl.constexpr, V: tl.constexpr):
    """Pre-activation of the own rows: bias + sum_k w[k] x[t - W + 1 + k] (float32)."""
    acc = tl.zeros_like(X0) + b_bias
    for k in tl.static_range(W):
        acc += tl.load(p_w + k * swk, mask=m3, other=0.).to(tl.float32) * _shift(Xm, X0, X1, o_r, k - (W - 1), V)
    return acc


@triton.jit
def _tile_ids(n_t, n_d):
    """(time block, channel block, batch row) of this program; time blocks vary fastest (halo reuse in L2)."""
    pid = tl.program_id(0)
    return pid % n_t, (pid // n_t) % n_d, pid // (n_t * n_d)


@triton.jit
def _conv_fwd_long_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, out_ptr, final_ptr,
                          D, L, n_t, n_d, sxb, sxc, sxt, swc, swk, sib, sic, sit, sob, soc, sot, sfb, sfc, sft,
                          W: tl.constexpr, WPAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
                          STORE_FINAL: tl.constexpr, SILU: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, V: tl.constexpr):
    i_t, i_d, i_b = _tile_ids(n_t, n_d)
    o_d = (i_d * BLOCK_D + tl.arange(0, BLOCK_D))[:, None, None]
    o_r = tl.arange(0, V)[None, None, :]
    o_t = (i_t * BLOCK_Q + tl.arange(0, BLOCK_Q))[None, :, None] * V + o_r
    m3 = o_d < D
    o_d64 = o_d.to(tl.int64)
    p_x = x_ptr + i_b.to(tl.int64) * sxb + o_d64 * sxc
    p_i = init_ptr + i_b.to(tl.int64) * sib + o_d64 * sic if HAS_INIT else init_ptr
    X0 = _rows(p_x, o_t, m3, L, sxt)
    Xm = _rows(p_x, o_t - V, m3, L, sxt)
    if HAS_INIT:
        if i_t == 0:  # the W-1 inputs before t = 0 sit in row -1 of the first tile (V >= W - 1)
            s = o_t - V
            Xm += tl.load(p_i + (s + W - 1) * sit, mask=m3 & (s < 0) & (s >= 1 - W), other=0.).to(tl.float32)
    b_bias = tl.load(bias_ptr + o_d, mask=m3, other=0.).to(tl.float32) if HAS_BIAS else 0.
    acc = _pre(Xm, X0, X0, w_ptr + o_d * swc, m3, b_bias, o_r, swk, W, V)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    p_o = out_ptr + i_b.to(tl.int64) * sob + o_d64 * soc
    tl.store(p_o + o_t * sot, acc.to(out_ptr.dtype.element_ty), mask=m3 & (o_t < L))
    if STORE_FINAL:
        if i_t == n_t - 1:  # final_states[j] = xpad[L + j] for j < W - 1, i.e. x[L - W + 1 + j] or initial states
            o_c = (i_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)[:, None]
            o_k = tl.arange(0, WPAD)[None, :]
            m2 = (o_c < D) & (o_k < W - 1)
            p_i2 = init_ptr + i_b.to(tl.int64) * sib + o_c * sic if HAS_INIT else init_ptr
            b_f = _load_xpad(x_ptr + i_b.to(tl.int64) * sxb + o_c * sxc, p_i2, L - (W - 1) + o_k, m2, L,
                             sxt, sit, W, HAS_INIT)
            p_f = final_ptr + i_b.to(tl.int64) * sfb + o_c * sfc + o_k * sft
            tl.store(p_f, b_f.to(final_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _conv_bwd_long_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, dout_ptr, dfinal_ptr,
                          dx_ptr, dinit_ptr, dw_part_ptr, db_part_ptr,
                          D, L, n_t, n_d, t_iters, sxb, sxc, sxt, swc, swk, sib, sic, sit, sdb, sdc, sdt,
                          sgb, sgc, sgt, sxgb, sxgc, sxgt, sigb, sigc, sigt,
                          W: tl.constexpr, WPAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr,
                          SILU: tl.constexpr, HAS_DFINAL: tl.constexpr, STORE_DINIT: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr, V: tl.constexpr):
    """g = dout * act'(pre) on the own and the next rows; dx[t] = sum_j w[W-1-j] g[t+j] (+ d final_states).
    A program walks ``t_iters`` consecutive time tiles (n_t counts groups of them) and keeps the dweight terms
    g[t] x[t-W+1+k] summed over its tiles per thread, packed in the V columns (k < V; k = V, possible when
    W = V + 1, apart), so the cross-thread reduction runs once per program for all taps; one float32 row of
    partials per program."""
    i_tp, i_d, i_b = _tile_ids(n_t, n_d)
    o_d = (i_d * BLOCK_D + tl.arange(0, BLOCK_D))[:, None, None]
    o_r = tl.arange(0, V)[None, None, :]
    m3 = o_d < D
    o_d64 = o_d.to(tl.int64)
    p_x = x_ptr + i_b.to(tl.int64) * sxb + o_d64 * sxc
    p_i = init_ptr + i_b.to(tl.int64) * sib + o_d64 * sic if HAS_INIT else init_ptr
    p_d = dout_ptr + i_b.to(tl.int64) * sdb + o_d64 * sdc
    p_f = dfinal_ptr + i_b.to(tl.int64) * sgb + o_d64 * sgc if HAS_DFINAL else dfinal_ptr
    p_dx = dx_ptr + i_b.to(tl.int64) * sxgb + o_d64 * sxgc
    p_w = w_ptr + o_d * swc
    b_bias = tl.load(bias_ptr + o_d, mask=m3, other=0.).to(tl.float32) if HAS_BIAS else 0.
    acc_dw = tl.zeros([BLOCK_D, BLOCK_Q, V], dtype=tl.float32)  # column k: taps k < V
    acc_dwv = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)  # tap k = V (W = V + 1)
    acc_db = tl.zeros([BLOCK_D, BLOCK_Q], dtype=tl.float32)
    for it in range(t_iters):
        i_t = i_tp * t_iters + it  # tiles past the end are fully masked
        o_t = (i_t * BLOCK_Q + tl.arange(0, BLOCK_Q))[None, :, None] * V + o_r
        X0 = _rows(p_x, o_t, m3, L, sxt)
        Xm = _rows(p_x, o_t - V, m3, L, sxt)
        if HAS_INIT:
            if i_t == 0:
                s = o_t - V
                Xm += tl.load(p_i + (s + W - 1) * sit, mask=m3 & (s < 0) & (s >= 1 - W), other=0.).to(tl.float32)
        g0 = _rows(p_d, o_t, m3, L, sdt)
        g1 = _rows(p_d, o_t + V, m3, L, sdt)
        if SILU:
            X1 = _rows(p_x, o_t + V, m3, L, sxt)
            pre = _pre(Xm, X0, X1, p_w, m3, b_bias, o_r, swk, W, V)
            sig = tl.sigmoid(pre)
            g0 = g0 * sig * (1. + pre * (1. - sig))
            pre = _pre(X0, X1, X1, p_w, m3, b_bias, o_r, swk, W, V)
            sig = tl.sigmoid(pre)
            g1 = g1 * sig * (1. + pre * (1. - sig))
        b_dx = tl.zeros_like(g0)
        for j in tl.static_range(W):
            b_w = tl.load(p_w + (W - 1 - j) * swk, mask=m3, other=0.).to(tl.float32)
            b_dx += b_w * _shift(g0, g0, g1, o_r, j, V)
        if HAS_DFINAL:
            if (i_t * BLOCK_Q + BLOCK_Q) * V > L - (W - 1):  # tiles holding the last W-1 inputs
                i_f = o_t - L + (W - 1)
                b_dx += tl.load(p_f + i_f * sgt, mask=m3 & (i_f >= 0) & (o_t < L), other=0.).to(tl.float32)
        tl.store(p_dx + o_t * sxgt, b_dx.to(dx_ptr.dtype.element_ty), mask=m3 & (o_t < L))
        for k in tl.static_range(W):  # g0 is 0 past L
            b_k = tl.sum(g0 * _shift(Xm, X0, X0, o_r, k - (W - 1), V), axis=2)
            if k < V:
                acc_dw = tl.where(o_r == k, acc_dw + b_k[:, :, None], acc_dw)
            else:
                acc_dwv += b_k
        acc_db += tl.sum(g0, axis=2)
    o_row = (i_b * n_t + i_tp).to(tl.int64)
    o_dd = (i_d * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)[:, None]
    o_k = tl.arange(0, V)[None, :]
    tl.store(dw_part_ptr + (o_row * D + o_dd) * W + o_k, tl.sum(acc_dw, axis=1), mask=(o_dd < D) & (o_k < W))
    if W > V:
        tl.store(dw_part_ptr + (o_row * D + o_dd) * W + V, tl.sum(acc_dwv, axis=1)[:, None], mask=o_dd < D)
    if HAS_BIAS:
        tl.store(db_part_ptr + o_row * D + o_dd, tl.sum(acc_db, axis=1)[:, None], mask=o_dd < D)
    if STORE_DINIT:
        if i_tp == 0:  # d initial_states = gradient of the padded input at s = -(W-1) .. -1
            o_s = tl.arange(0, WPAD)[None, :] - (W - 1)
            m2 = o_dd < D
            b_bias2 = tl.load(bias_ptr + o_dd, mask=m2, other=0.).to(tl.float32) if HAS_BIAS else 0.
            p_f2 = dfinal_ptr + i_b.to(tl.int64) * sgb + o_dd * sgc if HAS_DFINAL else dfinal_ptr
            b_di = _grad_xpad(x_ptr + i_b.to(tl.int64) * sxb + o_dd * sxc,
                              init_ptr + i_b.to(tl.int64) * sib + o_dd * sic if HAS_INIT else init_ptr,
                              w_ptr + o_dd * swc,
                              dout_ptr + i_b.to(tl.int64) * sdb + o_dd * sdc, p_f2, b_bias2,
                              o_s, m2, m2, L, sxt, sit, swk, sdt, sgt, W, HAS_INIT, SILU, HAS_DFINAL)
            p_di = dinit_ptr + i_b.to(tl.int64) * sigb + o_dd * sigc + (o_s + W - 1) * sigt
            tl.store(p_di, b_di.to(dinit_ptr.dtype.element_ty), mask=m2 & (o_s < 0))
