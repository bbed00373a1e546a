"""Parameters cast to the autocast dtype once per parameter version, for inference.

Under autocast every use of a float32 weight by a GEMM is a cast kernel; autocast's own cache keeps the casts only
for the duration of one autocast region and only for leaf tensors that require grad, so a scoring step -- one region
a call, replayed as a CUDA graph -- casts each weight (and each slice of one, e.g. in_proj's x and gate halves) again
on every call: ~44 small kernels a step of m2s2l_paper, several of them at the head of a branch's critical path.
``autocast_param(owner, name, t)`` returns ``t`` cast to the current autocast dtype from a cache on ``owner``
(refreshed when ``t`` changes in place or moves: its version counter and data pointer are checked), and ``t`` itself
outside autocast, where gradients flow into it, or while tracing / compiling. Same values as autocast's cast (one
rounding of ``t``). Module attribute ``enabled``: off by default until timed on a GPU (written in session 21 after
its last device call; CPU-tested only); ``bench/fps.py --cast-cache`` turns it on for an A/B.
"""
import torch

enabled = False


def autocast_param(owner, name, t):
    """``t`` (a parameter or buffer of ``owner``, or None) as the GEMMs under the current autocast region read it."""
    if t is None or not enabled:
        return t
    dev = t.device.type
    if not torch.is_autocast_enabled(dev) or not t.is_floating_point():
        return t
    if (t.requires_grad and torch.is_grad_enabled()) or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return t
    dt = torch.get_autocast_dtype(dev)
    if t.dtype == dt:
        return t
    cache = owner.__dict__.get("_autocast_params")
    if cache is None:
        cache = owner.__dict__["_autocast_params"] = {}
    key = (t.data_ptr(), t.device, t._version)
    hit = cache.get((name, dt))
    if hit is None or hit[0] != key:
        with torch.no_grad():
            hit = cache[(name, dt)] = (key, t.detach().to(dt))
    return hit[1]
