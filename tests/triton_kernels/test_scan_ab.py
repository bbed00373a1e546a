"""bench/scan_ab.py end to end on a tiny shape (Triton interpreted on CPU): every config gets a row, the first is
the reference (speed 1, error 0), a config that runs the tiled kernels agrees with the default to float32
rounding, a config that fails to launch becomes an error row instead of stopping the sweep, and a malformed config
is refused before anything runs."""
import json
import math

import pytest

from test_bench_speed import load_bench


def _scan_ab():
    return load_bench("scan_ab")


def test_scan_ab_rows(tmp_path, device):
    from m2s2l.ops._backend import interpret_mode
    if device.type != "cpu" or not interpret_mode():
        pytest.skip("a CPU smoke test (TRITON_INTERPRET=1); the GPU runs it as a bench")
    out = tmp_path / "ab.json"
    rows = _scan_ab().main(["--shapes", "", "--dims", "2,8,20", "--modes", "fwdbwd", "--dtype", "fp32",
                            "--cfgs", "tile_bwd=0", "default", "tile_bwd_block_d=3", "--json", str(out)])
    assert [r["cfg"] for r in rows] == ["tile_bwd=0", "default", "tile_bwd_block_d=3"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["err"] == 0.0
    assert math.isfinite(rows[1]["ms"]) and rows[1]["err"] < 1e-5  # default: the tiled backward at 20 steps
    assert "error" in rows[2] and not math.isfinite(rows[2]["ms"])  # a block of 3 channels: no power of two
    assert len(json.load(open(out))["rows"]) == 3
    with pytest.raises(ValueError, match="tile=abc"):
        _scan_ab().main(["--shapes", "", "--dims", "2,8,20", "--cfgs", "tile=abc"])
