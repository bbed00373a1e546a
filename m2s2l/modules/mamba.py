"""The Mamba-1 block (as ``mamba_ssm.modules.mamba_simple.Mamba``) built on m2s2l's ops.

    in_proj -> split (x, z) -> causal depthwise conv + SiLU -> x_proj -> (dt, B, C) -> dt_proj
    -> selective scan (D skip, z gate, delta_bias = dt_proj.bias, softplus) -> out_proj

Parameter names and shapes match mamba-ssm (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj), so its
checkpoints load with ``load_state_dict``. Every op goes through ``m2s2l.ops`` with ``self.backend``, read at
call time, so ``block.backend = "torch"`` switches a built block to the reference path.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from m2s2l import ops
from m2s2l.ops._backend import BACKENDS, needs_grad, resolve_backend


def check_hidden(name, x, d_model, seqlen=None):
    """Raise a clear error unless ``x`` is a floating (batch, seqlen, d_model) tensor."""
    want = f"(batch, {'seqlen' if seqlen is None else seqlen}, d_model={d_model})"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {want}, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model or (seqlen is not None and x.shape[1] != seqlen):
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")


# Activation layouts of the block's scan inputs (``Mamba.layout``): "time" = mamba-ssm's, from the (d, batch*seqlen)
# projection GEMMs: each channel's steps contiguous (what the chunked long-sequence kernels read); "channel" = the
# channels of one step contiguous (the GEMMs' natural (batch*seqlen, d) output, no transposing copies of B and C):
# the sequential short-sequence kernels then load each step's channels as one contiguous vector instead of one
# cache line per channel; "auto" (the default) = "channel" where it measured faster on an H200 (session 7,
# docs/BENCHMARKS.md: Mamba block bf16, video (16384, 8, 64) fwd 1.16x / fwd+bwd 1.10x, long (8, 2048, 1024) fwd
# 1.61x / fwd+bwd 1.07x; m2s2l_paper 32-stream scoring 1.25x): the Triton scan on seqlen <= SHORT_SEQLEN (its
# sequential kernels) or seqlen >= LONG_SEQLEN (its chunk-parallel kernels); "time" elsewhere (33..1023 steps
# not measured) and on the PyTorch reference.
LAYOUTS = ("time", "channel", "auto")
SHORT_SEQLEN = 32
LONG_SEQLEN = 1024


def check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def dt_bias_init(n, dt_min, dt_max, dt_init_floor, device=None, dtype=None):
    """mamba-ssm's dt init: dt log-uniform in [dt_min, dt_max] (floored), returned as softplus^-1(dt)."""
    dt = torch.exp(torch.rand(n, device=device, dtype=dtype) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


def a_log_init(d_inner, d_state, device=None):
    """S4D-real init: A = -(1..N) per channel, stored as log in float32."""
    A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1)
    return torch.log(A)


class Mamba(nn.Module):
    """Mamba-1 mixer on (batch, seqlen, d_model) sequences.

    Args:
        d_model: model width. d_state: SSM state size N (16). d_conv: causal conv width (4).
        expand: d_inner = expand * d_model (2). dt_rank: rank of the dt projection, "auto" =
        ceil(d_model / 16). bias: bias of in_proj/out_proj (False). conv_bias: bias of the conv (True).
        dt_min, dt_max, dt_init_floor, dt_scale: mamba-ssm's dt initialisation.
        backend: "auto" | "triton" | "cuda" | "torch", passed to every op (settable attribute).
        layout: "auto" (default) | "time" | "channel": memory layout of the scan's inputs (``LAYOUTS`` above;
        settable attribute; the CUDA-extension backend always uses "time"). Same results up to rounding.
        layer_idx: kept for mamba-ssm compatibility (unused). device, dtype: factory kwargs; A_log and D
        are always created in float32.

    Streaming: ``allocate_inference_cache`` returns ``(conv_state, ssm_state)``:
        conv_state (batch, d_inner, d_conv - 1) in the model dtype -- the last d_conv-1 conv *inputs*
        (causal_conv1d_update's convention; mamba-ssm keeps d_conv columns, one of them redundant);
        ssm_state (batch, d_inner, d_state) float32.
    ``step`` advances them by one token in place; ``forward(x, inference_cache=(conv_state, ssm_state))``
    consumes a chunk starting from the cache and leaves the cache at the chunk's end (chunked streaming).
    """

    gate_last_only = True  # last_only calls: z for the last step alone (``_in_proj_last``); False: all steps (A/B)

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", bias=False, conv_bias=True,
                 dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, dt_scale=1.0, backend="auto", layer_idx=None,
                 device=None, dtype=None, layout="auto"):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = check_backend(backend)
        self.layout = check_layout(layout)
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **fk)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias, **fk)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
        std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor, device))
        self.dt_proj.bias._no_reinit = True
        self.A_log = nn.Parameter(a_log_init(self.d_inner, d_state, device))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **fk)
        self.register_buffer("xdt_weight", None, persistent=False)  # fold_dt_proj
        self._xdt_src = None

    # ---- full sequence ------------------------------------------------------------------------------
    def forward(self, hidden_states, inference_cache=None, last_only=False):
        """hidden_states (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        inference_cache: optional ``(conv_state, ssm_state)`` from ``allocate_inference_cache``; the chunk
        starts from these states and they are overwritten in place with the states after the chunk.
        last_only: return only the last step's output, (batch, 1, d_model): the scan forms that step's output
        alone (``selective_scan_fn(last_only=True)``) and out_proj runs on it (equals ``forward(...)[:, -1:]`` up
        to rounding).
        """
        check_hidden("hidden_states", hidden_states, self.d_model)
        batch, seqlen, _ = hidden_states.shape
        chan = self._channel_layout(seqlen, hidden_states.device)
        if last_only and chan and self.gate_last_only:
            x, z = self._in_proj_last(hidden_states)
        else:
            xz = self._in_proj(hidden_states, chan)                              # (batch, 2*d_inner, seqlen)
            x, z = xz.chunk(2, dim=1)
        conv_state = ssm_state = None
        if inference_cache is not None:
            conv_state, ssm_state = self._check_cache(inference_cache, batch)
        x = self._conv(x, self.conv1d.weight[:, 0], self.conv1d.bias, conv_state)
        delta, B, C = self._x_dt_proj(x, self.x_proj.weight, self.dt_proj.weight, chan)
        y = self._scan(x, delta, self.A_log, B, C, self.D, z, self.dt_proj.bias, ssm_state, last_only)
        return self.out_proj(y.transpose(1, 2))

    def forward_projected(self, x, z, out_proj=True):
        """The last step's output of ``forward(h, last_only=True)`` from in_proj's output instead of h:
        x (batch, seqlen, d_inner) in_proj's x half for every step (any strides, e.g. a view of a cache of
        per-step projections), z (batch, d_inner) in_proj's gate half for the last step -> (batch, d_model)
        (``out_proj=False``: the gated scan output before out_proj, (batch, d_inner)).
        Equals ``forward(h, last_only=True)[:, 0]`` when x, z = in_proj(h) up to rounding (the same ops after
        in_proj). No cache (inference_cache) and no in_proj bias handling: both are already in x and z."""
        if x.dim() != 3 or x.shape[-1] != self.d_inner:
            raise ValueError(f"x must be (batch, seqlen, d_inner={self.d_inner}), got {tuple(x.shape)}")
        if z.dim() != 2 or tuple(z.shape) != (x.shape[0], self.d_inner):
            raise ValueError(f"z must be (batch, d_inner) = ({x.shape[0]}, {self.d_inner}), got {tuple(z.shape)}")
        batch, seqlen, _ = x.shape
        chan = self._channel_layout(seqlen, x.device)
        x = self._conv(x.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias, None)
        delta, B, C = self._x_dt_proj(x, self.x_proj.weight, self.dt_proj.weight, chan)
        y = self._scan(x, delta, self.A_log, B, C, self.D, z[:, :, None].expand(-1, -1, seqlen),
                       self.dt_proj.bias, None, last_only=True)                   # (batch, d_inner, 1)
        return self.out_proj(y[:, :, 0]) if out_proj else y[:, :, 0]

    def _channel_layout(self, seqlen, device):
        """Whether this call runs in the "channel" layout (``LAYOUTS``)."""
        layout = getattr(self, "layout", "time")  # modules pickled before the attribute existed
        if self.backend == "cuda" or layout == "time":
            return False
        if layout == "channel":
            return True
        return (resolve_backend(self.backend, device) == "triton"
                and (seqlen <= SHORT_SEQLEN or seqlen >= LONG_SEQLEN))

    def _in_proj(self, h, channel=False):
        """One GEMM: (batch, seqlen, d_model) -> (batch, 2*d_inner, seqlen), seqlen-contiguous (as mamba-ssm) or,
        with ``channel``, a view of the (batch, seqlen, 2*d_inner) product (channel-contiguous)."""
        batch, seqlen, _ = h.shape
        if channel:
            return F.linear(h, self.in_proj.weight, self.in_proj.bias).transpose(1, 2)
        xz = (self.in_proj.weight @ h.reshape(batch * seqlen, -1).t()).view(-1, batch, seqlen).transpose(0, 1)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        return xz

    def _in_proj_last(self, h):
        """in_proj for a last-only call in the "channel" layout: x (batch, d_inner, seqlen) for every step, but the
        gate z only for the last step -- the only step whose output is formed, so the only z the scan reads -- seen
        as (batch, d_inner, seqlen) with a zero time stride (the earlier steps' z would be discarded: their outputs
        are not formed, and their gradients are zero). Saves writing and reading (seqlen - 1) / seqlen of z."""
        w, b = self.in_proj.weight, self.in_proj.bias
        d = self.d_inner
        x = F.linear(h, w[:d], None if b is None else b[:d]).transpose(1, 2)
        # h[:, -1] is 2-D (a GEMM with a row stride); h[:, -1:] would be a 3-D strided input that F.linear sends
        # to a batched GEMM of one row a batch (32 streams, H100: 380 us a call; fps 3548 -> 2161)
        z = F.linear(h[:, -1], w[d:], None if b is None else b[d:])                  # (batch, d_inner)
        return x, z[:, :, None].expand(-1, -1, h.shape[1])

    def _conv(self, x, weight, bias, conv_state):
        if conv_state is None:
            return ops.causal_conv1d_fn(x, weight, bias, "silu", backend=self.backend)
        x, final = ops.causal_conv1d_fn(x, weight, bias, "silu", initial_states=conv_state,
                                        return_final_states=True, backend=self.backend)
        with torch.no_grad():
            conv_state.copy_(final)
        return x

    # ---- inference: dt_proj folded into x_proj --------------------------------------------------------
    def fold_dt_proj(self, enable=True):
        """Inference: fold dt_proj's weight into x_proj's, so one GEMM gives delta (before its bias), B and C:
        ``W = [dt_proj.weight @ x_proj.weight[:dt_rank]; x_proj.weight[dt_rank:]]`` (d_inner + 2 d_state, d_inner),
        formed in float64 (a non-persistent buffer ``xdt_weight``). It replaces the (rows, d_inner) x
        (d_inner, dt_rank + 2 d_state) and (rows, dt_rank) x (dt_rank, d_inner) GEMMs -- the first with an output
        width like 34 that runs a slow tile shape, the second a pass over its rows for a rank-2..16 product -- with
        one GEMM of a wide output; delta is then one rounding away from x instead of two. Used only where nothing
        needs gradients, in the "channel" layout, on the fold's device, and while both source weights are unchanged
        in place (their version counters are checked at each call, e.g. after ``load_state_dict``; a changed weight
        falls back to the two GEMMs: fold again). ``enable=False`` removes the fold. Returns self."""
        if not enable:
            self.xdt_weight, self._xdt_src = None, None
            return self
        self.register_buffer("xdt_weight", self.folded_xdt_weight(), persistent=False)
        self._xdt_src = self._xdt_versions()
        return self

    def folded_xdt_weight(self):
        """``[dt_proj.weight @ x_proj.weight[:dt_rank]; x_proj.weight[dt_rank:]]`` (d_inner + 2 d_state, d_inner),
        formed in float64 and returned in x_proj's dtype (no gradient): ``fold_dt_proj``'s weight, now."""
        with torch.no_grad():
            wx = self.x_proj.weight.detach().to(torch.float64)
            wdt = self.dt_proj.weight.detach().to(torch.float64) @ wx[:self.dt_rank]
            return torch.cat([wdt, wx[self.dt_rank:]]).to(self.x_proj.weight.dtype)

    def _xdt_versions(self):
        return self.x_proj.weight._version, self.dt_proj.weight._version

    def _folded(self, x, channel):
        """The folded weight if this call may use it (``fold_dt_proj``), else None."""
        w = getattr(self, "xdt_weight", None)
        if w is None or not channel or w.device != x.device or needs_grad(x, self.x_proj.weight,
                                                                         self.dt_proj.weight):
            return None
        if torch.compiler.is_compiling():  # (version counters are not traced; the graph is built from the fold)
            return w
        return w if self._xdt_src == self._xdt_versions() else None

    def _x_dt_proj(self, x, x_proj_w, dt_proj_w, channel=False):
        """x (batch, d, seqlen) -> delta (batch, d, seqlen) (before bias), B and C (batch, 1, d_state, seqlen);
        seqlen-contiguous, or with ``channel`` views of the projections' (batch*seqlen, .) outputs."""
        batch, _, seqlen = x.shape
        w = self._folded(x, channel)
        head = self.d_inner if w is not None else self.dt_rank  # the first columns: delta itself, or dt (rank R)
        x_dbl = F.linear(x.transpose(1, 2).reshape(batch * seqlen, -1), x_proj_w if w is None else w)
        dt, B, C = torch.split(x_dbl, [head, self.d_state, self.d_state], dim=-1)  # (batch*seqlen, head + 2N)
        B = B.view(batch, seqlen, 1, self.d_state).permute(0, 2, 3, 1)
        C = C.view(batch, seqlen, 1, self.d_state).permute(0, 2, 3, 1)
        if w is not None:  # folded: one GEMM gave [delta | B | C]
            return dt.view(batch, seqlen, -1).transpose(1, 2), B, C
        if channel:
            return F.linear(dt, dt_proj_w).view(batch, seqlen, -1).transpose(1, 2), B, C
        delta = (dt_proj_w @ dt.t()).view(-1, batch, seqlen).transpose(0, 1)
        return delta, B.contiguous(), C.contiguous()

    def _scan(self, x, delta, A_log, B, C, D, z, dt_bias, ssm_state, last_only=False):
        A = -torch.exp(A_log.float())
        out = ops.selective_scan_fn(x, delta, A, B, C, D.float(), z=z, delta_bias=dt_bias.float(),
                                    delta_softplus=True, return_last_state=ssm_state is not None,
                                    initial_state=ssm_state, backend=self.backend, last_only=last_only)
        if ssm_state is None:
            return out
        y, last = out
        with torch.no_grad():
            ssm_state.copy_(last)
        return y

    # ---- streaming ----------------------------------------------------------------------------------
    def allocate_inference_cache(self, batch_size, max_seqlen=None, dtype=None):
        """Zero ``(conv_state (batch, d_inner, d_conv-1), ssm_state (batch, d_inner, d_state) float32)``.

        conv_state must have the dtype the conv input will have: ``dtype`` if given, else the autocast dtype when
        called under autocast, else the conv weight's dtype. max_seqlen is unused (mamba-ssm's signature)."""
        dev = self.out_proj.weight.device
        conv_dtype = dtype
        if conv_dtype is None:
            amp = torch.is_autocast_enabled(dev.type)
            conv_dtype = torch.get_autocast_dtype(dev.type) if amp else self.conv1d.weight.dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=dev, dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=dev, dtype=torch.float32)
        return conv_state, ssm_state

    def _check_cache(self, cache, batch):
        if not (isinstance(cache, (tuple, list)) and len(cache) == 2):
            raise TypeError("inference_cache must be the (conv_state, ssm_state) pair from allocate_inference_cache")
        conv_state, ssm_state = cache
        want = {"conv_state": (conv_state, (batch, self.d_inner, self.d_conv - 1), "(batch, d_inner, d_conv-1)"),
                "ssm_state": (ssm_state, (batch, self.d_inner, self.d_state), "(batch, d_inner, d_state)")}
        for name, (t, shape, desc) in want.items():
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape {desc} = {shape}, got {got}; "
                                 "use allocate_inference_cache(batch_size)")
        return conv_state, ssm_state

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (batch, 1, d_model) -> (out (batch, 1, d_model), conv_state, ssm_state).

        conv_state and ssm_state (from ``allocate_inference_cache``) are updated in place and returned."""
        check_hidden("hidden_states", hidden_states, self.d_model, seqlen=1)
        conv_state, ssm_state = self._check_cache((conv_state, ssm_state), hidden_states.shape[0])
        xz = self.in_proj(hidden_states[:, 0])                                     # (batch, 2*d_inner)
        x, z = xz.chunk(2, dim=-1)
        x = ops.causal_conv1d_update(x, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, "silu",
                                     backend=self.backend)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)                                     # bias added in the op
        A = -torch.exp(self.A_log.float())
        y = ops.selective_state_update(ssm_state, x, dt, A, B, C, self.D.float(), z=z,
                                       dt_bias=self.dt_proj.bias.float(), dt_softplus=True, backend=self.backend)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, backend={self.backend!r}, layout={getattr(self, 'layout', 'time')!r}")
