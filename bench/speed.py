"""Kernel speed: m2s2l's ops vs the PyTorch reference and the peers (mamba-ssm, causal-conv1d) when importable.

    python bench/speed.py [--ops scan,conv,mamba] [--modes fwd,fwdbwd] [--dtypes bf16,fp32] [--quick] [--json PATH]
                          [--cases LM,spatial] [--impls triton,mamba-ssm] [--profile N]

Each op's cases come from ``bench/cases_<op>.py`` (``cases(device, dtypes, modes, quick) -> list[Case]``); an
op whose module is missing is skipped. Prints one row per (case, impl): ms p50/p20/p80, GB/s (ideal bytes /
p50), % of floor (floor / p50) and the speed-up over the peer (peer p50 / p50). ``--quick`` uses tiny shapes
(seconds on CPU: a smoke test, not a measurement). The JSON holds every row, the device and the copy bandwidth.
``--cases`` / ``--impls`` keep only those case names / implementations; ``--profile N`` then runs each kept
(case, impl) N more times under torch.profiler and prints its kernels by device time (CPU time on CPU): where a
fwd+bwd goes (e.g. the scan's forward passes, chunk combines and backward kernels on the long shapes).
"""
import argparse
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth, device_name, finish_floor, profile, time_ms, write_json  # noqa: E402


def load_cases(op, device, dtypes, modes, quick):
    try:
        mod = importlib.import_module(f"cases_{op}")
    except ModuleNotFoundError as e:
        if e.name == f"cases_{op}":
            print(f"# skipping op {op!r}: bench/cases_{op}.py not found")
            return []
        raise
    return mod.cases(device, dtypes, modes, quick)


def run_case(case, device, quick, impls=None, n_profile=0):
    rows = []
    for impl, fn in case.impls.items():
        if impls and impl not in impls and impl != case.peer:
            continue
        try:
            p50, p20, p80 = time_ms(fn, device, once=impl in case.once, quick=quick)
            err = None
        except Exception as e:  # a failing impl is reported, not fatal
            p50 = p20 = p80 = float("nan")
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        rows.append(dict(op=case.op, case=case.name, shape=case.shape, dtype=case.dtype, mode=case.mode, impl=impl,
                         ms_p50=p50, ms_p20=p20, ms_p80=p80, bytes=case.bytes, exps=case.exps,
                         gbps=case.bytes / (p50 * 1e-3) / 1e9, floor_ms=case.floor_ms,
                         pct_floor=100.0 * case.floor_ms / p50, timed_once=impl in case.once, error=err))
        if n_profile and err is None and impl not in case.once and (not impls or impl in impls):
            profile(fn, device, n_profile, f"{case.op} {case.name} {case.shape} {case.dtype} {case.mode} {impl}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peer = next((r for r in rows if r["impl"] == case.peer), None)
    for r in rows:
        r["vs_peer"] = peer["ms_p50"] / r["ms_p50"] if peer is not None else None
    return rows


def fmt(r):
    vs = f"{r['vs_peer']:.2f}x" if r["vs_peer"] is not None else "-"
    once = "*" if r["timed_once"] else " "
    line = (f"{r['op']:5s} {r['case']:11s} {r['shape']:24s} {r['dtype']:4s} {r['mode']:6s} {r['impl']:12s}"
            f"{r['ms_p50']:10.3f}{once}{r['ms_p20']:9.3f}{r['ms_p80']:9.3f}{r['gbps']:9.1f}"
            f"{r['floor_ms']:9.3f}{r['pct_floor']:8.1f}% {vs:>8s}")
    return line + (f"  [{r['error']}]" if r["error"] else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="scan,conv,mamba")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--dtypes", default="bf16,fp32")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions (smoke test)")
    ap.add_argument("--json", default=None, help="write every row here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cases", default="", help="comma-separated case names to keep (default: all)")
    ap.add_argument("--impls", default="", help="comma-separated implementations to keep (the peer is always timed "
                                                "for the ratio; default: all)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after timing, profile N calls of each kept (case, impl) and print its kernels")
    args = ap.parse_args(argv)
    keep_cases = {c for c in args.cases.split(",") if c}
    impls = {i for i in args.impls.split(",") if i}
    device = torch.device(args.device)
    modes = [m for m in args.modes.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [m for m in modes if m not in ("fwd", "fwdbwd")] + [d for d in dtypes if d not in ("bf16", "fp16", "fp32")]
    if bad:
        ap.error(f"unknown mode/dtype {bad}")
    bw = copy_bandwidth(device, quick=args.quick)
    name = device_name(device)
    print(f"# device: {name}; copy bandwidth {bw / 1e9:.0f} GB/s (read + write); torch {torch.__version__}")
    print(f"{'op':5s} {'case':11s} {'shape':24s} {'dt':4s} {'mode':6s} {'impl':12s}{'p50 ms':>10s} {'p20':>8s}"
          f"{'p80':>9s}{'GB/s':>9s}{'floor':>9s}{'%floor':>9s} {'vs peer':>8s}")
    rows = []
    for op in [o for o in args.ops.split(",") if o]:
        for case in load_cases(op, device, dtypes, modes, args.quick):
            if keep_cases and case.name not in keep_cases:
                continue
            finish_floor(case, bw)
            for r in run_case(case, device, args.quick, impls, args.profile):
                print(fmt(r), flush=True)
                rows.append(r)
    print("# * = timed with a single call (slow reference); vs peer = peer p50 / p50 (higher is faster)")
    if args.json:
        write_json(args.json, name, bw, rows)
    return rows


if __name__ == "__main__":
    main()
