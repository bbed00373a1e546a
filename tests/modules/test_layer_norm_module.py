"""m2s2l.modules.LayerNorm: a drop-in nn.LayerNorm (parameters, state dict, numerics in and out of autocast)."""
import pytest
import torch
import torch.nn as nn

from m2s2l.modules import LayerNorm
from m2s2l.ops._backend import interpret_mode
from m2s2l.modules.layer_norm import autocast_to_float32


def pair(dim=48, **kw):
    torch.manual_seed(0)
    ref = nn.LayerNorm(dim, **kw)
    with torch.no_grad():
        if ref.weight is not None:
            ref.weight.normal_(1, 0.5)
        if ref.bias is not None:
            ref.bias.normal_()
    ours = LayerNorm(dim, **kw)
    ours.load_state_dict(ref.state_dict())                     # nn.LayerNorm's state dict loads unchanged
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert isinstance(ours, nn.LayerNorm)
    return ref, ours


@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"elementwise_affine": False}, {"eps": 1e-3}])
def test_matches_nn_layer_norm(backend, kw, device):
    ref, ours = pair(**kw)
    ref, ours = ref.to(device), ours.to(device)
    ours.backend = backend
    x = (torch.randn(3, 7, 48, device=device) * 2 + 1).requires_grad_()
    dy = torch.randn(3, 7, 48, device=device)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g_ref = torch.autograd.grad((y_ref * dy).sum(), [x] + list(ref.parameters()))
    g = torch.autograd.grad((y * dy).sum(), [x] + list(ours.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cpu_autocast_like_nn_layer_norm(backend):
    """CPU autocast leaves layer_norm alone: bf16 in, bf16 out (float32 parameters); float32 in, float32 out."""
    if backend == "triton" and not interpret_mode():
        pytest.skip("CPU tensors with backend='triton' need TRITON_INTERPRET=1 (the GPU suite runs without it)")
    ref, ours = pair(32)
    ours.backend = backend
    assert not autocast_to_float32("cpu")
    x = torch.randn(5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_to_float32("cpu") is False
        for xi in (x, x.bfloat16()):
            y_ref, y = ref(xi), ours(xi)
            assert y.dtype == y_ref.dtype == xi.dtype
            torch.testing.assert_close(y.float(), y_ref.float(), rtol=1.6e-2, atol=1.6e-2)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_out_dtype_equals_cast(backend, device):
    """out_dtype=bf16 gives nn.LayerNorm's float32 output cast to bf16 (what a GEMM under autocast would do to
    it), bit for bit (to one bf16 ulp under the interpreter), with the same gradients; MambaBlock relies on it."""
    ref, ours = pair(32)
    ref, ours = ref.to(device), ours.to(device)
    ours.backend = backend
    x = (torch.randn(4, 9, 32, device=device) * 2 + 1).requires_grad_()
    dy = torch.randn(4, 9, 32, device=device).bfloat16()
    y_ref, y = ref(x).to(torch.bfloat16), ours(x, out_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16
    if backend == "torch" or device.type == "cuda":
        assert torch.equal(y, y_ref)
    else:  # Triton's CPU interpreter rounds float32 -> bf16 toward zero (the GPU rounds to nearest even)
        torch.testing.assert_close(y.float(), y_ref.float(), rtol=2 ** -7, atol=0)
    g_ref = torch.autograd.grad((y_ref * dy).float().sum(), [x] + list(ref.parameters()))
    g = torch.autograd.grad((y * dy).float().sum(), [x] + list(ours.parameters()))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_out_dtype(dtype):
    """Under CUDA autocast, out_dtype=dtype == the module's own float32 output cast to dtype, bit for bit (and
    nn.LayerNorm's to one rounding step: the float32 results differ in the last bits, which can flip a rounding)."""
    ref, ours = pair(64)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(1000, 4, 64, device="cuda").to(dtype)
    with torch.autocast("cuda", dtype=dtype):
        y32, y = ours(x), ours(x, out_dtype=dtype)
        y_ref = ref(x).to(dtype)
    assert y.dtype == dtype and y32.dtype == torch.float32
    assert torch.equal(y, y32.to(dtype))
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=eps, atol=eps)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_like_nn_layer_norm(dtype):
    """CUDA autocast runs nn.LayerNorm in float32: float32 out, the same values as the kernel reading half x."""
    ref, ours = pair(64)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(1000, 4, 64, device="cuda").to(dtype).requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        assert autocast_to_float32("cuda")
        y_ref, y = ref(x), ours(x)
    assert y.dtype == y_ref.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    g_ref = torch.autograd.grad((y_ref * dy).sum(), [x] + list(ref.parameters()))
    g = torch.autograd.grad((y * dy).sum(), [x] + list(ours.parameters()))
    for a, b in zip(g, g_ref):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)


def test_tracing_records_aten_layer_norm(device):
    """Under torch.jit tracing (ONNX export, fvcore) every backend records aten::layer_norm, static shape."""
    ln = LayerNorm(8, backend="triton").to(device)
    graph = str(torch.jit.trace(ln, torch.randn(3, 8, device=device)).graph)
    assert "aten::layer_norm" in graph and "m2s2l::" not in graph


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_compile_aot_eager_fullgraph(backend, device):
    """torch.compile traces the module as one graph (triton: the m2s2l::layer_norm_fwd/bwd custom ops with their
    fake implementations) and matches eager, forward and gradients."""
    ref, ours = pair(24)
    ours.backend = backend
    ours.to(device)
    x = torch.randn(5, 3, 24, device=device, requires_grad=True)

    def loss_grads(m):
        y = m(x)
        return [y] + list(torch.autograd.grad((y * y).sum(), [x] + list(m.parameters())))
    eager = loss_grads(ours)
    torch._dynamo.reset()
    compiled = loss_grads(torch.compile(ours, backend="aot_eager", fullgraph=True))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="normalized_shape"):
        LayerNorm((4, 8))
    with pytest.raises(ValueError, match="backend"):
        LayerNorm(8, backend="cudnn")
    ln = LayerNorm(8, backend="triton")
    with pytest.raises(ValueError, match=r"input must have shape \(\.\.\., 8\)"):
        ln(torch.randn(3, 7))
    with pytest.raises(TypeError, match="input"):
        ln([1.0] * 8)
    for backend in ("triton", "torch"):
        ln.backend = backend
        with pytest.raises(TypeError, match="out_dtype"):
            ln(torch.randn(3, 8), out_dtype=torch.int32)
    ln.backend = "triton"
    assert "backend='triton'" in repr(ln)
