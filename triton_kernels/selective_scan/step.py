"""Triton one-token step of the selective scan (streaming decode), in place on the state.

h = exp(dt * A) * h + dt * B * x ;  y = sum_n C h + D x ;  out = y * silu(z), with dt = softplus(dt + dt_bias)
when asked. Each program covers one batch row and BLOCK_C channels x dstate; channel c reads B/C of group
c // (dim // groups). Math in float32; the state keeps its own dtype (float32 recommended).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, out_ptr,
                         DIM, N, CPG, ssb, ssc, ssn, sxb, sxc, sdb, sdc, sac, san, sbb, sbg, sbn,
                         scb, scg, scn, szb, szc, sob, soc,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
                         SOFTPLUS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    i_b, i_c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    o_n = tl.arange(0, BLOCK_N)
    m_c = o_c < DIM
    m_cn = m_c[:, None] & (o_n[None, :] < N)
    o_g = (o_c // CPG)[:, None]
    b_x = tl.load(x_ptr + i_b * sxb + o_c * sxc, mask=m_c, other=0.).to(tl.float32)
    b_dt = tl.load(dt_ptr + i_b * sdb + o_c * sdc, mask=m_c, other=0.).to(tl.float32)
    if HAS_DT_BIAS:
        b_dt += tl.load(dtb_ptr + o_c, mask=m_c, other=0.).to(tl.float32)
    if SOFTPLUS:
        b_dt = tl.where(b_dt <= 20., tl.log(1. + tl.exp(b_dt)), b_dt)
    b_A = tl.load(A_ptr + o_c[:, None] * sac + o_n[None, :] * san, mask=m_cn, other=0.).to(tl.float32)
    b_B = tl.load(B_ptr + i_b * sbb + o_g * sbg + o_n[None, :] * sbn, mask=m_cn, other=0.).to(tl.float32)
    b_C = tl.load(C_ptr + i_b * scb + o_g * scg + o_n[None, :] * scn, mask=m_cn, other=0.).to(tl.float32)
    p_h = state_ptr + i_b * ssb + o_c[:, None] * ssc + o_n[None, :] * ssn
    b_h = tl.load(p_h, mask=m_cn, other=0.).to(tl.float32)
    b_h = b_h * tl.exp(b_dt[:, None] * b_A) + (b_dt * b_x)[:, None] * b_B
    tl.store(p_h, b_h.to(state_ptr.dtype.element_ty), mask=m_cn)
    b_y = tl.sum(b_h * b_C, axis=1)
    if HAS_D:
        b_y += b_x * tl.load(D_ptr + o_c, mask=m_c, other=0.).to(tl.float32)
    if HAS_Z:
        b_z = tl.load(z_ptr + i_b * szb + o_c * szc, mask=m_c, other=0.).to(tl.float32)
        b_y *= b_z * tl.sigmoid(b_z)
    tl.store(out_ptr + i_b * sob + o_c * soc, b_y.to(out_ptr.dtype.element_ty), mask=m_c)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Launch the step kernel: state (batch, dim, dstate) updated in place; x, dt, z (batch, dim);
    A (dim, dstate); B, C (batch, dstate) or (batch, groups, dstate); D, dt_bias (dim,).
    Returns out (batch, dim) in x's dtype."""
    batch, dim, dstate = state.shape
    if B.dim() == 2:
        B = B.unsqueeze(1)
    if C.dim() == 2:
        C = C.unsqueeze(1)
    groups = B.shape[1]
    out = torch.empty(batch, dim, dtype=x.dtype, device=x.device)
    block_n = triton.next_power_of_2(dstate)
    block_c = min(triton.next_power_of_2(dim), max(1, 2048 // block_n))
    zs = z.stride() if z is not None else (0, 0)
    _state_update_kernel[(batch, triton.cdiv(dim, block_c))](
        state, x, dt, A, B, C, D, z, dt_bias, out, dim, dstate, dim // groups, *state.stride(), *x.stride(),
        *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *zs, *out.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        BLOCK_C=block_c, BLOCK_N=block_n, num_warps=4)
    return out
