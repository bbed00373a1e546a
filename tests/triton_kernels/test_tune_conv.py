"""bench/tune_conv.py --quick on CPU (TRITON_INTERPRET=1): every config it tries runs, matches the default config,
and the summary names a best config per shape and mode."""
import importlib.util
import json
import os
import sys

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "tune_conv.py")


def test_tune_conv_quick(tmp_path, monkeypatch, capsys):
    from m2s2l.triton_kernels.causal_conv1d import conv
    monkeypatch.setattr(conv, "_CFG", dict(conv._CFG))  # the sweep rewrites the launch config in place
    monkeypatch.syspath_prepend(os.path.dirname(_PATH))
    spec = importlib.util.spec_from_file_location("bench_tune_conv", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "tune_conv.json"
    monkeypatch.setattr(sys, "argv", ["tune_conv.py", "--quick", "--json", str(out)])
    mod.main()
    res = json.loads(out.read_text())
    text = capsys.readouterr().out
    assert "DEFAULT WRONG" not in text and "MISMATCH" not in text
    assert [r["status"] for r in res["rows"]] == ["ok"] * 12  # 3 shapes x 2 modes x 2 configs
    cfgs = {(r["shape"], r["cfg"]) for r in res["rows"]}  # the default and what ran before
    assert {("tiny-long", "default"), ("tiny-long", "long=0"), ("tiny-cl", "short_wt=0")} <= cfgs
    shapes = ("tiny-long", "tiny-video", "tiny-cl")
    assert set(res["best"]) == {f"{s}/{m}" for s in shapes for m in ("fwd", "fwdbwd")}
    assert "tiny-long/fwd/F.conv1d" in res["peers"]
    assert conv._CFG == {}  # restored after each stage
