"""Streaming one-token steps: stepping token by token reproduces the full-sequence ops and final states.

causal_conv1d_update vs causal_conv1d_fn (float32: 1e-5); selective_state_update vs the full-sequence
selective_scan_ref (float32: 1e-5; bf16 x: out rounding, 1.6e-2 of max |out|).
"""
import pytest
import torch

from m2s2l.ops import causal_conv1d_update, selective_state_update
from m2s2l.triton_kernels.causal_conv1d.naive import causal_conv1d_ref
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref

CONV_CASES = [  # batch, dim, width, state_len, activation, bias
    (2, 5, 4, 3, "silu", True),
    (3, 6, 4, 5, None, False),  # longer state (mamba-ssm caches d_conv columns)
    (1, 7, 1, 0, "silu", True),
    (2, 3, 8, 7, "silu", True),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[f"B{b}-D{d}-W{w}-S{s}-{a or 'id'}{'-bias' if bi else ''}"
                                                  for b, d, w, s, a, bi in CONV_CASES])
def test_conv_update_steps_match_full_sequence(case, backend, device):
    batch, dim, width, state_len, act, has_bias = case
    torch.manual_seed(0)
    L = 6
    x = torch.randn(batch, dim, L, device=device)
    w = torch.randn(dim, width, device=device)
    bias = torch.randn(dim, device=device) if has_bias else None
    state0 = torch.randn(batch, dim, state_len, device=device)
    init = state0[..., state_len - (width - 1):]
    full, final = causal_conv1d_ref(x, w, bias, act, init.contiguous() if width > 1 else None, True)
    state = state0.clone()
    outs = [causal_conv1d_update(x[..., t], state, w, bias, act, backend=backend) for t in range(L)]
    torch.testing.assert_close(torch.stack(outs, -1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, torch.cat([state0, x], -1)[..., L:], rtol=0, atol=0)
    torch.testing.assert_close(state[..., state_len - (width - 1):], final, rtol=0, atol=0)


SSM_CASES = [  # groups (0 = B/C of shape (batch, dstate)), D, z, dt_bias, softplus, dtype
    (0, False, False, False, False, "fp32"),
    (1, True, True, True, True, "fp32"),
    (3, True, True, True, True, "bf16"),
    (2, True, False, False, True, "fp32"),
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", SSM_CASES, ids=[f"G{g}{'-D' if d else ''}{'-z' if z else ''}"
                                                 f"{'-dtbias' if b else ''}{'-softplus' if s else ''}-{dt}"
                                                 for g, d, z, b, s, dt in SSM_CASES])
def test_state_update_steps_match_full_scan(case, backend, device):
    groups, has_D, has_z, has_dtb, softplus, dt_name = case
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dt_name]
    torch.manual_seed(0)
    batch, dim, N, L = 2, 6, 5, 5
    u = torch.randn(batch, dim, L, device=device).to(dtype)
    delta = (torch.rand(batch, dim, L, device=device) * 0.5).to(dtype)
    A = -torch.rand(dim, N, device=device) - 0.5
    bc_shape = (batch, N, L) if groups == 0 else (batch, groups, N, L)
    B, C = torch.randn(bc_shape, device=device), torch.randn(bc_shape, device=device)
    D = torch.randn(dim, device=device) if has_D else None
    z = torch.randn(batch, dim, L, device=device).to(dtype) if has_z else None
    dtb = torch.randn(dim, device=device) * 0.1 if has_dtb else None
    h0 = torch.randn(batch, dim, N, device=device)
    ref, h_last = selective_scan_ref(u, delta, A, B, C, D, z, dtb, softplus, return_last_state=True,
                                     initial_state=h0)
    state = h0.clone()
    outs = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D,
                                   None if z is None else z[..., t], dtb, softplus, backend=backend)
            for t in range(L)]
    out = torch.stack(outs, -1)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2 * ref.float().abs().max().item()
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(state, h_last, rtol=1e-5, atol=1e-5)


def test_step_ops_registered_in_place(device):
    """Schema (mutation declared) and fake implementations of the in-place custom ops."""
    from m2s2l.ops.steps import _conv_update, _state_update
    x, w = torch.randn(2, 5, device=device), torch.randn(5, 4, device=device)
    for backend in ("torch", "triton"):
        torch.library.opcheck(_conv_update, (x, torch.randn(2, 5, 3, device=device), w, None, "silu", backend),
                              test_utils=("test_schema", "test_faketensor"))
        args = (torch.randn(2, 5, 4, device=device), x, torch.rand(2, 5, device=device),
                -torch.rand(5, 4, device=device), torch.randn(2, 4, device=device), torch.randn(2, 4, device=device),
                None, None, None, True, backend)
        torch.library.opcheck(_state_update, args, test_utils=("test_schema", "test_faketensor"))


def test_step_bad_inputs_name_the_argument(device):
    x, w = torch.randn(2, 4, device=device), torch.randn(4, 3, device=device)
    with pytest.raises(ValueError, match=r"conv_state.*\(batch, dim, state_len >= width - 1\)"):
        causal_conv1d_update(x, torch.randn(2, 4, 1, device=device), w)
    with pytest.raises(TypeError, match="conv_state"):
        causal_conv1d_update(x, torch.randn(2, 4, 2, device=device, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d_update(x, torch.randn(2, 4, 2, device=device), torch.randn(4, 0, device=device))
    with pytest.raises(ValueError, match="x"):
        causal_conv1d_update(x[0], torch.randn(2, 4, 2, device=device), w)
    state, A = torch.randn(2, 4, 3, device=device), torch.randn(4, 3, device=device)
    Bm = torch.randn(2, 3, device=device)
    with pytest.raises(ValueError, match=r"state.*\(batch, dim, dstate\)"):
        selective_state_update(torch.randn(3, 4, 3, device=device), x, x, A, Bm, Bm)
    with pytest.raises(ValueError, match="A"):
        selective_state_update(state, x, x, torch.randn(4, 2, device=device), Bm, Bm)
    with pytest.raises(ValueError, match="B"):
        selective_state_update(state, x, x, A, torch.randn(2, 3, 3, device=device), Bm)
    with pytest.raises(ValueError, match="dt"):
        selective_state_update(state, x, x[:1], A, Bm, Bm)
    with pytest.raises(TypeError, match="state"):
        selective_state_update(state.long(), x, x, A, Bm, Bm)


def test_steps_under_torch_compile(device):
    """fullgraph compile (aot_eager: no C++ toolchain needed) keeps the in-place state updates."""
    from m2s2l.ops import causal_conv1d_fn

    def step(x, conv_state, w, h, dt, A, B, C):
        y = causal_conv1d_update(x, conv_state, w, None, "silu", backend="torch")
        return selective_state_update(h, y, dt, A, B, C, dt_softplus=True, backend="torch")

    def make():
        g = torch.Generator(device=device).manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
        return (r(2, 5), r(2, 5, 3), r(5, 4), r(2, 5, 4), r(2, 5).abs(), -r(5, 4).abs(), r(2, 4), r(2, 4))
    a, b = make(), make()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*a), step(*b))
    torch.testing.assert_close(a[1], b[1])  # conv_state mutated identically
    torch.testing.assert_close(a[3], b[3])  # ssm state mutated identically
    x = torch.randn(2, 5, 7, device=device, requires_grad=True)
    f = lambda x: causal_conv1d_fn(x, a[2], activation="silu", backend="torch")  # noqa: E731
    torch.testing.assert_close(torch.compile(f, backend="aot_eager", fullgraph=True)(x), f(x))
