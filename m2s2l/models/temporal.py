"""Multi-temporal Mamba encoders (per pyramid level, over time) and the spatial BiMamba (coarsest level)."""
import functools
import os

import torch
import torch.nn as nn

from m2s2l import ops
from m2s2l.modules import BiMamba, LayerNorm, Mamba
from m2s2l.ops._backend import needs_grad, resolve_backend
from m2s2l.ops.mamba_block import eligible


def serial(thunks):
    """``[f() for f in thunks]``: how the model runs its independent branches unless told otherwise (``run=``;
    e.g. ``m2s2l.engine.stream.CudaBranches`` runs them on parallel CUDA streams)."""
    return [f() for f in thunks]


def fused_default(device):
    """Whether ``MambaBlock``s whose ``fused`` is None take the one-kernel inference path on ``device``:
    ``M2S2L_FUSED_BLOCK=1`` / ``0`` decide; unset, on for CPU tensors (Triton's interpreter, where it is 9.5x faster
    than the unfused block) and off on CUDA, where it is correct but slower (H100, session 15, docs/BENCHMARKS.md:
    32 streams 1455 vs 2002 frames/s, streaming batch 1 789 vs 834; per block faster only at level 0, batch 1)."""
    env = os.environ.get("M2S2L_FUSED_BLOCK", "")
    if env in ("0", "1"):
        return env == "1"
    return device.type != "cuda"


def set_prep(model, prep):
    """Set ``prep`` (True / False) on every ``MambaBlock`` in ``model``: last-only inference of each temporal block
    as ``m2s2l.ops.mamba_block_prep`` + the selective scan + out_proj (``MambaBlock.prep_last``) where it applies.
    Returns ``model``."""
    for m in model.modules():
        if isinstance(m, MambaBlock):
            m.prep = bool(prep)
    return model


def set_fused(model, fused):
    """Set ``fused`` (True / False / None = ``fused_default``) on every ``MambaBlock`` in ``model``; returns it."""
    for m in model.modules():
        if isinstance(m, MambaBlock):
            m.fused = fused
    return model


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + mixer(LayerNorm(x)), x (batch, seqlen, dim).

    The norm is ``m2s2l.modules.LayerNorm`` (nn.LayerNorm's parameters and numerics; the Triton kernel for
    short rows) with the mixer's backend; under autocast it outputs the autocast dtype, which the mixer's in_proj
    would cast its input to anyway. ``forward(x, last_only=True)`` returns only the last step,
    (batch, 1, dim) = ``forward(x)[:, -1:]`` up to rounding, with the mixer's output projection and the residual
    computed for that step alone (the mixer must take ``last_only``, as ``Mamba`` does).

    Inference fast path: ``last_only`` without gradients, with a ``Mamba`` mixer the Triton backend runs and the
    sizes ``m2s2l.ops.mamba_block_last`` takes, runs the whole block as that one kernel (same result up to
    accumulation order). Attribute ``fused``: True / False force it on / off; None (default) = ``fused_default``
    (environment ``M2S2L_FUSED_BLOCK=1|0``, else on for CPU tensors -- Triton's interpreter, where its tests run --
    and off on CUDA, where its GPU tests pass but it measured slower than the unfused block: docs/BENCHMARKS.md).
    ``fused_last(x, pool, out)`` is that path with the input's steps averaged in groups of ``pool`` first
    (``MultiTemporalMamba`` reads its feature maps so, without a layout copy)."""

    prep = False  # True: last-only inference through ``prep_last`` where ``can_prep`` (``set_prep``)

    def __init__(self, dim, mixer):
        super().__init__()
        self.norm = LayerNorm(dim, backend=mixer.backend)
        self.mixer = mixer
        self.fused = None

    def can_fuse(self, x, steps=None):
        """Whether ``forward(x, last_only=True)`` / ``fused_last`` (on ``steps`` pooled steps, default x's
        seqlen) may run as ``m2s2l.ops.mamba_block_last``."""
        m = self.mixer
        steps = x.shape[-2] if steps is None else steps
        fused = getattr(self, "fused", None)
        fused = fused_default(x.device) if fused is None else fused
        return (fused and isinstance(m, Mamba) and not torch.jit.is_tracing()
                and m.in_proj.bias is None and m.out_proj.bias is None and self.norm.elementwise_affine
                and eligible(m.d_model, m.d_inner, m.d_state, m.dt_rank, m.d_conv, steps)
                and resolve_backend(m.backend, x.device) == "triton" and not needs_grad(x, *self.parameters()))

    def can_prep(self, x):
        """Whether ``prep_last`` may run (``prep`` on; a ``Mamba`` mixer without in/out_proj biases on the Triton
        backend; d_inner <= 128, d_conv <= 4; no gradients; not tracing)."""
        from m2s2l.ops.mamba_block import prep_eligible
        m = self.mixer
        return (getattr(self, "prep", False) and isinstance(m, Mamba) and not torch.jit.is_tracing()
                and m.in_proj.bias is None and m.out_proj.bias is None and prep_eligible(m.d_inner, m.d_conv)
                and resolve_backend(m.backend, x.device) == "triton" and not needs_grad(x, *self.parameters()))

    def prep_last(self, x, pool=1, out=None):
        """As ``fused_last`` (same arguments and result), computed as ``m2s2l.ops.mamba_block_prep`` (pooling,
        LayerNorm, in_proj, conv, x_proj with dt_proj folded in: one kernel), the selective scan of the last step
        (``_fwd_last_kernel``) and out_proj + the residual on the last step. Only where ``can_prep(x)``."""
        m = self.mixer
        w = m._folded(x, True)
        if w is None:  # (not folded by fused_for_inference, or stale: fold for this call)
            w = m.folded_xdt_weight()
        lead = x.shape[:-2]
        u, delta, bc, z, x_last = ops.mamba_block_prep(x, self.norm.weight, self.norm.bias, m.in_proj.weight,
                                                       m.conv1d.weight[:, 0], m.conv1d.bias, w, eps=self.norm.eps,
                                                       pool=pool, backend=m.backend)
        rows, steps, N = u.shape[0], u.shape[1], m.d_state
        bct = bc.transpose(1, 2)                                                         # (rows, 2N, T')
        y = m._scan(u.transpose(1, 2), delta.transpose(1, 2), m.A_log, bct[:, None, :N], bct[:, None, N:], m.D,
                    z[:, :, None].expand(rows, m.d_inner, steps), m.dt_proj.bias, None, last_only=True)
        res = x_last + m.out_proj(y[:, :, 0]).to(x_last.dtype)                           # (rows, d_model)
        res = res.view(*lead, -1)
        if out is None:
            return res
        out.copy_(res)
        return out

    def fused_last(self, x, pool=1, out=None):
        """x (batch, seqlen, dim) or (n_outer, n_inner, seqlen, dim) -> the last step of the block applied to x
        averaged over groups of ``pool`` steps, (*x.shape[:-2], dim) (written to ``out`` if given). Only where
        ``can_fuse(x)``."""
        m = self.mixer
        return ops.mamba_block_last(x, self.norm.weight, self.norm.bias, m.in_proj.weight, m.conv1d.weight[:, 0],
                                    m.conv1d.bias, m.x_proj.weight, m.dt_proj.weight, m.dt_proj.bias, m.A_log, m.D,
                                    m.out_proj.weight, eps=self.norm.eps, pool=pool, out=out, backend=m.backend)

    def project_into(self, x, x_outs, z_out):
        """The block's per-step input projection for cached streaming: x (rows, d_model), one step a row ->
        in_proj(norm(x)) (norm's output in the autocast dtype, as ``forward``), its x half written into each
        tensor of ``x_outs`` and its gate half into ``z_out`` (each (rows, d_inner), any row stride, channels
        contiguous; e.g. slots of ``m2s2l.engine.step.StateRing``'s projection rings). ``forward_projected``
        continues from them. Only with a ``Mamba`` mixer."""
        m = self.mixer
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        h = self.norm(x, out_dtype=dt)
        w, b, d = m.in_proj.weight.to(h.dtype), m.in_proj.bias, m.d_inner
        # (GEMMs with out=: straight into the ring's strided slots; out= ops are not autocast, hence the cast)
        for o, rows in [(o, slice(0, d)) for o in x_outs] + [(z_out, slice(d, 2 * d))]:
            if b is None:
                torch.mm(h, w[rows].t(), out=o)
            else:
                torch.addmm(b[rows].to(h.dtype), h, w[rows].t(), out=o)

    def forward_projected(self, res, x, z, out=None):
        """The last step of ``forward(., last_only=True)`` from ``project_into``'s outputs: res (rows, d_model) the
        last step's block input (the residual), x (rows, steps, d_inner) every step's projected x half, z
        (rows, d_inner) the last step's gate -> (rows, d_model) (written to ``out`` if given)."""
        y = self.mixer.forward_projected(x, z).to(res.dtype)
        return res + y if out is None else torch.add(res, y, out=out)

    def forward(self, x, last_only=False):
        if last_only and self.can_fuse(x):
            return self.fused_last(x)[:, None]
        # under autocast the mixer's first use of the normed x is a GEMM that casts it to the autocast dtype:
        # the norm writes that dtype directly (same values; nn.LayerNorm would return float32 on CUDA)
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        if last_only:
            return x[:, -1:] + self.mixer(self.norm(x, out_dtype=dt), last_only=True)
        return x + self.mixer(self.norm(x, out_dtype=dt))


class MultiTemporalMamba(nn.Module):
    """feats (B, T, C, H, W) -> fused (B, C, H, W): one feature map summarising the clip per location.

    Every spatial location is one sequence over time (batch B*H*W, seqlen T / s). For each temporal scale
    s the sequence is average-pooled by s (s = 1: full frame rate), run through ``depth`` Mamba blocks,
    and its last step (the state after the newest frame) is kept. The per-scale summaries are
    concatenated and fused by a linear layer, added to the newest frame's features (residual).

    Only the last step of each branch is used, so the branch's last block runs with ``last_only`` (its output
    projection and residual on that step alone; attribute ``last_only = False`` runs every step, e.g. to count
    the architecture's FLOPs). The one layout copy left is ``seq`` ((B, T, C, H, W) ->
    (B*H*W, T, C): the blocks need rows of C contiguous values), and none when ``feats`` is stored in (B, H, W, T, C)
    memory order (the streaming state, ``StreamStep.STATE_ORDER``); pooling, the last-step slices and the
    output (a (B, H, W, C) tensor seen as (B, C, H, W)) are computed or viewed without further copies."""

    def __init__(self, dim, clip_len, scales, depth, d_state, d_conv, expand, backend):
        super().__init__()
        self.clip_len, self.scales = clip_len, tuple(scales)
        self.branches = nn.ModuleList(
            nn.Sequential(*[MambaBlock(dim, Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand,
                                                   backend=backend)) for _ in range(depth)])
            for _ in self.scales)
        self.fuse = nn.Linear(dim * len(self.scales), dim)
        self.last_only = True  # False: every block on every step (same result up to rounding; FLOP counts)

    def fold_out_proj(self, enable=True):
        """Inference, projected path (``forward(feats, proj=)``): fold each branch's out_proj and the block
        residuals into ``fuse``, so the output is a chain of GEMMs accumulating into one (rows, C) tensor instead of
        out_proj GEMMs, strided residual adds into the concatenation, the fuse GEMM and the frame residual's add:
        y = b' + sum_i (W_f,i W_o,i) g_i + sum_i R_i res_i, with g_i branch i's gated scan output, res_i its block
        input (the newest pooled step), W_f,i fuse's columns of branch i, b' = b_f + sum_i W_f,i b_o,i, and R_i =
        W_f,i (+ the identity for the first scale-1 branch, whose res_i is the newest frame: the module's own
        residual). Formed in float64, kept in the parameters' dtype in a plain attribute (not state: not moved by
        ``.to``) with their copies in the activations' dtype made on first use; used only where nothing needs
        gradients, on the fold's device, every branch one block, and while every source weight is unchanged in
        place (version counters, as ``Mamba.fold_dt_proj``). Same result up to rounding (each GEMM rounds its
        partial sum to the activations' dtype). ``enable=False`` removes the fold. Returns self."""
        if not enable or not self.projectable():
            self._out_fold = None
            return self
        with torch.no_grad():
            C, eye_done = self.fuse.out_features, False
            wf = self.fuse.weight.detach().to(torch.float64)
            bias = (self.fuse.bias.detach().to(torch.float64) if self.fuse.bias is not None
                    else torch.zeros(C, dtype=torch.float64, device=wf.device))
            g_w, r_w = [], []
            for i, (s, branch) in enumerate(zip(self.scales, self.branches)):
                wfi, op = wf[:, i * C:(i + 1) * C], branch[0].mixer.out_proj
                g_w.append((wfi @ op.weight.detach().to(torch.float64)).to(self.fuse.weight.dtype))
                if op.bias is not None:
                    bias = bias + wfi @ op.bias.detach().to(torch.float64)
                if s == 1 and not eye_done:
                    wfi, eye_done = wfi + torch.eye(C, dtype=torch.float64, device=wf.device), True
                r_w.append(wfi.to(self.fuse.weight.dtype))
        self._out_fold = (g_w, r_w, bias.to(self.fuse.weight.dtype), eye_done, self._out_fold_versions(), {})
        return self

    def _out_fold_versions(self):
        ps = [self.fuse.weight, self.fuse.bias] + [p for b in self.branches for p in (b[0].mixer.out_proj.weight,
                                                                                       b[0].mixer.out_proj.bias)]
        return tuple(None if p is None else p._version for p in ps)

    def _folded_out(self, feats):
        """``fold_out_proj``'s weights if this call may use them, else None."""
        fold = getattr(self, "_out_fold", None)
        if fold is None or fold[0][0].device != feats.device or needs_grad(feats, *self.parameters()):
            return None
        if torch.compiler.is_compiling() or fold[4] == self._out_fold_versions():
            return fold
        return None

    def projectable(self, feats=None):
        """Whether ``forward(feats, proj=)`` may run: every branch one block with a ``Mamba`` mixer, last-only.
        Then a block's input steps are the frames' own features (pooled), so their in_proj outputs depend on the
        frames alone and a stream can compute them once a frame (``project_into``) instead of once a step for
        every frame of the window. Given ``feats`` (B, T, C, H, W) like the forward's, also whether it is worth it:
        not where the blocks take a one-kernel path (``MambaBlock.can_fuse`` / ``can_prep``), which computes
        in_proj inside the kernel (e.g. CPU tensors under Triton's interpreter: the fused block 13.8 s a lite
        step there, projected + unfused 100 s)."""
        ok = getattr(self, "last_only", True) and all(len(b) == 1 and isinstance(b[0].mixer, Mamba)
                                                      for b in self.branches)
        return bool(ok and (feats is None or self._fusable(feats) is None))

    def project_into(self, frames, x_outs, z_outs, pooled_outs=None):
        """frames (B, H, W, s_max, C): the newest ``max(scales)`` frames' features, oldest first (a view) -> for
        each scale s (index i) the newest pooled step (the mean of the last s frames; also written into
        ``pooled_outs[i]`` (B, H, W, C) where that is given and not None) through branch i's
        ``MambaBlock.project_into``, written into ``x_outs[i]`` (a list of (B, H, W, d_inner) tensors) and
        ``z_outs[i]`` ((B, H, W, d_inner))."""
        B, H, W, _, C = frames.shape
        flat = lambda t: t.reshape(B * H * W, t.shape[-1])  # noqa: E731  (views: uniform row strides)
        for i, (s, branch) in enumerate(zip(self.scales, self.branches)):
            p = None if pooled_outs is None else pooled_outs[i]
            if s == 1:
                x = frames[:, :, :, -1]                                                   # (B, H, W, C)
            elif p is None:
                x = frames[:, :, :, -s:].mean(3)
            else:
                x = torch.mean(frames[:, :, :, -s:], 3, out=p)
            branch[0].project_into(flat(x), [flat(o) for o in x_outs[i]], flat(z_outs[i]))

    def forward(self, feats, run=None, proj=None):
        """``run``: how the independent per-scale branches are executed (``serial`` when None). ``proj`` (only
        where ``projectable``): per scale i a triple (x (B, H, W, T / s, d_inner), z (B, H, W, d_inner), res
        (B, H, W, C)) -- ``project_into``'s outputs for the window's pooled steps (x) and its newest one (z), and
        that newest pooled step itself (the block's residual), as ``StateRing.proj_window`` gives them; the blocks
        then start after in_proj (same result up to rounding)."""
        B, T, C, H, W = feats.shape
        if proj is not None:
            return self._forward_projected(feats, proj, run)
        mode = self._fusable(feats)
        if mode:
            return self._forward_fused(feats, run, mode)
        seq = feats.permute(0, 3, 4, 1, 2).reshape(B * H * W, T, C)      # (B*H*W, T, C)
        last_only = getattr(self, "last_only", True)  # (modules pickled before the attribute existed)

        def scale(s, branch):
            x = seq if s == 1 else seq.reshape(B * H * W, T // s, s, C).mean(2)
            for i, block in enumerate(branch):
                x = block(x, last_only=last_only and i == len(branch) - 1)  # last block: (B*H*W, 1, C)
            return x[:, -1]                                                # (B*H*W, C)
        summaries = (run or serial)([functools.partial(scale, s, b) for s, b in zip(self.scales, self.branches)])
        fused = seq[:, -1] + self.fuse(torch.cat(summaries, dim=-1))             # (B*H*W, C)
        return fused.reshape(B, H, W, C).permute(0, 3, 1, 2)

    def _forward_projected(self, feats, proj, run):
        B, T, C, H, W = feats.shape
        if len(proj) != len(self.scales):
            raise ValueError(f"proj must hold one (x, z, res) entry per temporal scale ({len(self.scales)}), got "
                             f"{len(proj)}")
        frames = feats.permute(0, 3, 4, 1, 2)                                  # (B, H, W, T, C), a view
        rows = B * H * W
        fold = self._folded_out(feats)
        # unfolded: each branch's block output (residual included) into its slice of the concatenation; folded
        # (``fold_out_proj``): each branch's gated scan output before out_proj
        cat = None if fold else torch.empty(rows, C * len(self.scales), device=feats.device, dtype=feats.dtype)
        gs = [None] * len(self.scales)

        def scale(i, s, branch, x, z, res):
            d = x.shape[-1]
            x, z = x.reshape(rows, T // s, d), z.reshape(rows, d)
            if fold:
                gs[i] = branch[0].mixer.forward_projected(x, z, out_proj=False)
            else:
                branch[0].forward_projected(res.reshape(rows, C), x, z, out=cat[:, i * C:(i + 1) * C])
        (run or serial)([functools.partial(scale, i, s, b, *p)
                         for i, (s, b, p) in enumerate(zip(self.scales, self.branches, proj))])
        if fold:  # y = b' + sum_i G_i g_i + sum_i R_i res_i: GEMMs accumulating in place (no elementwise kernels)
            g_w, r_w, bias = self._fold_weights(fold, frames.dtype)
            y = torch.addmm(bias, gs[0].to(frames.dtype), g_w[0].t())
            for g, w in zip(gs[1:], g_w[1:]):
                y.addmm_(g.to(frames.dtype), w.t())
            for (_, _, res), w in zip(proj, r_w):
                y.addmm_(res.reshape(rows, C), w.t())
            y = y.view(B, H, W, C)
        else:
            y = self.fuse(cat).view(B, H, W, C)
        if not (fold and fold[3]):  # (folded with a scale-1 branch: its R_i holds this residual)
            y += frames[:, :, :, -1]                 # the residual, in y's (B, H, W, C) layout as the other paths
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def _fold_weights(fold, dtype):
        """``fold_out_proj``'s (G_i, R_i, b') in ``dtype``, cast once a dtype (not at every step)."""
        if dtype not in fold[5]:
            fold[5][dtype] = ([w.to(dtype) for w in fold[0]], [w.to(dtype) for w in fold[1]], fold[2].to(dtype))
        return fold[5][dtype]

    def _fusable(self, feats):
        """The fast path: "fused" (every branch one block that ``can_fuse``), "prep" (one block each that
        ``can_prep``) or None."""
        if not getattr(self, "last_only", True) or not all(len(b) == 1 for b in self.branches):
            return None
        if all(b[0].can_fuse(feats, self.clip_len // s) for s, b in zip(self.scales, self.branches)):
            return "fused"
        if all(b[0].can_prep(feats) for b in self.branches):
            return "prep"
        return None

    def _forward_fused(self, feats, run, mode="fused"):
        """Every branch one block, run as ``MambaBlock.fused_last`` (``mode`` "fused") or ``prep_last`` ("prep")
        straight from the (B, T, C, H, W) maps (the pooling done on load) into its column slice of the fuse layer's
        input: no layout copy, no pooled copies, no concatenation."""
        B, T, C, H, W = feats.shape
        x = feats.flatten(3).permute(0, 3, 1, 2)                                  # (B, H*W, T, C), a view
        cat = torch.empty(B * H * W, C * len(self.scales), device=feats.device, dtype=feats.dtype)

        def scale(i, s, branch):
            last = branch[0].fused_last if mode == "fused" else branch[0].prep_last
            return last(x, pool=s, out=cat[:, i * C:(i + 1) * C].view(B, H * W, C))
        (run or serial)([functools.partial(scale, i, s, b) for i, (s, b) in enumerate(zip(self.scales,
                                                                                           self.branches))])
        y = self.fuse(cat).view(B, H, W, C)
        y += feats[:, -1].permute(0, 2, 3, 1)       # the residual, in y's (B, H, W, C) layout as the unfused path
        return y.permute(0, 3, 1, 2)


class SpatialMamba(nn.Module):
    """x (B, C, H, W) -> (B, C, H, W): ``depth`` bidirectional Mamba blocks over the H*W tokens (row-major)."""

    def __init__(self, dim, depth, d_state, d_conv, expand, backend):
        super().__init__()
        self.blocks = nn.Sequential(*[MambaBlock(dim, BiMamba(dim, d_state=d_state, d_conv=d_conv,
                                                              expand=expand, backend=backend))
                                      for _ in range(depth)])

    def forward(self, x):
        B, C, H, W = x.shape
        tokens = self.blocks(x.flatten(2).transpose(1, 2))               # (B, H*W, C)
        return tokens.transpose(1, 2).reshape(B, C, H, W)
