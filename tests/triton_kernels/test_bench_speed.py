"""bench/speed.py end to end (--quick; Triton interpreted on CPU, CUDA tensors on the GPU suite): the case/impl
filters keep what was asked, the rows carry finite timings, and --profile prints the kept runs' profiles."""
import importlib.util
import json
import math
import os

import pytest


def load_bench(name):
    """bench/<name>.py as a module (bench/ is not a package)."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "bench", name + ".py")
    spec = importlib.util.spec_from_file_location("bench_" + name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _speed():
    return load_bench("speed")


def test_filters_and_profile(tmp_path, device, capsys):
    from m2s2l.ops._backend import interpret_mode
    if device.type == "cpu" and not interpret_mode():
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    out = tmp_path / "speed.json"
    rows = _speed().main(["--ops", "scan", "--quick", "--dtypes", "fp32", "--modes", "fwd", "--cases", "tiny-video",
                          "--impls", "triton", "--profile", "1", "--device", str(device), "--json", str(out)])
    # the peer (mamba-ssm, when importable) is kept for the ratio; nothing else
    assert [(r["case"], r["impl"]) for r in rows if r["impl"] != "mamba-ssm"] == [("tiny-video", "triton")]
    assert rows[0]["error"] is None and math.isfinite(rows[0]["ms_p50"]) and rows[0]["ms_p50"] > 0
    assert json.load(open(out))["rows"][0]["impl"] == "triton"
    printed = capsys.readouterr().out
    assert printed.count("## profile, scan tiny-video") == 1 and "Self CPU" in printed
