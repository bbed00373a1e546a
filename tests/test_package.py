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
