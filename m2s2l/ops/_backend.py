"""Backend selection and argument checks shared by every public op.

Backends:
  "auto"   Triton for CUDA tensors, the PyTorch reference for CPU tensors
           (or Triton on CPU when TRITON_INTERPRET=1 is set, which is how CI exercises the kernels).
  "triton" the Triton kernels; on CPU tensors only under TRITON_INTERPRET=1.
  "cuda"   the optional compiled extension ``m2s2l._C`` (csrc/).
  "torch"  the PyTorch reference (naive.py).
"""
import importlib
import os

import torch

BACKENDS = ("auto", "triton", "cuda", "torch")


@torch.compiler.assume_constant_result  # torch.compile: evaluated once at trace time, no graph break on import
def triton_available():
    """True when ``import triton`` works (Linux wheels); the package works without it."""
    try:
        importlib.import_module("triton")
        return True
    except Exception:
        return False


def interpret_mode():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cuda_ext():
    """The compiled extension module, or None when it was not built."""
    try:
        return importlib.import_module("m2s2l._C")
    except ImportError:
        return None


def resolve_backend(backend, device):
    """Map a user's backend choice and the tensors' device to one of "triton", "cuda", "torch"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_gpu = device.type == "cuda"
    if backend == "auto":
        if on_gpu and triton_available():
            return "triton"
        if not on_gpu and interpret_mode() and triton_available():
            return "triton"
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the 'triton' package (pip install triton); "
                               "use backend='torch' on this platform")
        if not on_gpu and not interpret_mode():
            raise RuntimeError("backend='triton' on CPU tensors runs only under TRITON_INTERPRET=1 "
                               "(set it before importing triton); use backend='torch' or CUDA tensors")
        return "triton"
    if backend == "cuda":
        if not on_gpu:
            raise RuntimeError("backend='cuda' needs CUDA tensors")
        if cuda_ext() is None:
            raise RuntimeError("backend='cuda' needs the compiled extension m2s2l._C, which is not built: "
                               "reinstall on a machine with nvcc and CUDA torch using "
                               "`M2S2L_BUILD_CUDA=1 pip install -e . --no-build-isolation`")
        return "cuda"
    return "torch"


# ---- eager fast path ------------------------------------------------------------------------------------

def use_custom_op(t):
    """Whether a public op must go through its ``torch.library`` custom op rather than the plain eager path.

    The custom ops exist for the tracers: torch.compile / torch.export (opaque node with a fake kernel), torch.jit
    tracing (fvcore counts one node per op), FakeTensor / meta tensors and dispatch modes (FlopCounterMode).
    In plain eager mode they only cost host time (~100 us a call on the dev box: argument defaulting, dispatch,
    the registered autograd wrapper), which a launch-bound shape (many short sequences, a streamed frame) pays
    on every call; there the same implementation runs directly (forward) or under a torch.autograd.Function
    (the same backward formula)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or t.device.type == "meta"
            or isinstance(t, torch._subclasses.FakeTensor) or _get_current_dispatch_mode() is not None)


def eager_function(fwd_impl, setup_context, backward):
    """A torch.autograd.Function running ``fwd_impl`` with the custom op's ``setup_context`` / ``backward``."""
    class _Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            output = fwd_impl(*inputs)
            setup_context(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)
    _Eager.__name__ = _Eager.__qualname__ = f"Eager_{fwd_impl.__name__}"
    return _Eager


def needs_grad(*tensors):
    """Whether autograd will record a call on these tensors (None entries allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def call_op(op, impl, eager, args, grad):
    """Run a public op's forward: through its custom op ``op`` when ``use_custom_op(args[0])``, else through the
    eager autograd.Function ``eager`` (from ``eager_function``) when ``grad``, else ``impl`` directly."""
    if use_custom_op(args[0]):
        return op(*args)
    return eager.apply(*args) if grad else impl(*args)


# ---- argument checks (called once, at the public boundary) -------------------------------------------

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(name, t, ndim=None, shape=None, dtypes=None, device=None, expected=None):
    """Raise TypeError/ValueError naming ``name`` unless ``t`` is a tensor of the given rank/shape/dtype.

    ``shape`` may contain None for free dimensions; ``expected`` is the human-readable shape string
    used in messages, e.g. "(batch, dim, seqlen)".
    """
    desc = f" {expected}" if expected else ""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{desc}, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{name} must be real; complex tensors are not supported (got {t.dtype})")
    if ndim is not None:
        ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in ndims:
            raise ValueError(f"{name} must have shape{desc} ({' or '.join(map(str, ndims))} dims), "
                             f"got shape {tuple(t.shape)}")
    if shape is not None:
        if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape{desc} = {want}, got {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}; "
                         "all inputs must be on one device")
