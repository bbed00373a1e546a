"""Triton helpers shared by the chunked kernels (``scan_kernels.py``) and the sequential-in-time kernels
(``scan_seq_kernels.py``, ``scan_seq_bwd_kernels.py``) of the selective scan: the channel-block prologue (offsets,
masks, A, D, delta_bias), per-row pointers, state tiles, fixed/input-dependent B and C, the backward's gradient
accumulators, and the exact / hardware-approximate softplus and sigmoid.

``@triton.jit`` helpers are inlined into the kernels that call them, so they cost nothing at run time. A helper
returns every value it may produce; where a ``tl.constexpr`` flag turns a value off it returns zeros, which the
kernel never reads and the compiler drops.
"""
import triton
import triton.language as tl


@triton.jit
def _approx(x, OP: tl.constexpr):
    """The hardware approximation ``OP`` (PTX ``ex2`` / ``lg2`` / ``rcp`` ``.approx.ftz.f32``: subnormals flushed to
    zero) of float32 x. CUDA only (inline PTX; Triton's interpreter cannot run it)."""
    return tl.inline_asm_elementwise(OP + ".approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _softplus(x, FAST: tl.constexpr = False):
    """log(1 + exp(x)) (x above 20: x). FAST (CUDA only: PTX): the hardware approximations ``ex2.approx.ftz`` and
    ``lg2.approx.ftz`` (two special-function instructions) instead of ``tl.exp`` / ``tl.log`` (an exponential with
    subnormal guards and a ~20-instruction log polynomial); absolute error ~2e-7 (relative ~1e-4 at delta 1e-3),
    far below a half-precision input's own rounding, so the launchers take it only for half-precision delta."""
    if FAST:
        lg = _approx(1.0 + _approx(x * 1.4426950408889634, "ex2"), "lg2")
        return tl.where(x <= 20.0, lg * 0.6931471805599453, x)
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _sigmoid(x, FAST: tl.constexpr = False):
    """1 / (1 + exp(-x)); FAST (CUDA only): ``ex2.approx.ftz`` and ``rcp.approx.ftz`` (relative error ~1e-7)
    instead of ``tl.sigmoid``'s exponential and IEEE division."""
    if FAST:
        return _approx(1.0 + _approx(x * -1.4426950408889634, "ex2"), "rcp")
    return tl.sigmoid(x)


@triton.jit
def _delta(dtr, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr = False):
    """(delta + delta_bias, softplus of that) when the flags say so: (raw, effective) delta, float32 (FAST: the
    approximate softplus, ``_softplus``)."""
    if HAS_BIAS:
        dtr += bias
    if SOFTPLUS:
        dt = _softplus(dtr, FAST)
    else:
        dt = dtr
    return dtr, dt


@triton.jit
def _channel_offsets(i_gd, nblk, cpg, N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The channels of (group, channel block) ``i_gd`` (a block never straddles two groups): (i_g, o_c, m_d, o_d,
    o_n, m_n) = the group, the channel offsets within the group and in the tensor [BLOCK_D], their mask, the state
    offsets [BLOCK_N] and their mask."""
    i_g, i_j = i_gd // nblk, i_gd % nblk
    o_c = i_j * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_c < cpg
    o_d = i_g * cpg + o_c
    o_n = tl.arange(0, BLOCK_N)
    m_n = o_n < N
    return i_g, o_c, m_d, o_d, o_n, m_n


@triton.jit
def _channel_params(A_ptr, D_ptr, bias_ptr, o_d, o_n, m_d, m_dn, N: tl.constexpr, BLOCK_D: tl.constexpr,
                    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """(b_A, b_A2, b_D, b_bias): A [BLOCK_D, BLOCK_N] float32 and A in log2 units (exp(delta * A) =
    exp2(delta * A2)); D and delta_bias [BLOCK_D] (zeros when HAS_D / HAS_BIAS is off)."""
    b_A = tl.load(A_ptr + o_d[:, None] * N + o_n[None, :], mask=m_dn, other=0.0)
    b_A2 = b_A * 1.4426950408889634
    if HAS_D:
        b_D = tl.load(D_ptr + o_d, mask=m_d, other=0.0)
    else:
        b_D = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        b_bias = tl.load(bias_ptr + o_d, mask=m_d, other=0.0)
    else:
        b_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    return b_A, b_A2, b_D, b_bias


@triton.jit
def _row_ptrs(u_ptr, dt_ptr, z_ptr, i_b, o_d, su_b, su_d, sdt_b, sdt_d, sz_b, sz_d):
    """Pointers to time step 0 of u, delta and z for batch row ``i_b`` and channel offsets ``o_d`` (any shape)."""
    return u_ptr + i_b * su_b + o_d * su_d, dt_ptr + i_b * sdt_b + o_d * sdt_d, z_ptr + i_b * sz_b + o_d * sz_d


@triton.jit
def _load_state(ptr, offs, mask, HAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """A [BLOCK_D, BLOCK_N] float32 state tile (h0, d last_state) at ``ptr + offs``, or zeros when HAS is off."""
    if HAS:
        return tl.load(ptr + offs, mask=mask, other=0.0)
    else:
        return tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)


@triton.jit
def _load_fixed_bc(ptr, o_d, o_n, m_dn, s0, s1):
    """Fixed (dim, N) B or C as a [BLOCK_D, BLOCK_N] float32 tile."""
    return tl.load(ptr + o_d[:, None] * s0 + o_n[None, :] * s1, mask=m_dn, other=0.0).to(tl.float32)


@triton.jit
def _var_bc_ptrs(ptr, i_b, i_g, o_n, s0, s1, s2):
    """[BLOCK_N] pointers to time step 0 of input-dependent (batch, groups, N, L) B or C, row i_b, group i_g."""
    return ptr + i_b * s0 + i_g * s1 + o_n * s2


@triton.jit
def _store_or_add(p, x, mask, ATOMIC: tl.constexpr):
    """Store ``x``, or add it atomically where other programs write the same elements."""
    if ATOMIC:
        tl.atomic_add(p, x, mask=mask, sem="relaxed")
    else:
        tl.store(p, x, mask=mask)


@triton.jit
def _zero_grads(BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The backward's per-program accumulators (dA, fixed dB, fixed dC, dD, d delta_bias), float32 zeros."""
    acc_dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    acc_dB = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    acc_dC = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    acc_dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_db = tl.zeros([BLOCK_D], dtype=tl.float32)
    return acc_dA, acc_dB, acc_dC, acc_dD, acc_db


@triton.jit
def _flush_grads(dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, acc_dA, acc_dB, acc_dC, acc_dD, acc_db, o_d, o_dn0, m_d,
                 m_dn, B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Add the program's accumulators into the zeroed (dim, N) / (dim,) float32 gradient buffers (``o_dn0``: the
    [BLOCK_D, BLOCK_N] offsets o_d * N + o_n)."""
    tl.atomic_add(dA_ptr + o_dn0, acc_dA, mask=m_dn, sem="relaxed")
    if not B_VAR:
        tl.atomic_add(dB_ptr + o_dn0, acc_dB, mask=m_dn, sem="relaxed")
    if not C_VAR:
        tl.atomic_add(dC_ptr + o_dn0, acc_dC, mask=m_dn, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + o_d, acc_dD, mask=m_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + o_d, acc_db, mask=m_d, sem="relaxed")


@triton.jit
def _bwd_prologue(n_gd, nblk, cpg, A_ptr, D_ptr, bias_ptr, B_ptr, C_ptr, sB0, sB1, sC0, sC1, N: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
                  HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The persistent sequential backward kernels' per-program setup: program p owns (group, channel block)
    i_gd = p % n_gd and walks rows from i_r = p // n_gd. Returns p, i_r, the offsets and masks of
    ``_channel_offsets``, the [BLOCK_D, BLOCK_N] mask, A in log2 units, D, delta_bias and the fixed B / C tiles (zeros
    where B / C are input-dependent)."""
    pid = tl.program_id(0)
    i_gd = pid % n_gd
    i_r = pid // n_gd
    i_g, o_c, m_d, o_d, o_n, m_n = _channel_offsets(i_gd, nblk, cpg, N, BLOCK_D, BLOCK_N)
    m_dn = m_d[:, None] & m_n[None, :]
    # A in log2 units: a = exp2(delta * A2); d(delta) picks up A = A2 * ln 2
    b_A, b_A2, b_D, b_bias = _channel_params(A_ptr, D_ptr, bias_ptr, o_d, o_n, m_d, m_dn, N, BLOCK_D, HAS_D, HAS_BIAS)
    if B_VAR:
        b_B = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    else:
        b_B = _load_fixed_bc(B_ptr, o_d, o_n, m_dn, sB0, sB1)
    if C_VAR:
        b_C = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    else:
        b_C = _load_fixed_bc(C_ptr, o_d, o_n, m_dn, sC0, sC1)
    return pid, i_r, i_g, o_c, m_d, o_d, o_n, m_n, m_dn, b_A2, b_D, b_bias, b_B, b_C


@triton.jit
def _adjoint_sums(b_carry, b_dy, b_Bt, b_Ct, b_ah, b_A2):
    """The state-wise part of one adjoint step: with g = dL/dh_t = carry + dy C_t, returns (g, g * a_t h_{t-1},
    sum_n g B_t, sum_n g a_t h_{t-1} A2) ([BLOCK_D, BLOCK_N] tiles, sums over the states)."""
    b_g = b_carry + b_dy[:, None] * b_Ct
    b_gah = b_g * b_ah
    return b_g, b_gah, tl.sum(b_g * b_Bt, 1), tl.sum(b_gah * b_A2, 1)


@triton.jit
def _adjoint_step(b_carry, b_dy, b_u, b_dt, b_Bt, b_Ct, b_ah, b_A2, b_D, HAS_D: tl.constexpr):
    """One step of the sequential backward's adjoint: ``_adjoint_sums`` and, from them, (g, g * a_t h_{t-1},
    d(effective delta) before the softplus factor, du). A2 is A in log2 units, so d(delta) picks up
    A = A2 * ln 2."""
    b_g, b_gah, s_gB, s_gA = _adjoint_sums(b_carry, b_dy, b_Bt, b_Ct, b_ah, b_A2)
    b_ddt = s_gA * 0.6931471805599453 + b_u * s_gB
    b_du = b_dt * s_gB
    if HAS_D:
        b_du += b_D * b_dy
    return b_g, b_gah, b_ddt, b_du


@triton.jit
def _row_chunk(i_row, n_cp, c0, LC, L):
    """Row ``i_row`` of the persistent backward kernels: chunk i_c = i_row % n_cp + c0 of batch row
    i_b = i_row // n_cp; returns (i_b int64, i_c, its first step t0 int64, its step count n_t)."""
    i_b, i_c = (i_row // n_cp).to(tl.int64), i_row % n_cp + c0
    return i_b, i_c, i_c.to(tl.int64) * LC, tl.minimum(L - i_c * LC, LC)
