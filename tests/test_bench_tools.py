"""The benchmark tools' no-GPU compiler report: ``bench/scan_aot.py``'s SASS step-loop counter (``hot_loop``), on a
small kernel compiled for sm_90 by Triton (a subprocess: the suite runs under TRITON_INTERPRET=1, which cannot
compile)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CODE = r"""
import json, sys
sys.path[:0] = [%(root)r, %(bench)r]
import triton, triton.language as tl
from scan_aot import _aot_compile

@triton.jit
def _k(x_ptr, y_ptr, n, TWO: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(n):
        v = tl.load(x_ptr + i * BLOCK + o)
        acc = acc * tl.exp2(v)
        if TWO:
            acc += tl.exp2(-v)
    tl.store(y_ptr + o, acc)

print(json.dumps([_aot_compile(_k, dict(x_ptr="*fp32", y_ptr="*fp32", n=7), dict(TWO=two, BLOCK=32), 1)[4]
                  for two in (False, True)]))
"""


def test_hot_loop_counts_the_step_loop(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0")
    script = tmp_path / "aot_loop.py"  # @triton.jit needs its source in a file
    script.write_text(_CODE % dict(root=ROOT, bench=os.path.join(ROOT, "bench")))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    if r.returncode != 0 and ("ptxas" in r.stderr or "nvdisasm" in r.stderr or "backend" in r.stderr.lower()):
        pytest.skip(f"no sm_90 compile here: {r.stderr.strip().splitlines()[-1][:200]}")
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = json.loads(r.stdout.strip().splitlines()[-1])
    if not one:
        pytest.skip("Triton's nvdisasm is not bundled here")
    # the loop body may be unrolled (ptxas): one load of v an iteration, one / two exponentials per load
    assert one["loads"] >= 1 and one["ex2"] == one["loads"], one
    assert two["ex2"] == 2 * two["loads"], two
    assert one["bar"] == 0 and one["stores"] == 0 and one["instr"] > one["ex2"] + one["loads"], one
