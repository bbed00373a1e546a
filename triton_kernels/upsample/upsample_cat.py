"""Triton bilinear resize + channel concatenation (forward only; ``m2s2l.ops.upsample_cat`` supplies the backward
from PyTorch's own ``upsample_bilinear2d_backward``).

Why: in the video model's decoders each level is ``cat([interpolate(x), skip])``. PyTorch runs that as two kernels
(the resize, then a copy of both halves into the concatenation), and its channels_last bilinear kernel measured
~280 GB/s on an H100 at the decoder's bf16 shapes (``bench/upsample_speed.py``, docs/BENCHMARKS.md): the 2x2
neighbourhood of every output pixel is re-read per channel from scattered addresses. Here a program owns a
[BLOCK_P pixels, BLOCK_C channels] tile of the output; with channels the fastest axis (channels_last) every load
and store is a contiguous channel run, the four source pixels' weights are computed once per pixel row of the tile,
and the skip half is copied by the same launch (grid axis 1: the x channel blocks, then the skip channel blocks).

Semantics: PyTorch's ``align_corners=False`` bilinear rule with output size given (scale = in / out in float32;
source = max(scale * (dst + 0.5) - 0.5, 0); the upper neighbour clamped at the edge), weights and sum in float32,
rounded to x's dtype and then to the output dtype (the promoted dtype, as torch.cat). Any input strides; the
output is allocated channels_last when skip is (``torch.channels_last`` suggested format), else contiguous.
"""
import numpy as np
import torch
import triton
import triton.language as tl


@triton.jit
def _upsample_cat_kernel(x_ptr, s_ptr, o_ptr, P, H, W, h, w, Cx, Cs, scale_h, scale_w,
                         sxb, sxc, sxh, sxw, ssb, ssc, ssh, ssw, sob, soc, soh, sow, n_xblk,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    o_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < P
    ox = o_p % W
    t = o_p // W
    oy = t % H
    b = (t // H).to(tl.int64)
    o_base = b * sob + oy.to(tl.int64) * soh + ox.to(tl.int64) * sow
    if pid_c < n_xblk:  # the resized x: channels [0, Cx)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        m = m_p[:, None] & (c < Cx)[None, :]
        sy = tl.maximum(scale_h * (oy.to(tl.float32) + 0.5) - 0.5, 0.0)
        sx = tl.maximum(scale_w * (ox.to(tl.float32) + 0.5) - 0.5, 0.0)
        y0 = sy.to(tl.int32)  # sy >= 0: truncation is floor
        x0 = sx.to(tl.int32)
        ly = sy - y0.to(tl.float32)
        lx = sx - x0.to(tl.float32)
        y1 = tl.where(y0 < h - 1, y0 + 1, y0)
        x1 = tl.where(x0 < w - 1, x0 + 1, x0)
        cc = c.to(tl.int64)[None, :] * sxc
        base = b * sxb
        r0 = base + y0.to(tl.int64) * sxh
        r1 = base + y1.to(tl.int64) * sxh
        c0 = x0.to(tl.int64) * sxw
        c1 = x1.to(tl.int64) * sxw
        v00 = tl.load(x_ptr + (r0 + c0)[:, None] + cc, mask=m, other=0.0).to(tl.float32)
        v01 = tl.load(x_ptr + (r0 + c1)[:, None] + cc, mask=m, other=0.0).to(tl.float32)
        v10 = tl.load(x_ptr + (r1 + c0)[:, None] + cc, mask=m, other=0.0).to(tl.float32)
        v11 = tl.load(x_ptr + (r1 + c1)[:, None] + cc, mask=m, other=0.0).to(tl.float32)
        lx2 = lx[:, None]
        ly2 = ly[:, None]
        val = (1.0 - ly2) * ((1.0 - lx2) * v00 + lx2 * v01) + ly2 * ((1.0 - lx2) * v10 + lx2 * v11)
        val = val.to(x_ptr.dtype.element_ty)
        tl.store(o_ptr + o_base[:, None] + c.to(tl.int64)[None, :] * soc, val.to(o_ptr.dtype.element_ty), mask=m)
    else:  # the skip map: channels [Cx, Cx + Cs)
        c = (pid_c - n_xblk) * BLOCK_C + tl.arange(0, BLOCK_C)
        m = m_p[:, None] & (c < Cs)[None, :]
        s_off = b * ssb + oy.to(tl.int64) * ssh + ox.to(tl.int64) * ssw
        v = tl.load(s_ptr + s_off[:, None] + c.to(tl.int64)[None, :] * ssc, mask=m, other=0.0)
        tl.store(o_ptr + o_base[:, None] + (Cx + c).to(tl.int64)[None, :] * soc, v.to(o_ptr.dtype.element_ty),
                 mask=m)


def _blocks(C, P):
    """(BLOCK_P, BLOCK_C, warps): channel tiles of up to 64 (a bf16 run of 128 bytes per pixel), ~4096-element
    tiles."""
    bc = min(64, triton.next_power_of_2(max(C, 1)))
    bp = max(16, min(4096 // bc, triton.next_power_of_2(max(P, 1))))
    return bp, bc, 4


def out_layout(skip):
    """The output's memory format: channels_last when skip is laid out so (as torch.cat's output would follow)."""
    if skip.dim() == 4 and skip.is_contiguous(memory_format=torch.channels_last) and not skip.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def upsample_cat_fwd(x, skip):
    """x (B, Cx, h, w), skip (B, Cs, H, W) (validated by ``m2s2l.ops.upsample_cat``) -> (B, Cx + Cs, H, W)."""
    B, Cx, h, w = x.shape
    _, Cs, H, W = skip.shape
    dtype = torch.promote_types(x.dtype, skip.dtype)
    out = torch.empty(B, Cx + Cs, H, W, device=x.device, dtype=dtype, memory_format=out_layout(skip))
    P = B * H * W
    if P == 0 or Cx + Cs == 0:
        return out
    BP, BC, warps = _blocks(max(Cx, Cs), P)
    n_xblk = triton.cdiv(Cx, BC)
    grid = (triton.cdiv(P, BP), n_xblk + triton.cdiv(Cs, BC))
    scale_h = float(np.float32(h) / np.float32(H))  # PyTorch's area_pixel_compute_scale, in float32
    scale_w = float(np.float32(w) / np.float32(W))
    _upsample_cat_kernel[grid](x, skip, out, P, H, W, h, w, Cx, Cs, scale_h, scale_w, *x.stride(), *skip.stride(),
                               *out.stride(), n_xblk, BLOCK_P=BP, BLOCK_C=BC, num_warps=warps)
    return out
