"""Triton causal depthwise conv1d: forward and backward kernels and their launchers (no autograd here;
``m2s2l.ops.causal_conv1d_fn`` wraps them in a custom op).

Tiling. Every program covers a [BLOCK_B, BLOCK_C, BLOCK_T] tile of (batch, channel, time), so a video shape
such as (16384, 128, 8) gets 2x128x8 elements per program instead of one program per tiny row. The
width-1 halo before a time tile is read with shifted loads (from x, from ``initial_states`` before t=0,
or zeros); the shifted loads of one tile hit L1/L2. Strides are passed for every tensor, so contiguous,
sliced and channel-last (``x.stride(1) == 1``) inputs run without a copy; Triton specialises stride==1.

Precision. Loads are cast to float32 and accumulated in float32; out/dx are stored in x's dtype.
weight/bias may have their own float dtype (e.g. float32 weights with bf16 x); dweight/dbias are
returned in the weight's/bias's dtype, d initial_states in the initial_states' dtype.

Backward. g = dout * act'(pre) is recomputed from x (pre costs WIDTH shifted loads); the gradient of the
padded input is dxpad[s] = sum_j w[W-1-j] * g[s+j] (+ d final_states for the last W-1 inputs), written to
dx for s >= 0 and to d initial_states for s < 0. dweight/dbias are reduced deterministically: each
program accumulates float32 partials over its batch blocks (a loop of ``b_iters``), writes one row of
a (programs, dim, width) buffer, and torch sums the rows (no atomics, so results are bit-reproducible).
"""
import torch
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


# ---- launchers ----------------------------------------------------------------------------------------

def _alloc_like(x):
    """Output with x's layout: channel-last in -> channel-last out, otherwise contiguous."""
    if x.stride(1) == 1 and x.stride(2) != 1 and x.shape[1] > 1:
        return torch.empty(x.shape[0], x.shape[2], x.shape[1], dtype=x.dtype, device=x.device).transpose(1, 2)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _tiles(x, tile):
    """[BLOCK_B, BLOCK_C, BLOCK_T] with about ``tile`` elements, long along the contiguous axis."""
    batch, dim, L = x.shape
    chan_last = x.stride(1) == 1 and x.stride(2) != 1
    bt = min(triton.next_power_of_2(L), 16 if chan_last else 128)
    bc = min(triton.next_power_of_2(dim), max(1, tile // bt), 256)
    bb = min(triton.next_power_of_2(batch), max(1, tile // (bt * bc)))
    return bb, bc, bt


def _strides(t, n=3):
    return tuple(t.stride()) if t is not None else (0,) * n


def causal_conv1d_fwd(x, weight, bias=None, initial_states=None, activation=None, return_final_states=False):
    """Launch the forward kernel. Returns (out, final_states or None); out has x's layout and dtype."""
    batch, dim, L = x.shape
    width = weight.shape[1]
    out = _alloc_like(x)
    final = None
    if return_final_states:
        final = torch.empty(batch, dim, width - 1, dtype=x.dtype, device=x.device)
    bb, bc, bt = _tiles(x, 2048)
    grid = (triton.cdiv(batch, bb), triton.cdiv(dim, bc), triton.cdiv(L, bt))
    _conv_fwd_kernel[grid](
        x, weight, bias, initial_states, out, final, batch, dim, L, *x.stride(), *weight.stride(),
        *_strides(initial_states), *out.stride(), *_strides(final),
        W=width, HAS_BIAS=bias is not None, HAS_INIT=initial_states is not None,
        STORE_FINAL=return_final_states and width > 1, SILU=activation in ("silu", "swish"),
        BLOCK_B=bb, BLOCK_C=bc, BLOCK_T=bt, num_warps=8)
    return out, final


def _target_programs(device):
    """Backward programs to aim for: ~32 per SM on a GPU (enough in flight to hide load latency); 1 on CPU
    (TRITON_INTERPRET=1), so small tests exercise the in-program batch loop."""
    if device.type == "cuda":
        return 32 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def causal_conv1d_bwd(x, weight, bias, initial_states, dout, dfinal_states=None, activation=None,
                      need_dinit=True):
    """Launch the backward kernel. Returns (dx, dweight, dbias or None, dinitial_states or None)."""
    batch, dim, L = x.shape
    width = weight.shape[1]
    dx = _alloc_like(x)
    store_dinit = initial_states is not None and need_dinit and width > 1
    dinit = torch.empty_like(initial_states) if store_dinit else None
    if width == 1:
        dfinal_states = None
    # The SiLU backward recomputes pre-activations at W shifts (W*W shifted loads): smaller tiles keep
    # the per-thread pointers in registers (sm_90: W=4 -> 512-element tiles, ~237 registers, no spills).
    bb, bc, bt = _tiles(x, max(128, 2048 // width))
    n_b, n_c, n_t = triton.cdiv(batch, bb), triton.cdiv(dim, bc), triton.cdiv(L, bt)
    # Loop over batch blocks inside a program (fewer dweight partial rows) down to the target program count.
    b_iters = max(1, min(n_b, (n_b * n_c * n_t) // _target_programs(x.device)))
    n_bp = triton.cdiv(n_b, b_iters)
    dw_part = torch.empty(n_bp * n_t, dim, width, dtype=torch.float32, device=x.device)
    db_part = torch.empty(n_bp * n_t, dim, dtype=torch.float32, device=x.device) if bias is not None else None
    _conv_bwd_kernel[(n_bp, n_c, n_t)](
        x, weight, bias, initial_states, dout, dfinal_states, dx, dinit, dw_part, db_part,
        batch, dim, L, b_iters, n_t, *x.stride(), *weight.stride(), *_strides(initial_states),
        *dout.stride(), *_strides(dfinal_states), *dx.stride(), *_strides(dinit),
        W=width, WPAD=triton.next_power_of_2(width), HAS_BIAS=bias is not None,
        HAS_INIT=initial_states is not None, SILU=activation in ("silu", "swish"),
        HAS_DFINAL=dfinal_states is not None, STORE_DINIT=store_dinit,
        BLOCK_B=bb, BLOCK_C=bc, BLOCK_T=bt, num_warps=4)
    dweight = dw_part.sum(0).to(weight.dtype)
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else None
    if initial_states is not None and need_dinit and width == 1:
        dinit = torch.zeros_like(initial_states)
    return dx, dweight, dbias, dinit
