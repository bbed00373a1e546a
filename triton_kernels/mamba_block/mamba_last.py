"""Triton kernel: the last step of a pre-norm residual Mamba block over many short sequences, fused (inference).

What it computes, per sequence (row) of ``seqlen`` steps of d_model values (``naive.mamba_block_last_ref``):
xp = x averaged over groups of POOL steps; h = LayerNorm(xp); (xi, z) = h @ in_proj^T; xc = SiLU(causal depthwise
conv(xi) + conv bias); (dt, B, C) = xc @ x_proj^T; delta = softplus(dt @ dt_proj^T + dt bias); the selective scan
state s_t = exp(delta_t A) s_{t-1} + delta_t B_t xc_t from zero; y = (C_T . s_T + D xc_T) * SiLU(z_T); and
out = xp_T + y @ out_proj^T -- only the last step T is formed.

Why: the video model runs one such block per pyramid level and temporal scale on every spatial location (e.g.
524,288 sequences of 4 steps at 32 streams), where the unfused block is ~8 kernels whose intermediates (xz, the conv
output, delta, B, C: 2-4x the input per step, channel-wide) go through memory, and the input first needs a layout
copy to (rows, seqlen, d_model). Here one program owns BLOCK_M rows: it reads their steps once (any strides: the
(B, T, C, H, W) feature maps in place), keeps everything else in registers, and writes d_model values a row.

Program: rows [pid * BLOCK_M, +BLOCK_M). Weights are loaded once (transposed tiles, cast to the GEMM input dtype);
then one loop over the T = seqlen / POOL steps with loop-carried registers: the (BLOCK_M, BLOCK_D, BLOCK_N) float32
state, the conv's last d_conv - 1 inputs, the last step's xc / C / normed input. The four projections are
``tl.dot`` (BLOCK_M >= 16; d_model, d_inner, d_state padded to powers of two >= 16, dt_rank padded to 16 with
zero weights). d_inner <= ``MAX_D_INNER`` (the state must fit the registers), d_conv <= 4.

Precision: the GEMMs take DOT inputs (bf16/fp16: the autocast dtype, as the unfused block's GEMMs run under
autocast; float32: exact, ``input_precision="ieee"``) and accumulate in float32; every intermediate the unfused block
stores in the GEMM dtype (xi and z, the conv output, dt/B/C, delta, y, out_proj's output) is rounded to that dtype
here too, so the kernel differs from the unfused block by accumulation order only. LayerNorm, conv, softplus, the
scan and the residual run in float32; the output is stored in out's dtype.

Launch parameters can be overridden with ``M2S2L_BLOCK_CFG="block_m=32,warps=8"`` (read at import).
"""
import os

import torch
import triton
import triton.language as tl

from .._config import env_int_config
from ..selective_scan.scan_common import _softplus
from . import MAX_ONE_CHUNK

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_CFG = env_int_config("M2S2L_BLOCK_CFG")


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    """a @ b with float32 accumulation; ``IEEE``: exact float32 products (float32 inputs), else the inputs' type.
    (Triton's CPU interpreter multiplies bf16 tiles wrongly, so there IEEE also means: inputs widened first.)"""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _rnd(v, DT: tl.constexpr):
    """v rounded to the GEMM dtype and back to float32 (what the unfused block stores between its kernels)."""
    return v.to(DT).to(tl.float32)


@triton.jit
def _silu(v):
    return v / (1.0 + tl.exp(-v))


@triton.jit
def _rows(x_ptr, n_rows, n_inner, sx_o, sx_i, BLOCK_M: tl.constexpr):
    """This program's BLOCK_M rows of x (n_outer, n_inner, seqlen, d_model): (row index, mask, start pointers)."""
    o_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    return o_m, o_m < n_rows, x_ptr + (o_m // n_inner) * sx_o + (o_m % n_inner) * sx_i


@triton.jit
def _norm_params(nw_ptr, nb_ptr, o_c, m_c, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr, BLOCK_C: tl.constexpr):
    """The LayerNorm's weight and bias (ones / zeros where absent), (BLOCK_C,) float32."""
    if HAS_NW:
        b_nw = tl.load(nw_ptr + o_c, mask=m_c, other=0.).to(tl.float32)
    else:
        b_nw = tl.where(m_c, 1.0, 0.0)
    if HAS_NB:
        b_nb = tl.load(nb_ptr + o_c, mask=m_c, other=0.).to(tl.float32)
    else:
        b_nb = tl.zeros([BLOCK_C], dtype=tl.float32)
    return b_nw, b_nb


@triton.jit
def _step_input(p_x, t, sx_t, sx_c, o_c, m_c, m_xc, b_nw, b_nb, eps, X_DT: tl.constexpr, C: tl.constexpr,
                POOL: tl.constexpr, DT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Step t of the rows: (the pooled input in float32, its LayerNorm in the GEMM dtype), (BLOCK_M, BLOCK_C)."""
    b_xt = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for p in tl.static_range(POOL):
        b_xt += tl.load(p_x[:, None] + (t * POOL + p) * sx_t + o_c[None, :] * sx_c, mask=m_xc,
                        other=0.).to(tl.float32)
    if POOL > 1:  # the unfused block's mean over the pool, stored in x's dtype
        b_xt = (b_xt / POOL).to(X_DT).to(tl.float32)
    mean = tl.sum(b_xt, axis=1) / C
    b_xm = tl.where(m_c[None, :], b_xt - mean[:, None], 0.)
    rstd = tl.rsqrt(tl.sum(b_xm * b_xm, axis=1) / C + eps)
    return b_xt, (b_xm * rstd[:, None] * b_nw[None, :] + b_nb[None, :]).to(DT)


@triton.jit
def _conv_taps(cw_ptr, cb_ptr, o_d, m_d, K: tl.constexpr, HAS_CB: tl.constexpr, BLOCK_D: tl.constexpr):
    """The conv weights of x_t, x_{t-1}, x_{t-2}, x_{t-3} (zero beyond d_conv) and the bias, (BLOCK_D,) each."""
    cw0 = tl.load(cw_ptr + o_d * K + (K - 1), mask=m_d, other=0.).to(tl.float32)
    cw1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    cw2 = tl.zeros([BLOCK_D], dtype=tl.float32)
    cw3 = tl.zeros([BLOCK_D], dtype=tl.float32)
    if K > 1:
        cw1 = tl.load(cw_ptr + o_d * K + (K - 2), mask=m_d, other=0.).to(tl.float32)
    if K > 2:
        cw2 = tl.load(cw_ptr + o_d * K + (K - 3), mask=m_d, other=0.).to(tl.float32)
    if K > 3:
        cw3 = tl.load(cw_ptr + o_d * K + (K - 4), mask=m_d, other=0.).to(tl.float32)
    if HAS_CB:
        b_cb = tl.load(cb_ptr + o_d, mask=m_d, other=0.).to(tl.float32)
    else:
        b_cb = tl.zeros([BLOCK_D], dtype=tl.float32)
    return cw0, cw1, cw2, cw3, b_cb


@triton.jit
def _conv_step(b_h, win_ptr, o_c, o_d, m_cd, b_x1, b_x2, b_x3, cw0, cw1, cw2, cw3, b_cb, C: tl.constexpr,
               DT: tl.constexpr, IEEE: tl.constexpr):
    """in_proj's x part of one step for channels o_d, the causal conv with the previous inputs b_x1..b_x3 and SiLU:
    (its input xi, its output rounded to the GEMM dtype), (BLOCK_M, BLOCK_D) float32 each. The weight tile is
    (re)loaded here, from L1/L2: held across the time loop it would take the registers the state needs."""
    w_inx = tl.load(win_ptr + o_d[None, :] * C + o_c[:, None], mask=m_cd, other=0.).to(DT)           # (C, D)
    b_xi = _rnd(_mm(b_h, w_inx, IEEE), DT)
    b_cv = b_xi * cw0[None, :] + b_x1 * cw1[None, :] + b_x2 * cw2[None, :] + b_x3 * cw3[None, :] + b_cb[None, :]
    return b_xi, _rnd(_silu(b_cv), DT)


@triton.jit
def _x_proj(b_xsd, wx_ptr, o_d, o_r, o_n, m_d, m_r, m_n, DI: tl.constexpr, N: tl.constexpr, RANK: tl.constexpr,
            DT: tl.constexpr, IEEE: tl.constexpr):
    """x_proj of one step over channels o_d: its dt, B and C parts, (BLOCK_M, BLOCK_R / BLOCK_N) float32 sums."""
    m_dn = m_d[:, None] & m_n[None, :]
    w_xdt = tl.load(wx_ptr + o_r[None, :] * DI + o_d[:, None], mask=m_d[:, None] & m_r[None, :], other=0.).to(DT)
    w_xb = tl.load(wx_ptr + (RANK + o_n[None, :]) * DI + o_d[:, None], mask=m_dn, other=0.).to(DT)
    w_xc = tl.load(wx_ptr + (RANK + N + o_n[None, :]) * DI + o_d[:, None], mask=m_dn, other=0.).to(DT)
    return _mm(b_xsd, w_xdt, IEEE), _mm(b_xsd, w_xb, IEEE), _mm(b_xsd, w_xc, IEEE)


@triton.jit
def _pick(acc, o_t, t):
    """Row t of a (BLOCK_T, ...) register tensor."""
    return tl.sum(tl.where(o_t[:, None, None] == t, acc, 0.), axis=0)


@triton.jit(do_not_specialize=["n_rows", "n_inner"])
def _mamba_last_kernel(x_ptr, out_ptr, nw_ptr, nb_ptr, win_ptr, cw_ptr, cb_ptr, wx_ptr, wdt_ptr, dtb_ptr, alog_ptr,
                       d_ptr, wout_ptr, n_rows, n_inner, sx_o, sx_i, sx_t, sx_c, so_o, so_i, so_c, eps,
                       T: tl.constexpr, POOL: tl.constexpr, C: tl.constexpr, DI: tl.constexpr, N: tl.constexpr,
                       RANK: tl.constexpr, K: tl.constexpr, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr,
                       HAS_CB: tl.constexpr, X_DT: tl.constexpr, DT: tl.constexpr, IEEE: tl.constexpr,
                       CHUNKS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    o_m, m_m, p_x = _rows(x_ptr, n_rows, n_inner, sx_o, sx_i, BLOCK_M)
    o_c = tl.arange(0, BLOCK_C)
    o_n = tl.arange(0, BLOCK_N)
    o_r = tl.arange(0, BLOCK_R)
    m_c, m_n, m_r = o_c < C, o_n < N, o_r < RANK
    m_xc = m_m[:, None] & m_c[None, :]
    b_nw, b_nb = _norm_params(nw_ptr, nb_ptr, o_c, m_c, HAS_NW, HAS_NB, BLOCK_C)
    o_t = tl.arange(0, BLOCK_T)

    # ---- phase 1, only when d_inner spans several chunks: x_proj's outputs (dt, B, C) of every step, summed over
    # the chunks in float32 registers (BLOCK_T, BLOCK_M, .) -- the scan of a chunk needs them whole ----
    acc_dt = tl.zeros([BLOCK_T, BLOCK_M, BLOCK_R], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_T, BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_c = tl.zeros([BLOCK_T, BLOCK_M, BLOCK_N], dtype=tl.float32)
    if CHUNKS > 1:
        for ic in range(CHUNKS):
            o_d = ic * BLOCK_D + tl.arange(0, BLOCK_D)
            m_d = o_d < DI
            cw0, cw1, cw2, cw3, b_cb = _conv_taps(cw_ptr, cb_ptr, o_d, m_d, K, HAS_CB, BLOCK_D)
            b_x1 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            b_x2 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            b_x3 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            for t in range(T):
                b_xt, b_h = _step_input(p_x, t, sx_t, sx_c, o_c, m_c, m_xc, b_nw, b_nb, eps, X_DT, C, POOL, DT,
                                        BLOCK_M, BLOCK_C)
                b_xi, b_xs = _conv_step(b_h, win_ptr, o_c, o_d, m_c[:, None] & m_d[None, :], b_x1, b_x2, b_x3,
                                        cw0, cw1, cw2, cw3, b_cb, C, DT, IEEE)
                b_x3 = b_x2
                b_x2 = b_x1
                b_x1 = b_xi
                p_dt, p_b, p_c = _x_proj(b_xs.to(DT), wx_ptr, o_d, o_r, o_n, m_d, m_r, m_n, DI, N, RANK, DT, IEEE)
                sel = o_t[:, None, None] == t
                acc_dt += tl.where(sel, p_dt[None, :, :], 0.)
                acc_b += tl.where(sel, p_b[None, :, :], 0.)
                acc_c += tl.where(sel, p_c[None, :, :], 0.)

    # ---- phase 2: per chunk of d_inner, the T steps with loop-carried registers, then the chunk's share of
    # out_proj. The state is (N, M, D): with the state index first, each thread's share of the tensor runs along it
    # (the default layout spreads the last axes over the threads), so the per-(row, channel) step values it
    # multiplies in and the final sum over N stay in the thread ----
    acc_o = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    b_xt = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for ic in range(CHUNKS):
        o_d = ic * BLOCK_D + tl.arange(0, BLOCK_D)
        m_d = o_d < DI
        m_cd = m_c[:, None] & m_d[None, :]
        cw0, cw1, cw2, cw3, b_cb = _conv_taps(cw_ptr, cb_ptr, o_d, m_d, K, HAS_CB, BLOCK_D)
        b_dtb = tl.load(dtb_ptr + o_d, mask=m_d, other=0.).to(tl.float32)
        m_nd = m_n[:, None] & m_d[None, :]
        b_A = -tl.exp(tl.load(alog_ptr + o_d[None, :] * N + o_n[:, None], mask=m_nd, other=0.).to(tl.float32))
        b_s = tl.zeros([BLOCK_N, BLOCK_M, BLOCK_D], dtype=tl.float32)
        b_x1 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)   # conv inputs of steps t-1, t-2, t-3
        b_x2 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        b_x3 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        b_h = tl.zeros([BLOCK_M, BLOCK_C], dtype=DT)
        b_xs = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        b_cm = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for t in range(T):
            b_xt, b_h = _step_input(p_x, t, sx_t, sx_c, o_c, m_c, m_xc, b_nw, b_nb, eps, X_DT, C, POOL, DT,
                                    BLOCK_M, BLOCK_C)
            b_xi, b_xs = _conv_step(b_h, win_ptr, o_c, o_d, m_cd, b_x1, b_x2, b_x3, cw0, cw1, cw2, cw3, b_cb, C,
                                    DT, IEEE)                                               # (M, D)
            b_x3 = b_x2
            b_x2 = b_x1
            b_x1 = b_xi
            if CHUNKS == 1:
                p_dt, p_b, p_c = _x_proj(b_xs.to(DT), wx_ptr, o_d, o_r, o_n, m_d, m_r, m_n, DI, N, RANK, DT, IEEE)
                b_dtl = p_dt.to(DT)                                                          # (M, R)
                b_bm = _rnd(p_b, DT)                                                         # (M, N)
                b_cm = _rnd(p_c, DT)
            else:
                b_dtl = _pick(acc_dt, o_t, t).to(DT)
                b_bm = _rnd(_pick(acc_b, o_t, t), DT)
                b_cm = _rnd(_pick(acc_c, o_t, t), DT)
            w_dt = tl.load(wdt_ptr + o_d[None, :] * RANK + o_r[:, None], mask=m_r[:, None] & m_d[None, :],
                           other=0.).to(DT)                                                         # (R, D)
            b_dl = _softplus(_rnd(_mm(b_dtl, w_dt, IEEE), DT) + b_dtb[None, :])             # (M, D)
            b_s = (b_s * tl.exp(b_dl[None, :, :] * b_A[:, None, :])
                   + (b_dl * b_xs)[None, :, :] * tl.trans(b_bm)[:, :, None])
        # the last step's output for this chunk
        b_D = tl.load(d_ptr + o_d, mask=m_d, other=0.).to(tl.float32)
        b_y = tl.sum(b_s * tl.trans(b_cm)[:, :, None], axis=0) + b_D[None, :] * b_xs
        w_inz = tl.load(win_ptr + (DI + o_d[None, :]) * C + o_c[:, None], mask=m_cd, other=0.).to(DT)   # (C, D)
        b_z = _rnd(_mm(b_h, w_inz, IEEE), DT)
        b_y = (b_y * _silu(b_z)).to(DT)
        w_out = tl.load(wout_ptr + o_c[None, :] * DI + o_d[:, None], mask=m_d[:, None] & m_c[None, :],
                        other=0.).to(DT)                                                            # (D, C)
        acc_o += _mm(b_y, w_out, IEEE)
    if POOL == 1:
        b_xt = b_xt.to(X_DT).to(tl.float32)
    b_o = b_xt + _rnd(acc_o, DT)
    p_o = out_ptr + (o_m // n_inner)[:, None] * so_o + (o_m % n_inner)[:, None] * so_i + o_c[None, :] * so_c
    tl.store(p_o, b_o.to(out_ptr.dtype.element_ty), mask=m_xc)


_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _pow2(n, lo=16):
    return max(lo, triton.next_power_of_2(n))


def launch_config():
    """(BLOCK_M, num_warps): 16 rows and 8 warps a program (sm_90 AOT, triton 3.9, bf16: d_inner 64 -> 229 registers,
    no spills; 128 -> 255 and 1.4 KB of spills, 16 warps spill more); ``M2S2L_BLOCK_CFG`` keys ``block_m`` / ``warps``
    override."""
    return _CFG.get("block_m", 16), _CFG.get("warps", 8)


def mamba_last_fwd(x, out, norm_weight, norm_bias, eps, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                   dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, pool, dot_dtype):
    """Launch the kernel. x (n_outer, n_inner, seqlen, d_model) and out (n_outer, n_inner, d_model), any strides;
    weights contiguous (checked by ``m2s2l.ops.mamba_block_last``); dot_dtype: the GEMM input dtype."""
    n_outer, n_inner, seqlen, C = x.shape
    DI, K = conv_weight.shape
    N = A_log.shape[1]
    rank = dt_proj_weight.shape[1]
    rows = n_outer * n_inner
    if rows == 0:
        return out
    block_m, warps = launch_config()
    block_d = _pow2(DI) if DI <= MAX_ONE_CHUNK else _CFG.get("chunk", 64)
    grid = (triton.cdiv(rows, block_m),)
    _mamba_last_kernel[grid](
        x, out, norm_weight, norm_bias, in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
        dt_proj_bias, A_log, D, out_proj_weight, rows, n_inner, *x.stride(), *out.stride(), eps,
        T=seqlen // pool, POOL=pool, C=C, DI=DI, N=N, RANK=rank, K=K, HAS_NW=norm_weight is not None,
        HAS_NB=norm_bias is not None, HAS_CB=conv_bias is not None, X_DT=_TL[x.dtype], DT=_TL[dot_dtype],
        IEEE=dot_dtype == torch.float32 or _INTERPRET, CHUNKS=triton.cdiv(DI, block_d), BLOCK_M=block_m,
        BLOCK_C=_pow2(C), BLOCK_D=block_d, BLOCK_N=_pow2(N), BLOCK_R=_pow2(rank),
        BLOCK_T=triton.next_power_of_2(seqlen // pool), num_warps=warps)
    return out
