"""Triton kernel: everything of a pre-norm Mamba block's last-step inference that comes before the selective scan,
fused, for many short sequences (the video model's temporal encoders at levels with d_inner <= 128).

What it computes, per sequence (row) of ``seqlen`` steps of d_model values (``naive.mamba_block_prep_ref``):
xp = x averaged over groups of POOL steps; h = LayerNorm(xp); xi = h @ in_proj[:d_inner]^T; u = SiLU(causal
depthwise conv(xi) + conv bias); [delta_raw | B | C] = u @ W^T with W = ``Mamba.fold_dt_proj``'s folded
(d_inner + 2 d_state, d_inner) weight (dt_proj folded into x_proj); the last step's gate z = h_T @ in_proj[d_inner:]^T
and its input xp_T. It writes u, delta_raw and [B | C] for every step, z and xp_T for the last: what the selective
scan (``_fwd_last_kernel``, last_only) and the block's output projection read.

Why: the unfused block runs the pooling mean, the LayerNorm, in_proj, the depthwise conv and the x_proj GEMM as five
kernels whose outputs (the pooled and normed inputs, in_proj's x half, the conv output) go through memory; at 32
streams of m2s2l_paper level 0 that is 2M row-steps of 32..128 values each. Here one program owns BLOCK_M rows, reads
their (pooled) steps once (any strides: the streaming state seen as (B, H*W, T, C) in place) and keeps LayerNorm,
in_proj and the conv in registers. Unlike ``mamba_last.py`` (the whole block, scan included) it holds no scan state,
so its registers go to the GEMM tiles; the scan stays ``_fwd_last_kernel``.

Precision: as ``mamba_last.py`` -- GEMM inputs in the GEMM dtype (the autocast dtype, else x's), float32
accumulation, and every intermediate the unfused block stores in the GEMM dtype rounded to it here too.
Launch parameters: ``launch_config``.
"""
import torch
import triton
import triton.language as tl

from .mamba_last import (_CFG, _INTERPRET, _TL, _conv_step, _conv_taps, _mm, _norm_params, _pow2, _rows,
                         _step_input)


@triton.jit(do_not_specialize=["n_rows", "n_inner"])
def _mamba_prep_kernel(x_ptr, nw_ptr, nb_ptr, win_ptr, cw_ptr, cb_ptr, wxdt_ptr, u_ptr, dl_ptr, bc_ptr, z_ptr,
                       xl_ptr, n_rows, n_inner, sx_o, sx_i, sx_t, sx_c, eps,
                       T: tl.constexpr, POOL: tl.constexpr, C: tl.constexpr, DI: tl.constexpr,
                       N2: tl.constexpr, K: tl.constexpr, HAS_NW: tl.constexpr, HAS_NB: tl.constexpr,
                       HAS_CB: tl.constexpr, X_DT: tl.constexpr, DT: tl.constexpr, IEEE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_J: tl.constexpr):
    o_m, m_m, p_x = _rows(x_ptr, n_rows, n_inner, sx_o, sx_i, BLOCK_M)
    o_c = tl.arange(0, BLOCK_C)
    o_d = tl.arange(0, BLOCK_D)
    o_j = tl.arange(0, BLOCK_J)
    m_c, m_d, m_j = o_c < C, o_d < DI, o_j < N2
    m_xc = m_m[:, None] & m_c[None, :]
    m_md = m_m[:, None] & m_d[None, :]
    m_cd = m_c[:, None] & m_d[None, :]
    b_nw, b_nb = _norm_params(nw_ptr, nb_ptr, o_c, m_c, HAS_NW, HAS_NB, BLOCK_C)
    cw0, cw1, cw2, cw3, b_cb = _conv_taps(cw_ptr, cb_ptr, o_d, m_d, K, HAS_CB, BLOCK_D)
    b_x1 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)   # conv inputs of steps t-1, t-2, t-3
    b_x2 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    b_x3 = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    b_xt = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    b_h = tl.zeros([BLOCK_M, BLOCK_C], dtype=DT)
    o_md = o_m[:, None] * (T * DI) + o_d[None, :]          # (row, step 0, channel) in the (rows, T, DI) outputs
    o_mj = o_m[:, None] * (T * N2) + o_j[None, :]
    for t in range(T):
        b_xt, b_h = _step_input(p_x, t, sx_t, sx_c, o_c, m_c, m_xc, b_nw, b_nb, eps, X_DT, C, POOL, DT,
                                BLOCK_M, BLOCK_C)
        b_xi, b_u = _conv_step(b_h, win_ptr, o_c, o_d, m_cd, b_x1, b_x2, b_x3, cw0, cw1, cw2, cw3, b_cb, C, DT,
                               IEEE)                                                          # (M, D)
        b_x3 = b_x2
        b_x2 = b_x1
        b_x1 = b_xi
        b_ud = b_u.to(DT)
        tl.store(u_ptr + o_md + t * DI, b_ud, mask=m_md)
        # [delta_raw | B | C] = u @ W^T: W's first DI rows, then its 2N rows; the weight tiles are (re)loaded from
        # L1 / L2 each step (held, they would take the registers of the conv history)
        w_dl = tl.load(wxdt_ptr + o_d[None, :] * DI + o_d[:, None], mask=m_d[:, None] & m_d[None, :],
                       other=0.).to(DT)                                                      # (D in, D out)
        tl.store(dl_ptr + o_md + t * DI, _mm(b_ud, w_dl, IEEE).to(DT), mask=m_md)
        w_bc = tl.load(wxdt_ptr + (DI + o_j[None, :]) * DI + o_d[:, None], mask=m_d[:, None] & m_j[None, :],
                       other=0.).to(DT)                                                      # (D, 2N)
        tl.store(bc_ptr + o_mj + t * N2, _mm(b_ud, w_bc, IEEE).to(DT), mask=m_m[:, None] & m_j[None, :])
    # the last step: in_proj's gate half on its normed input, and its (pooled) input for the block's residual
    w_inz = tl.load(win_ptr + (DI + o_d[None, :]) * C + o_c[:, None], mask=m_cd, other=0.).to(DT)    # (C, D)
    tl.store(z_ptr + o_m[:, None] * DI + o_d[None, :], _mm(b_h, w_inz, IEEE).to(DT), mask=m_md)
    tl.store(xl_ptr + o_m[:, None] * C + o_c[None, :], b_xt.to(X_DT), mask=m_xc)


def launch_config():
    """(BLOCK_M, num_warps) of the prep kernel: 16 rows, 8 warps -- not timed on a GPU yet; chosen from the sm_90
    compile (triton 3.6, bf16, 4 steps; registers a thread): d_inner 64 221 at 4 warps / 148 at 8, d_inner 128 255
    with 1.5 KB of spills at 4 warps / 255 without spills at 8. ``M2S2L_BLOCK_CFG`` keys ``prep_block_m`` /
    ``prep_warps`` override."""
    return _CFG.get("prep_block_m", 16), _CFG.get("prep_warps", 8)


def mamba_prep_fwd(x, norm_weight, norm_bias, eps, in_proj_weight, conv_weight, conv_bias, xdt_weight, pool,
                   dot_dtype, u, delta, bc, z, x_last):
    """Launch the kernel. x (n_outer, n_inner, seqlen, d_model), any strides; weights contiguous; outputs contiguous:
    u, delta (rows, seqlen / pool, d_inner), bc (rows, seqlen / pool, 2 d_state) and z (rows, d_inner) in
    ``dot_dtype``, x_last (rows, d_model) in x's dtype (checked by ``m2s2l.ops.mamba_block_prep``)."""
    n_outer, n_inner, seqlen, C = x.shape
    DI, K = conv_weight.shape
    N2 = xdt_weight.shape[0] - DI
    rows = n_outer * n_inner
    if rows == 0:
        return
    block_m, warps = launch_config()
    _mamba_prep_kernel[(triton.cdiv(rows, block_m),)](
        x, norm_weight, norm_bias, in_proj_weight, conv_weight, conv_bias, xdt_weight, u, delta, bc, z, x_last,
        rows, n_inner, *x.stride(), eps, T=seqlen // pool, POOL=pool, C=C, DI=DI, N2=N2, K=K,
        HAS_NW=norm_weight is not None, HAS_NB=norm_bias is not None, HAS_CB=conv_bias is not None,
        X_DT=_TL[x.dtype], DT=_TL[dot_dtype], IEEE=dot_dtype == torch.float32 or _INTERPRET, BLOCK_M=block_m,
        BLOCK_C=_pow2(C), BLOCK_D=_pow2(DI), BLOCK_J=_pow2(N2), num_warps=warps)

