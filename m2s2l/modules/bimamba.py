"""Bidirectional Mamba block for spatial token sequences (no causal order to respect).

Design: one shared in_proj and out_proj (as Vision Mamba's "v2" block); per-direction conv, x_proj, dt_proj,
A_log and D. The two directions are stacked along the CHANNEL axis, not the batch axis:

    x2 = [x ; flip(x)]  (batch, 2*d_inner, seqlen)   -- the only copy of the input, flipped once

so ONE causal_conv1d_fn call (per-channel weights = per-direction weights) and ONE selective_scan_fn call
(A, D, delta_bias per channel; B and C as 2 groups: channel c uses group c // d_inner = its direction)
serve both directions with their own parameters. The x_proj / dt_proj of both directions are one bmm each.
The backward direction's output is flipped back and merged: "add" (sum, then out_proj) or "concat"
(out_proj from 2*d_inner). ``BiMamba(h) == Mamba_f(h) + flip(Mamba_b(flip(h)))`` with the per-direction
weights and out_proj split accordingly (tests check exactly that).
"""
import math

import torch
import torch.nn as nn

from m2s2l import ops
from m2s2l.modules.mamba import a_log_init, check_backend, check_hidden, dt_bias_init


class BiMamba(nn.Module):
    """Bidirectional Mamba-1 mixer: (batch, seqlen, d_model) -> (batch, seqlen, d_model).

    Same arguments as ``Mamba`` plus ``merge`` ("add" | "concat"). Per-direction parameters carry a leading
    axis of 2 (0 = forward, 1 = reversed): conv_weight (2, d_inner, d_conv), conv_bias (2, d_inner),
    x_proj_weight (2, dt_rank + 2*d_state, d_inner), dt_proj_weight (2, d_inner, dt_rank),
    dt_proj_bias (2, d_inner), A_log (2, d_inner, d_state) float32, D (2, d_inner) float32.
    Each direction is initialised as mamba-ssm initialises a Mamba block. No ``step``: it is not causal.
    """

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", bias=False, conv_bias=True,
                 merge="add", dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, dt_scale=1.0, backend="auto",
                 layer_idx=None, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        if merge not in ("add", "concat"):
            raise ValueError(f"merge must be 'add' or 'concat', got {merge!r}")
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = di = int(expand * d_model)
        self.dt_rank = R = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.merge = merge
        self.backend = check_backend(backend)
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias, **fk)
        self.conv_weight = nn.Parameter(torch.empty(2, di, d_conv, **fk))
        self.conv_bias = nn.Parameter(torch.empty(2, di, **fk)) if conv_bias else None
        self.x_proj_weight = nn.Parameter(torch.empty(2, R + 2 * d_state, di, **fk))
        self.dt_proj_weight = nn.Parameter(torch.empty(2, di, R, **fk))
        self.dt_proj_bias = nn.Parameter(torch.empty(2, di, **fk))
        self.dt_proj_bias._no_reinit = True
        self.A_log = nn.Parameter(torch.stack([a_log_init(di, d_state, device)] * 2))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(2, di, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(di * (1 if merge == "add" else 2), d_model, bias=bias, **fk)
        self._init_directions(dt_min, dt_max, dt_init_floor, dt_scale)

    @torch.no_grad()
    def _init_directions(self, dt_min, dt_max, dt_init_floor, dt_scale):
        """Per direction, the init nn.Conv1d / nn.Linear / mamba-ssm give the unidirectional block."""
        k_conv = 1.0 / math.sqrt(self.d_conv)                     # nn.Conv1d: fan_in = d_conv (depthwise)
        k_x = 1.0 / math.sqrt(self.d_inner)                       # nn.Linear kaiming_uniform(a=sqrt 5) bound
        std = self.dt_rank ** -0.5 * dt_scale
        self.conv_weight.uniform_(-k_conv, k_conv)
        if self.conv_bias is not None:
            self.conv_bias.uniform_(-k_conv, k_conv)
        self.x_proj_weight.uniform_(-k_x, k_x)
        self.dt_proj_weight.uniform_(-std, std)
        for g in range(2):
            self.dt_proj_bias[g] = dt_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor,
                                                self.dt_proj_bias.device)

    def forward(self, hidden_states):
        check_hidden("hidden_states", hidden_states, self.d_model)
        batch, seqlen, _ = hidden_states.shape
        di, N, R = self.d_inner, self.d_state, self.dt_rank
        xz = (self.in_proj.weight @ hidden_states.reshape(batch * seqlen, -1).t()).view(-1, batch, seqlen)
        xz = xz.transpose(0, 1)                                                    # (batch, 2*di, seqlen)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        x, z = xz.chunk(2, dim=1)
        x2 = torch.cat([x, x.flip(-1)], dim=1)                                     # (batch, 2*di, seqlen)
        z2 = torch.cat([z, z.flip(-1)], dim=1)
        bias = None if self.conv_bias is None else self.conv_bias.reshape(2 * di)
        x2 = ops.causal_conv1d_fn(x2, self.conv_weight.reshape(2 * di, self.d_conv), bias, "silu",
                                  backend=self.backend)
        # x_proj per direction as one bmm: (2, batch*seqlen, di) @ (2, di, R+2N)
        xg = x2.reshape(batch, 2, di, seqlen).permute(1, 0, 3, 2).reshape(2, batch * seqlen, di)
        x_dbl = torch.bmm(xg, self.x_proj_weight.transpose(1, 2))                  # (2, batch*seqlen, R+2N)
        dt, B, C = torch.split(x_dbl, [R, N, N], dim=-1)
        delta = torch.bmm(self.dt_proj_weight, dt.transpose(1, 2))                 # (2, di, batch*seqlen)
        delta = delta.view(2, di, batch, seqlen).permute(2, 0, 1, 3).reshape(batch, 2 * di, seqlen)
        B = B.reshape(2, batch, seqlen, N).permute(1, 0, 3, 2).contiguous()        # (batch, 2, N, seqlen)
        C = C.reshape(2, batch, seqlen, N).permute(1, 0, 3, 2).contiguous()
        A = -torch.exp(self.A_log.float()).reshape(2 * di, N)
        y2 = ops.selective_scan_fn(x2, delta, A, B, C, self.D.float().reshape(2 * di), z=z2,
                                   delta_bias=self.dt_proj_bias.float().reshape(2 * di), delta_softplus=True,
                                   backend=self.backend)                           # (batch, 2*di, seqlen)
        y_f, y_b = y2[:, :di], y2[:, di:].flip(-1)
        y = y_f + y_b if self.merge == "add" else torch.cat([y_f, y_b], dim=1)
        return self.out_proj(y.transpose(1, 2))

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, merge={self.merge!r}, backend={self.backend!r}")
