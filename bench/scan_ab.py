"""A/B of selective-scan launch configs in one process: each config's median ms (the launchers alone, as
bench/cases_scan.py's "triton-kern") on each shape and mode, its speed relative to the first config, and its
outputs (and gradients, fwdbwd) against the first config's (relative RMS).

    python bench/scan_ab.py --shapes LM,spatial,temporal8,temporal16 --modes fwd,fwdbwd \
        --cfgs "tile=0" "tile=1" "tile=1,tile_steps=8"

A config is a comma list of M2S2L_SCAN_CFG keys (``scan_config._env_config``), "" or "default" for none; it
replaces ``scan_config._CFG`` in process (what the env variable would do at import). bf16 inputs as bench/speed.py.
The table is printed last; ``--json`` writes the rows.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cases_scan import SHAPES, _inputs, _kernels  # noqa: E402
from common import device_name, rel_rms, time_ms  # noqa: E402

from m2s2l.triton_kernels.selective_scan import scan_config  # noqa: E402


def parse_cfg(text, arg="--cfgs"):
    """"key=int,key=int" -> {key: int}; "" or "default" -> {}. A malformed config is a ValueError naming it and the
    argument ``arg`` it came from (before anything runs)."""
    text = text.strip()
    if text in ("", "default"):
        return {}
    try:
        return {k.strip(): int(v) for k, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
    except ValueError:
        raise ValueError(f"{arg}: {text!r} is not a list of key=int") from None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="LM,spatial,temporal8,temporal16")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--cfgs", nargs="+", default=["default"])
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--dims", default="", help="extra shapes 'b,d,L;b,d,L' (named by their dims)")
    ap.add_argument("--once", action="store_true", help="run each config once, untimed (for ncu)")
    ap.add_argument("--last-only", action="store_true", help="fwd: the last step's output alone (last_only=True, "
                    "as the video model's temporal blocks run it)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    shapes = dict((k.lower(), v) for k, v in SHAPES)
    if device == "cpu":  # interpreter smoke run
        shapes = {k: (2, 8, 40) for k in shapes}
    names = [n.strip().lower() for n in args.shapes.split(",") if n.strip()]
    for d in filter(None, args.dims.split(";")):
        shapes[d] = tuple(int(x) for x in d.split(","))
        names.append(d)
    cfgs = [parse_cfg(c) for c in args.cfgs]
    rows = []
    for name in names:
        shape = shapes[name]
        for mode in args.modes.split(","):
            grad = mode == "fwdbwd"
            ins = _inputs(shape, dtype, device, False)
            dout = torch.randn_like(ins["u"]) if grad else None
            ref, base = None, None
            for cfg, text in zip(cfgs, args.cfgs):
                scan_config._CFG.clear()
                scan_config._CFG.update(cfg)
                run = _kernels(ins, dout, last_only=args.last_only and not grad)
                try:
                    res = run()
                    res = [r for r in (res if isinstance(res, (tuple, list)) else (res,)) if r is not None]
                    err = 0.0 if ref is None else max(rel_rms(a, b) for a, b in zip(res, ref))
                    ref = ref if ref is not None else res
                    ms = float("nan") if args.once else time_ms(run, device, quick=device == "cpu")[0]
                    base = base or ms
                    row = dict(shape=name, dims=list(shape), mode=mode, cfg=text, ms=ms, speedup=base / ms, err=err)
                except Exception as e:  # a config that does not compile or run: reported, the sweep goes on
                    row = dict(shape=name, dims=list(shape), mode=mode, cfg=text, ms=float("nan"), speedup=0.0,
                               err=float("nan"), error=f"{type(e).__name__}: {str(e)[:200]}")
                print(row, flush=True)
                rows.append(row)
    scan_config._CFG.clear()
    print(f"\n{device_name(device)}; bf16 launchers; speed vs the first config of each (shape, mode)")
    print(f"{'shape':<11} {'mode':<7} {'ms':>9} {'speed':>7} {'rel.err':>8}  cfg")
    for r in rows:
        print(f"{r['shape']:<11} {r['mode']:<7} {r['ms']:9.4f} {r['speedup']:6.2f}x {r['err']:8.1e}  {r['cfg']}"
              + (f"  {r['error']}" if "error" in r else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device_name(device), rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
