"""Triton LayerNorm over the last axis, for many short rows: kernels and their launchers (no autograd here;
``m2s2l.ops.layer_norm`` wraps them in a custom op).

Why: PyTorch's ``vectorized_layer_norm_kernel`` gives every row its own thread block, so a row of C = 32..256
values keeps a block of 128+ threads busy for a few dozen loads and two block-wide reductions; on the video
model's (B*H*W*T, C) rows it took 0.71 ms a call on an H200 (docs/BENCHMARKS.md), several times the copy time. Here a program owns a [BLOCK_R, BLOCK_C] tile
(BLOCK_R rows, C padded to the power of two BLOCK_C), so one load brings in many rows and the row reductions stay
within a few threads of a warp.

Layout. The forward reads x as (outer, inner, C) rows with unit column stride and any two row strides
(``_rows3d``: a contiguous x, a slice of rows, or ``buf[:, s:s + T]`` -- the streaming state's rows of T steps
out of a longer ring buffer -- in place; other layouts are copied first); the backward reads x and dy as (rows, C)
with any one row stride (``_rows2d``, copies otherwise). y and dx are allocated contiguous. C is a compile-time
constant (one compile per width: the model has four), so the column mask folds away when C = BLOCK_C.

Precision. Loads are cast to float32; mean and variance are computed in float32 in two passes over the
registers (the centred sum, no E[x^2] - E[x]^2 cancellation); rstd = rsqrt(var + eps), the biased variance as
nn.LayerNorm. y is stored in the requested out dtype, dx in x's dtype, dweight/dbias in their parameter's dtype.

Backward. mean/rstd are recomputed from x (no statistics saved by the forward: nothing to write there and nothing
to keep alive between the passes). With xhat = (x - mean) * rstd and g = dy * weight:
dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) per row; dweight = sum over rows of dy * xhat, dbias = sum of dy.
dweight/dbias are reduced deterministically: each program walks ``iters`` consecutive row tiles, accumulates the
terms elementwise in float32 tile-shaped registers (no cross-thread traffic inside the loop), reduces them over
rows once and writes one row of a (programs, C) float32 partial buffer; torch sums the rows afterwards (no
atomics, so results are bit-reproducible).

Launch parameters can be overridden with ``M2S2L_LN_CFG="key=int,..."`` (read at import; see ``_env_config``).
"""
import functools
import os

import torch
import triton
import triton.language as tl

from .._config import env_int_config

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _env_config():
    """Integer overrides from ``M2S2L_LN_CFG``, e.g. "fwd_tile=8192,fwd_warps=8".

    fwd_tile / bwd_tile: elements per row tile (BLOCK_R * BLOCK_C; rounded down to a power of two, at least one
    row), fwd_warps / bwd_warps, bwd_progs_per_sm (backward programs per SM on a GPU; each loops over its share of
    the row tiles), bwd_progs (exact backward program count, any device)."""
    return env_int_config("M2S2L_LN_CFG")


_CFG = _env_config()


@triton.jit(do_not_specialize=["N", "n_inner"])
def _ln_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, n_inner, sx_o, sx, sy, eps,
                   C: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, TWO_LEVEL: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    i_r = tl.program_id(0)
    o_r = (i_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
    o_c = tl.arange(0, BLOCK_C)[None, :]
    m_c = o_c < C
    m = (o_r < N) & m_c
    if TWO_LEVEL:  # x's row r at (r // n_inner) * sx_o + (r % n_inner) * sx
        o_x = (o_r // n_inner) * sx_o + (o_r % n_inner) * sx
    else:
        o_x = o_r * sx
    b_x = tl.load(x_ptr + o_x + o_c, mask=m, other=0.).to(tl.float32)
    b_mean = tl.sum(b_x, axis=1) / C
    b_xc = tl.where(m_c, b_x - b_mean[:, None], 0.)
    b_rstd = tl.rsqrt(tl.sum(b_xc * b_xc, axis=1) / C + eps)
    b_y = b_xc * b_rstd[:, None]
    if HAS_WEIGHT:
        b_y = b_y * tl.load(w_ptr + o_c, mask=m_c, other=0.).to(tl.float32)
    if HAS_BIAS:
        b_y = b_y + tl.load(b_ptr + o_c, mask=m_c, other=0.).to(tl.float32)
    tl.store(y_ptr + o_r * sy + o_c, b_y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["N", "iters"])
def _ln_bwd_kernel(x_ptr, w_ptr, dy_ptr, dx_ptr, dw_part_ptr, db_part_ptr, N, iters, sx, sdy, sdx, eps,
                   C: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    i_p = tl.program_id(0)
    o_c = tl.arange(0, BLOCK_C)[None, :]
    m_c = o_c < C
    if HAS_WEIGHT:
        b_w = tl.load(w_ptr + o_c, mask=m_c, other=0.).to(tl.float32)
    b_dw = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)  # per-thread sums: reduced across rows once, at the end
    b_db = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for it in range(iters):
        o_r = ((i_p * iters + it) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]  # past N: masked
        m = (o_r < N) & m_c
        b_x = tl.load(x_ptr + o_r * sx + o_c, mask=m, other=0.).to(tl.float32)
        b_dy = tl.load(dy_ptr + o_r * sdy + o_c, mask=m, other=0.).to(tl.float32)
        b_mean = tl.sum(b_x, axis=1) / C
        b_xc = tl.where(m_c, b_x - b_mean[:, None], 0.)
        b_rstd = tl.rsqrt(tl.sum(b_xc * b_xc, axis=1) / C + eps)
        b_xhat = b_xc * b_rstd[:, None]
        b_g = b_dy * b_w if HAS_WEIGHT else b_dy
        b_c1 = tl.sum(b_g * b_xhat, axis=1) / C
        b_c2 = tl.sum(b_g, axis=1) / C
        b_dx = (b_g - b_xhat * b_c1[:, None] - b_c2[:, None]) * b_rstd[:, None]
        tl.store(dx_ptr + o_r * sdx + o_c, b_dx.to(dx_ptr.dtype.element_ty), mask=m)
        if HAS_WEIGHT:  # where(): with eps = 0 a masked (all-zero) row has rstd = inf and xhat = NaN
            b_dw += tl.where(m, b_dy * b_xhat, 0.)
        if HAS_BIAS:
            b_db += b_dy
    o_cc = tl.arange(0, BLOCK_C)
    if HAS_WEIGHT:
        tl.store(dw_part_ptr + i_p * C + o_cc, tl.sum(b_dw, axis=0), mask=o_cc < C)
    if HAS_BIAS:
        tl.store(db_part_ptr + i_p * C + o_cc, tl.sum(b_db, axis=0), mask=o_cc < C)


# ---- launchers ------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _num_sms(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _rows2d(t):
    """t (..., C) as a (rows, C) tensor with unit column stride: a view when the leading axes merge into one row
    stride (contiguous, row-sliced, or sliced along C out of a wider tensor), else a contiguous copy."""
    t2 = t.reshape(-1, t.shape[-1])
    if t2.stride(1) != 1 and t2.shape[1] > 1:
        t2 = t2.contiguous()
    return t2


def _rows3d(t):
    """(t3, n_inner): t (..., C) as an (outer, n_inner, C) view with unit column stride where one exists -- the
    leading axes merged into one row stride (n_inner = rows), or all but the last of them merged into an outer
    stride (n_inner = t.shape[-2]: e.g. ``buf[:, s:s + T]`` of an (R, S, C) buffer, rows of T steps out of S) --
    else a contiguous copy."""
    C = t.shape[-1]
    n = t.numel() // max(C, 1)
    for inner in (n, t.shape[-2] if t.dim() >= 3 else n):
        try:
            t3 = t.view(-1, inner, C) if inner else t.reshape(0, 1, C)
        except RuntimeError:
            continue
        if t3.stride(2) == 1 or C == 1:
            return t3, max(inner, 1)
    return t.contiguous().view(-1, max(n, 1), C), max(n, 1)


def _blocks(N, C, mode):
    """(BLOCK_R, BLOCK_C, num_warps) for ``mode`` "fwd" | "bwd". On a GPU: 4096-element tiles on 4 warps (fwd) and
    2048 on 8 (bwd). Not swept on a GPU yet (bench/layer_norm_speed.py with M2S2L_LN_CFG is the tool); chosen from
    the sm_90 AOT build (bench/tune_scan.py's --aot method): fwd ~60 registers, bwd ~70 (116-124 on 4 warps, which
    would cap it at 4 resident programs per SM), no spills, for C = 32..256. Under the interpreter: 16384 elements
    (its cost is per operation, not per element)."""
    bc = triton.next_power_of_2(C)
    tile = _CFG.get(f"{mode}_tile") or (16384 if _INTERPRET else (4096 if mode == "fwd" else 2048))
    tile = 1 << (max(1, int(tile)).bit_length() - 1)
    br = max(1, min(tile // bc, triton.next_power_of_2(N)))
    warps = _CFG.get(f"{mode}_warps") or (8 if mode == "bwd" or bc * br > 4096 else 4)
    return br, bc, warps


def layer_norm_fwd(x, weight, bias, eps, out_dtype=None):
    """y (x.shape, ``out_dtype`` or x's dtype, contiguous) = LayerNorm of x over its last axis."""
    C = x.shape[-1]
    y = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    N = y.numel() // max(C, 1)
    if N == 0:
        return y
    x3, n_inner = _rows3d(x)
    two = x3.shape[0] > 1
    br, bc, warps = _blocks(N, C, "fwd")
    _ln_fwd_kernel[(triton.cdiv(N, br),)](x3, weight, bias, y, N, n_inner, x3.stride(0), x3.stride(1), C,  # y: stride C
                                          float(eps), C=C, HAS_WEIGHT=weight is not None,
                                          HAS_BIAS=bias is not None, TWO_LEVEL=two,
                                          BLOCK_R=br, BLOCK_C=bc, num_warps=warps)
    return y


def _bwd_programs(n_tiles, device):
    if "bwd_progs" in _CFG:
        return max(1, min(_CFG["bwd_progs"], n_tiles))
    if _INTERPRET or device.type != "cuda":  # 2: the CPU tests cross the in-program loop and the partial sum
        return min(2, n_tiles)
    return min(n_tiles, _CFG.get("bwd_progs_per_sm", 16) * _num_sms(device))


def layer_norm_bwd(x, weight, bias, dy, eps):
    """(dx (x.shape, x's dtype, contiguous), dweight or None, dbias or None) of y = LayerNorm(x) given dy."""
    C = x.shape[-1]
    x2, dy2 = _rows2d(x), _rows2d(dy)
    N = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if N == 0:
        return (dx, None if weight is None else torch.zeros_like(weight),
                None if bias is None else torch.zeros_like(bias))
    br, bc, warps = _blocks(N, C, "bwd")
    n_tiles = triton.cdiv(N, br)
    n_prog = _bwd_programs(n_tiles, x.device)
    iters = triton.cdiv(n_tiles, n_prog)
    n_prog = triton.cdiv(n_tiles, iters)
    dw_part = torch.empty(n_prog, C, dtype=torch.float32, device=x.device) if weight is not None else None
    db_part = torch.empty(n_prog, C, dtype=torch.float32, device=x.device) if bias is not None else None
    _ln_bwd_kernel[(n_prog,)](x2, weight, dy2, dx, dw_part, db_part, N, iters, x2.stride(0), dy2.stride(0),
                              C, float(eps), C=C, HAS_WEIGHT=weight is not None,  # dx: row stride C
                              HAS_BIAS=bias is not None,
                              BLOCK_R=br, BLOCK_C=bc, num_warps=warps)
    dweight = dw_part.sum(0).to(weight.dtype) if weight is not None else None
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else None
    return dx, dweight, dbias
