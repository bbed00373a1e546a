"""Reference of ``m2s2l.ops.mamba_block_last``: the unfused block, composed of the reference ops."""
import torch
import torch.nn.functional as F

from ..causal_conv1d.naive import causal_conv1d_ref
from ..selective_scan.naive import selective_scan_ref


def mamba_block_last_ref(x, norm_weight, norm_bias, in_proj_weight, conv_weight, conv_bias, x_proj_weight,
                         dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, eps=1e-5, pool=1):
    """xp[..., -1, :] + Mamba(LayerNorm(xp))[..., -1, :] with xp = x averaged over groups of ``pool`` steps.

    x (*lead, seqlen, d_model) -> (*lead, d_model); the parameters as in ``m2s2l.ops.mamba_block_last``. Plain
    PyTorch (F.layer_norm, F.linear, the conv / scan references), so autocast, tracers and ONNX export see ordinary
    ops; float64 inputs give a float64 oracle.
    """
    *lead, T, C = x.shape
    xs = x.reshape(-1, T, C)
    if pool > 1:
        xs = xs.reshape(xs.shape[0], T // pool, pool, C).mean(2)
    h = F.layer_norm(xs, (C,), norm_weight, norm_bias, eps)
    xz = F.linear(h, in_proj_weight)                                    # (rows, T', 2 d_inner)
    xi, z = xz.chunk(2, dim=-1)
    xi = causal_conv1d_ref(xi.transpose(1, 2), conv_weight, conv_bias, "silu")   # (rows, d_inner, T')
    rank, n = dt_proj_weight.shape[1], A_log.shape[1]
    dt, B, Cm = torch.split(F.linear(xi.transpose(1, 2), x_proj_weight), [rank, n, n], dim=-1)
    delta = F.linear(dt, dt_proj_weight).transpose(1, 2)                # (rows, d_inner, T')
    A = -torch.exp(A_log.to(torch.float64 if x.dtype == torch.float64 else torch.float32))
    y = selective_scan_ref(xi, delta, A, B.transpose(1, 2), Cm.transpose(1, 2), D, z.transpose(1, 2),
                           dt_proj_bias, True)
    out = xs[:, -1] + F.linear(y[:, :, -1], out_proj_weight)
    return out.reshape(*lead, C)


def mamba_block_prep_ref(x, norm_weight, norm_bias, in_proj_weight, conv_weight, conv_bias, xdt_weight, eps=1e-5,
                         pool=1):
    """What ``m2s2l.ops.mamba_block_prep`` computes, with PyTorch ops: x (*lead, seqlen, d_model) ->
    (u, delta_raw (rows, T', d_inner), bc (rows, T', 2 d_state), z (rows, d_inner), x_last (rows, d_model)), rows =
    prod(lead), T' = seqlen / pool: the pooled and normed input through in_proj's x half, the causal conv + SiLU (u),
    u @ xdt_weight^T split into delta before its bias and [B | C], the last step's gate z and pooled input."""
    *lead, T, C = x.shape
    xs = x.reshape(-1, T, C)
    if pool > 1:
        xs = xs.reshape(xs.shape[0], T // pool, pool, C).mean(2)
    h = F.layer_norm(xs, (C,), norm_weight, norm_bias, eps)
    di = conv_weight.shape[0]
    xi = F.linear(h, in_proj_weight[:di])                                       # (rows, T', d_inner)
    u = causal_conv1d_ref(xi.transpose(1, 2), conv_weight, conv_bias, "silu").transpose(1, 2)
    xdt = F.linear(u, xdt_weight)
    z = F.linear(h[:, -1], in_proj_weight[di:])
    return u, xdt[..., :di], xdt[..., di:], z, xs[:, -1]
