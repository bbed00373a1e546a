"""Packaging: the kernels import only as ``m2s2l.triton_kernels`` — installed, and from a bare source checkout."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, cwd, *flags):
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_no_top_level_triton_kernels_module(tmp_path):
    """Installing m2s2l must not provide (and so shadow) another distribution's ``triton_kernels``."""
    r = _run("import importlib.util as u; import m2s2l.triton_kernels.selective_scan.naive as n; "
             "print(u.find_spec('triton_kernels') is None, n.__name__)", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "m2s2l.triton_kernels.selective_scan.naive"]


def test_source_checkout_without_install_mapping(tmp_path):
    """``python -S`` skips site-packages (so the editable install's mapping): the source tree alone must do."""
    code = ("import sys; sys.path.insert(0, %r); import importlib.util as u; import m2s2l; "
            "s = u.find_spec('m2s2l.triton_kernels.causal_conv1d.naive'); print(s.origin)") % ROOT
    r = _run(code, str(tmp_path), "-S")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == os.path.join(ROOT, "triton_kernels", "causal_conv1d", "naive.py")


def test_eager_fast_path_and_custom_op_dispatch(monkeypatch):
    """Plain eager calls skip the torch.library custom ops (host overhead only); tracers and dispatch modes get them
    (FlopCounterMode, meta tensors, torch.jit.trace); both routes give the same output and gradients."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import m2s2l.ops.causal_conv1d as cc
    import m2s2l.ops.selective_scan as ss
    from m2s2l.ops import causal_conv1d_fn, selective_scan_fn
    from m2s2l.ops._backend import use_custom_op

    calls = []
    for mod, name in ((ss, "scan"), (cc, "conv")):
        op = mod._fwd
        monkeypatch.setattr(mod, "_fwd", lambda *a, _op=op, _n=name: (calls.append(_n), _op(*a))[1])
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 6, 5, generator=g)
    assert not use_custom_op(u)
    assert use_custom_op(torch.empty(2, 6, 5, device="meta"))
    with FlopCounterMode(display=False):
        assert use_custom_op(u)
    A = -torch.rand(6, 4, generator=g)
    B, C = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    w = torch.randn(6, 4, generator=g)

    def run():
        x = u.clone().requires_grad_()
        y = causal_conv1d_fn(x, w, None, "silu", backend="torch")
        out = selective_scan_fn(y, y.sigmoid(), A, B, C, delta_softplus=True, backend="torch")
        out.square().sum().backward()
        return out.detach(), x.grad

    eager = run()
    assert calls == []                                  # eager: no custom-op dispatch
    with FlopCounterMode(display=False):
        traced = run()
    assert calls == ["conv", "scan"]                    # under a dispatch mode: the custom ops
    torch.testing.assert_close(eager[0], traced[0])
    torch.testing.assert_close(eager[1], traced[1])
    graph = torch.jit.trace(lambda t: selective_scan_fn(t, t.sigmoid(), A, B, C, backend="torch"), (u,)).graph
    assert "m2s2l::selective_scan_fwd" in str(graph)
