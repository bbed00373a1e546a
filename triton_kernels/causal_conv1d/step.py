"""Triton one-token step of the causal depthwise conv1d (streaming decode), in place on ``conv_state``.

The window for the new token is the last ``width`` entries of [conv_state, x]; conv_state then shifts left
by one and takes x as its last column. conv_state may be longer than width - 1 (as in causal-conv1d and
mamba-ssm, whose Mamba caches ``d_conv`` columns): only its last width - 1 columns enter the conv.
Each program covers one batch row and BLOCK_C channels; all reads precede a barrier and all writes follow
it, because the shifted state is read and written by different threads of the program.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _conv_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, D, S,
                        sxb, sxc, ssb, ssc, sss, swc, swk, sob, soc,
                        W: tl.constexpr, SPAD: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    i_b, i_c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < D
    p_s = state_ptr + i_b * ssb + o_c * ssc
    b_x = tl.load(x_ptr + i_b * sxb + o_c * sxc, mask=m_c, other=0.)
    b_acc = tl.load(w_ptr + o_c * swc + (W - 1) * swk, mask=m_c, other=0.).to(tl.float32) * b_x.to(tl.float32)
    for k in tl.static_range(W - 1):
        b_w = tl.load(w_ptr + o_c * swc + k * swk, mask=m_c, other=0.).to(tl.float32)
        b_acc += b_w * tl.load(p_s + (S - W + 1 + k) * sss, mask=m_c, other=0.).to(tl.float32)
    if HAS_BIAS:
        b_acc += tl.load(bias_ptr + o_c, mask=m_c, other=0.).to(tl.float32)
    if SILU:
        b_acc = b_acc * tl.sigmoid(b_acc)
    o_j = tl.arange(0, SPAD)[None, :]
    b_new = tl.load(p_s[:, None] + (o_j + 1) * sss, mask=m_c[:, None] & (o_j + 1 < S), other=0.)
    b_new = tl.where(o_j == S - 1, b_x[:, None].to(b_new.dtype), b_new)
    tl.debug_barrier()
    tl.store(p_s[:, None] + o_j * sss, b_new, mask=m_c[:, None] & (o_j < S))
    tl.store(out_ptr + i_b * sob + o_c * soc, b_acc.to(out_ptr.dtype.element_ty), mask=m_c)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """Launch the step kernel: x (batch, dim), conv_state (batch, dim, state_len >= width - 1) updated in
    place, weight (dim, width), bias (dim,). Returns out (batch, dim) in x's dtype."""
    batch, dim = x.shape
    width = weight.shape[1]
    state_len = conv_state.shape[2]
    out = torch.empty(batch, dim, dtype=x.dtype, device=x.device)
    block_c = min(triton.next_power_of_2(dim), 256)
    grid = (batch, triton.cdiv(dim, block_c))
    _conv_update_kernel[grid](
        x, conv_state, weight, bias, out, dim, state_len, *x.stride(), *conv_state.stride(), *weight.stride(),
        *out.stride(), W=width, SPAD=triton.next_power_of_2(max(state_len, 1)), HAS_BIAS=bias is not None,
        SILU=activation in ("silu", "swish"), BLOCK_C=block_c, num_warps=4)
    return out
