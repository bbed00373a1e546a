"""The time-tiled selective-scan forward ``_fwd_tile_kernel`` and the staging helpers it shares with the tiled
backward (``scan_tile_bwd_kernels.py``). ``scan.py`` runs the tiled kernels where the chunk-parallel scan (cseq)
runs and, for the backward, on whole sequences of 16 or more steps (``scan_config.use_tile_fwd`` / ``use_tile_bwd``,
with the H200 measurements behind those choices).

Why: ``_fwd_seq_kernel`` / ``_bwd_seq_kernel`` read u / delta / z (/ dout) one time step at a time, i.e. BLOCK_D
values from BLOCK_D rows that lie seqlen elements apart, and write their per-step outputs the same way; B_t and C_t
are BLOCK_N values seqlen apart. Every step is a gather over BLOCK_D (+ 2 BLOCK_N) cache lines and a scatter of
2-byte pieces over BLOCK_D lines: on long (batch, dim, seqlen) inputs the L1 / L2 request rate, not the
exponentials, bounds them (the forward on channel-contiguous inputs ran the LM shape in 0.83 ms instead of 1.52;
docs/BENCHMARKS.md, session 9).

Staging: a program takes TT steps at a time. It reads [TT, BLOCK_D] tiles of u / delta / z (/ dout) -- a channel's
TT steps are contiguous, so one vector request per channel per tile -- and [TT, BLOCK_N] tiles of B / C, and writes
them to its own slot of a float32 scratch buffer with time as the outer index; the elementwise work that does not
depend on the state is done here for the whole tile (delta + bias and softplus, silu(z); in the backward also
dout * silu(z), dout * silu'(z) and sigmoid(delta + bias)). Then it steps through the tile reading one contiguous
row per step (the slot was just written: L1 / L2 hits), and writes per-step outputs as slot rows, which go out as
[TT, ..] tiles at the end of the tile (vector stores when the tile is full). Barriers: after staging and after the
steps (rows are written and read by different threads).

Forward layout: the state tile is [BLOCK_N, BLOCK_D] (channels last), read and written one state column at a
time, so that Triton's default layout gives each thread one channel with all its states: the sum over N stays in
registers and the per-step rows need no layout conversion (sm_90 PTX: no bar.sync or shfl in the step loop).

Both tiled kernels are persistent: the launcher starts about (programs per SM x SMs) programs. The forward's
program p takes work items p, p + P, ... (a work item is one (batch row, time chunk) x one (group, channel block),
the block fastest, so that programs running together share the B / C tile); each program reuses scratch slot p,
so the scratch stays small (and in L2) whatever the problem size.
"""
import triton
import triton.language as tl

from .scan_common import _channel_offsets, _delta


@triton.jit
def _load_cols(ptr, base, s_n, m_d, o_n, N: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """The float32 [BLOCK_N, BLOCK_D] tile of ``ptr + base + n * s_n`` (``base`` [BLOCK_D]: the offset of each
    channel's first state), built from N [BLOCK_D] loads masked by ``m_d`` (a 2-D load's coalesced layout would
    split the states over threads and become the layout of the whole recurrence)."""
    tile = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for n in tl.static_range(BLOCK_N):
        if n < N:
            col = tl.load(ptr + base + n * s_n, mask=m_d, other=0.0).to(tl.float32)
            tile = tl.where(o_n[:, None] == n, col[None, :], tile)
    return tile


@triton.jit
def _store_cols(ptr, base, tile, m_d, o_n, N: tl.constexpr, BLOCK_N: tl.constexpr):
    """Store a [BLOCK_N, BLOCK_D] state tile to ``ptr + base + n`` (the inverse of ``_load_cols``), one [BLOCK_D]
    store per state; each column is taken out of the tile with an in-thread sum (a thread holds all N states)."""
    for n in tl.static_range(BLOCK_N):
        if n < N:
            col = tl.sum(tl.where(o_n[:, None] == n, tile, 0.0), 0)
            tl.store(ptr + base + n, col, mask=m_d)


@triton.jit
def _load_raw(p, m_t, m_x, full):
    """The [TT, W] tile at pointers ``p`` in its own dtype, rows masked by ``m_t`` and columns by ``m_x`` (zeros
    outside). ``full``: every row is in range; the load is then masked by column only, which lets it read a
    column's steps with vector loads."""
    if full:
        x = tl.load(p, mask=m_x[None, :], other=0.0)
    else:
        x = tl.load(p, mask=m_t[:, None] & m_x[None, :], other=0.0)
    return x


@triton.jit
def _store_tile(p, x, m_t, m_x, full):
    """Store the [TT, W] tile ``x`` at pointers ``p`` in their dtype, masks as ``_load_raw`` (``full``: by column only,
    which keeps a column's steps one vector store)."""
    x = x.to(p.dtype.element_ty)
    if full:
        tl.store(p, x, mask=m_x[None, :])
    else:
        tl.store(p, x, mask=m_t[:, None] & m_x[None, :])


@triton.jit
def _stage_x(x, s_ptr, o_t, bias, W: tl.constexpr, KIND: tl.constexpr, HAS_BIAS: tl.constexpr = False,
             SOFTPLUS: tl.constexpr = False):
    """Store the [TT, W] tile ``x`` (any float dtype) into the float32 scratch rows ``s_ptr + o_t * W + x``: KIND 0
    copies; 1 stores the effective delta (+ ``bias`` [W], softplus per the flags); 2 stores z * sigmoid(z); 3
    stores sigmoid(delta + bias) (the softplus derivative). The elementwise work of KIND 1 / 2 is done here for the
    whole tile (independent values, no step-to-step dependency) instead of in the sequential loop."""
    x = x.to(tl.float32)
    if KIND == 1:
        _, x = _delta(x, bias[None, :], HAS_BIAS, SOFTPLUS)
    elif KIND == 2:
        x = x * tl.sigmoid(x)
    elif KIND == 3:
        if HAS_BIAS:
            x += bias[None, :]
        x = tl.sigmoid(x)
    tl.store(s_ptr + o_t[:, None] * W + tl.arange(0, W)[None, :], x)


@triton.jit
def _stage(ptr, s_ptr, o_t, o_x, m_t, m_x, full, st, sx, bias, W: tl.constexpr, KIND: tl.constexpr,
           HAS_BIAS: tl.constexpr = False, SOFTPLUS: tl.constexpr = False):
    """Copy the [TT, W] tile ``ptr + o_t * st + o_x * sx`` (rows masked by ``m_t``, columns by ``m_x``, zeros
    outside; ``full`` as ``_load_raw``) into the float32 scratch rows ``s_ptr + o_t * W + x`` (``_stage_x``)."""
    _stage_x(_load_raw(ptr + o_t[:, None] * st + o_x[None, :] * sx, m_t, m_x, full), s_ptr, o_t, bias, W, KIND,
             HAS_BIAS, SOFTPLUS)


@triton.jit(do_not_specialize=["NC", "n_cp", "n_work"])
def _fwd_tile_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, hlast_ptr, hc_ptr,
                     hb_ptr, dsum_ptr, scr_ptr,
                     L, LC, NC, n_cp, n_work, dim, cpg, nblk, n_gd,
                     su_b, su_d, su_t, sdt_b, sdt_d, sdt_t, sz_b, sz_d, sz_t,
                     sB0, sB1, sB2, sB3, sC0, sC1, sC2, sC3,
                     N: tl.constexpr, BLOCK_D: tl.constexpr, T_C: tl.constexpr, BLOCK_N: tl.constexpr,
                     TT: tl.constexpr,
                     B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
                     STORE_LAST: tl.constexpr, SAVE_CHUNKS: tl.constexpr, STATE_ONLY: tl.constexpr,
                     CSEQ: tl.constexpr):
    """Same arguments, outputs and buffers as ``_fwd_seq_kernel`` plus the scratch ``scr_ptr`` (one slot of
    TT * (4 * BLOCK_D + 2 * BLOCK_N) float32 per program), ``n_work`` (= rows x n_gd work items, rows = batch x
    n_cp), ``n_gd`` (groups x channel blocks) and ``s1`` (= 1, the slot rows' unit stride; see the module doc).
    Work item w: (group, channel block) w % n_gd of row w // n_gd = (batch row, time chunk) as in
    ``_fwd_seq_kernel``'s program (pid0, i_gd)."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    s_u = scr_ptr + pid.to(tl.int64) * (TT * (4 * BLOCK_D + 2 * BLOCK_N))
    s_dt = s_u + TT * BLOCK_D
    s_z = s_dt + TT * BLOCK_D
    s_y = s_z + TT * BLOCK_D
    s_B = s_y + TT * BLOCK_D
    s_C = s_B + TT * BLOCK_N
    o_t = tl.arange(0, TT)
    o_jr = tl.arange(0, BLOCK_D)  # a slot row
    o_nr = tl.arange(0, BLOCK_N)
    for w in range(pid, n_work, n_prog):
        i_gd = w % n_gd
        pid0 = w // n_gd
        i_b, i_c = (pid0 // n_cp).to(tl.int64), pid0 % n_cp
        t0 = i_c.to(tl.int64) * LC  # first step of the chunk
        n_t = tl.minimum(L - i_c * LC, LC)  # steps in the chunk
        i_g, o_c, m_d, o_d, o_n, m_n = _channel_offsets(i_gd, nblk, cpg, N, BLOCK_D, BLOCK_N)
        b_A2 = _load_cols(A_ptr, o_d * N, 1, m_d, o_n, N, BLOCK_N, BLOCK_D) * 1.4426950408889634
        if HAS_D:
            b_D = tl.load(D_ptr + o_d, mask=m_d, other=0.0)
        if HAS_BIAS:
            b_bias = tl.load(bias_ptr + o_d, mask=m_d, other=0.0)
        else:
            b_bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        b_row = (i_b * dim + o_d) * N  # [BLOCK_D] offsets of this row's states
        f_c = o_d * 0 + i_c            # the chunk index as a [BLOCK_D] tile (the interpreter masks with tiles)
        if HAS_H0:
            b_h = _load_cols(h0_ptr, b_row, 1, m_d & (f_c == 0), o_n, N, BLOCK_N, BLOCK_D)
        else:
            b_h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        if CSEQ:
            b_h += _load_cols(hb_ptr, ((i_b * (NC - 1) + i_c - 1) * dim + o_d) * N, 1, m_d & (f_c > 0), o_n, N,
                              BLOCK_N, BLOCK_D)
        if not B_VAR:
            b_Bt = _load_cols(B_ptr, o_d * sB0, sB1, m_d, o_n, N, BLOCK_N, BLOCK_D)
        if not C_VAR:
            b_Ct = _load_cols(C_ptr, o_d * sC0, sC1, m_d, o_n, N, BLOCK_N, BLOCK_D)
        p_u = u_ptr + i_b * su_b + t0 * su_t
        p_dt = dt_ptr + i_b * sdt_b + t0 * sdt_t
        p_z = z_ptr + i_b * sz_b + t0 * sz_t
        p_B = B_ptr + i_b * sB0 + i_g * sB1 + t0 * sB3
        p_C = C_ptr + i_b * sC0 + i_g * sC1 + t0 * sC3
        p_o = out_ptr + (i_b * dim + o_d) * L + t0
        b_dts = tl.zeros([BLOCK_D], dtype=tl.float32)
        for k0 in range(0, n_t, TT):
            # ---- stage steps k0 .. k0 + TT - 1 of the chunk into the slot (time outer); loading these a tile ahead
            # (as the backward does) ran slower here: NVIDIA H200, LM forward 0.838 -> 0.878 ms (164 registers,
            # 12 warps a SM instead of 16)
            m_t = o_t + k0 < n_t
            full = k0 + TT <= n_t
            _stage(p_u + k0 * su_t, s_u, o_t, o_d, m_t, m_d, full, su_t, su_d, b_bias, BLOCK_D, 0)
            _stage(p_dt + k0 * sdt_t, s_dt, o_t, o_d, m_t, m_d, full, sdt_t, sdt_d, b_bias, BLOCK_D, 1, HAS_BIAS,
                   SOFTPLUS)
            if HAS_Z and not STATE_ONLY:
                _stage(p_z + k0 * sz_t, s_z, o_t, o_d, m_t, m_d, full, sz_t, sz_d, b_bias, BLOCK_D, 2)
            if B_VAR:
                _stage(p_B + k0 * sB3, s_B, o_t, o_n, m_t, m_n, full, sB3, sB2, b_bias, BLOCK_N, 0)
            if C_VAR and not STATE_ONLY:
                _stage(p_C + k0 * sC3, s_C, o_t, o_n, m_t, m_n, full, sC3, sC2, b_bias, BLOCK_N, 0)
            tl.debug_barrier()  # rows are read by other threads than those that staged them
            # ---- the steps, one slot row each; step j + 1's row is loaded while step j is computed
            n_in = tl.minimum(TT, n_t - k0)
            n_u = tl.load(s_u + o_jr)
            n_dt = tl.load(s_dt + o_jr)
            if HAS_Z and not STATE_ONLY:
                n_z = tl.load(s_z + o_jr)
            if B_VAR:
                n_B = tl.load(s_B + o_nr)
            if C_VAR and not STATE_ONLY:
                n_C = tl.load(s_C + o_nr)
            for j in range(0, n_in):
                if SAVE_CHUNKS:
                    t = k0 + j
                    if (t > 0) & (t % T_C == 0):
                        _store_cols(hc_ptr, ((i_b * ((L + T_C - 1) // T_C - 1) + t // T_C - 1) * dim + o_d) * N,
                                    b_h, m_d, o_n, N, BLOCK_N)
                j1 = (j + 1) % TT  # the last row's prefetch wraps to row 0 (in bounds; unused)
                b_u, b_dt = n_u, n_dt
                n_u = tl.load(s_u + j1 * BLOCK_D + o_jr)
                n_dt = tl.load(s_dt + j1 * BLOCK_D + o_jr)
                if B_VAR:
                    b_Bt = n_B[:, None]
                    n_B = tl.load(s_B + j1 * BLOCK_N + o_nr)
                b_h = tl.exp2(b_A2 * b_dt[None, :]) * b_h + b_Bt * (b_dt * b_u)[None, :]  # delta staged effective
                if STATE_ONLY:
                    b_dts += b_dt
                else:
                    if C_VAR:
                        b_Ct = n_C[:, None]
                        n_C = tl.load(s_C + j1 * BLOCK_N + o_nr)
                    b_y = tl.sum(b_h * b_Ct, 0)
                    if HAS_D:
                        b_y += b_D * b_u
                    if HAS_Z:  # staged as silu(z)
                        b_y = b_y * n_z
                        n_z = tl.load(s_z + j1 * BLOCK_D + o_jr)
                    tl.store(s_y + j * BLOCK_D + o_jr, b_y)
            tl.debug_barrier()  # the output rows were written by other threads; the next staging overwrites rows
            if not STATE_ONLY:  # the output tile, a column's steps with vector stores when the tile is full
                _unstage(p_o[None, :] + k0, s_y, o_t, o_d, m_t, m_d, full, 1, 0, BLOCK_D)
        if STATE_ONLY:  # n_cp = NC - 1 rows a batch row: pid0 = b * (NC - 1) + c
            _store_cols(hb_ptr, (pid0.to(tl.int64) * dim + o_d) * N, b_h, m_d, o_n, N, BLOCK_N)
            tl.store(dsum_ptr + pid0.to(tl.int64) * dim + o_d, b_dts, mask=m_d)
        if STORE_LAST:
            _store_cols(hlast_ptr, b_row, b_h, m_d & (f_c == NC - 1), o_n, N, BLOCK_N)


@triton.jit
def _unstage(ptr, s_ptr, o_t, o_x, m_t, m_x, full, st, sx, W: tl.constexpr, ATOMIC: tl.constexpr = False):
    """Write the float32 scratch rows ``s_ptr + o_t * W + x`` as the [TT, W] tile ``ptr + o_t * st + o_x * sx``
    (in ptr's dtype; rows masked by ``m_t`` unless ``full``, columns by ``m_x``), or add them atomically."""
    x = tl.load(s_ptr + o_t[:, None] * W + tl.arange(0, W)[None, :])
    p = ptr + o_t[:, None] * st + o_x[None, :] * sx
    if ATOMIC:
        tl.atomic_add(p, x, mask=m_t[:, None] & m_x[None, :], sem="relaxed")
    else:
        _store_tile(p, x, m_t, m_x, full)
