"""Causal conv1d launch-config sweep: ms per config on the bench shapes, checked against the default config.

    python bench/tune_conv.py [--shapes long,video,video4,xlong,long-cl] [--modes fwd,fwdbwd] [--budget-s 170]
                              [--json PATH] [--quick]

Setup as bench/cases_conv.py: bf16, width 4, SiLU, bias; contiguous x except long-cl (channel-last,
(batch, seqlen, dim).transpose(1, 2)). Only the launchers run (``conv.causal_conv1d_fwd`` / ``causal_conv1d_bwd``,
no custom-op/autograd dispatch). A config is a dict of ``M2S2L_CONV_CFG`` keys (see ``conv._env_config``) applied
in-process by replacing ``conv._CFG``, which is what the env variable does at import. Stage "fwd" sweeps the
forward keys of the path the shape takes (long path: fwd_block_l/fwd_block_d/fwd_warps, bwd_t_iters; tile path:
short_fwd_tile/short_fwd_warps, + short_block_t on channel-last); stage "fwdbwd" keeps the best forward config and
sweeps the backward keys, timing forward + backward. Each stage also runs what ran before this change (long=0 on
long shapes: the tile kernels; short_wt=0 on channel-last: scalar per-channel tap loads) for a before/after ratio
from the same run. Every config's outputs are compared with the default config's (relative RMS, limit 1e-2), and
the default forward with F.conv1d in float32. Peers (F.conv1d; causal-conv1d's causal_conv1d_fn when it imports)
are timed once per shape and mode. Timing: ``triton.testing.do_bench`` median, its window sized for >= 50 calls.
Configs run in priority order until the time budget (split evenly over the shapes) is spent; the rest are listed
as skipped. ``--quick``: tiny shapes, two configs a stage, on CPU under TRITON_INTERPRET=1 (smoke test).
"""
import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cases_conv import WIDTH, _inputs, _oracle, _peer  # noqa: E402
from common import SWEEP_HEADER, best_of, device_name, rel_rms  # noqa: E402
from common import sweep as common_sweep  # noqa: E402

from m2s2l.triton_kernels.causal_conv1d import conv  # noqa: E402

SHAPES = [("long", (8, 4096, 2048)), ("video", (16384, 128, 8)), ("video4", (262144, 64, 4)),
          ("xlong", (4, 2048, 16384)), ("long-cl", (8, 4096, 2048))]
QUICK = [("tiny-long", (1, 2, 128)), ("tiny-video", (4, 4, 8)), ("tiny-cl", (1, 8, 16))]  # interpreter: ~ programs
CHANNEL_LAST = ("long-cl", "tiny-cl")  # x = (batch, seqlen, dim).transpose(1, 2), as a Mamba block makes it


def set_cfg(cfg):
    conv._CFG.clear()
    conv._CFG.update(cfg)


def _per_thread(block_l, block_d, warps, lo, hi):
    return lo <= block_l * block_d // (32 * warps) <= hi


def fwd_candidates(kind):
    """Forward configs in priority order: the default first, then what ran before (long path: long=0, the tile
    kernels; channel-last: short_wt=0, per-channel scalar tap loads), then the sweep."""
    if kind == "long":
        c = [dict(fwd_block_l=bl, fwd_block_d=bd, fwd_warps=w)
             for bl, bd, w in ((1024, 2, 4), (2048, 1, 4), (512, 4, 4), (1024, 1, 4), (2048, 2, 8), (1024, 4, 8),
                               (512, 2, 4), (1024, 2, 2), (512, 1, 2), (2048, 1, 8), (256, 4, 2), (2048, 4, 8),
                               (1024, 1, 2), (512, 8, 8))
             if _per_thread(bl, bd, w, 4, 64)]
        return [{}, dict(long=0)] + c
    if kind == "cl":
        return [{}, dict(short_wt=0)] + [dict(short_fwd_tile=t, short_block_t=bt, short_fwd_warps=w) for t, bt, w in
                                         ((2048, 16, 4), (4096, 32, 8), (2048, 8, 8), (4096, 16, 8), (1024, 8, 4),
                                          (2048, 32, 4), (8192, 32, 8), (1024, 16, 2))]
    return [{}] + [dict(short_fwd_tile=t, short_fwd_warps=w) for t, w in
                   ((2048, 4), (4096, 8), (1024, 4), (4096, 4), (8192, 8), (1024, 2), (2048, 2), (512, 2))]


def bwd_candidates(kind):
    if kind == "long":
        c = [dict(bwd_block_l=bl, bwd_block_d=bd, bwd_warps=w)
             for bl, bd, w in ((512, 2, 4), (1024, 1, 4), (256, 4, 4), (1024, 2, 4), (2048, 1, 4), (512, 1, 2),
                               (1024, 2, 8), (2048, 2, 8), (256, 2, 2), (512, 4, 8), (256, 1, 1), (1024, 1, 2))
             if _per_thread(bl, bd, w, 4, 32)]
        return c[:2] + [dict(bwd_t_iters=1), dict(bwd_t_iters=2), dict(c[1], bwd_t_iters=1)] + c[2:]
    if kind == "cl":
        return [dict(short_bwd_tile=t, short_block_t=bt, short_bwd_warps=w) for t, bt, w in
                ((512, 16, 4), (1024, 16, 4), (512, 8, 2), (1024, 32, 8), (256, 8, 2), (2048, 16, 8))]
    return [dict(short_bwd_tile=t, short_bwd_warps=w) for t, w in
            ((512, 4), (256, 2), (1024, 4), (512, 2), (256, 4), (1024, 8), (2048, 8), (128, 2))]


def make_runs(x, w, b, dout):
    def fwd():
        return (conv.causal_conv1d_fwd(x, w, b, None, "silu", False)[0],)

    def fwdbwd():
        out = conv.causal_conv1d_fwd(x, w, b, None, "silu", False)[0]
        return (out,) + tuple(conv.causal_conv1d_bwd(x, w, b, None, dout, None, "silu")[:3])
    return dict(fwd=fwd, fwdbwd=fwdbwd)


def peer_runs(x, w, b, dout):
    """name -> {mode: fn} for F.conv1d and causal-conv1d (autograd for fwdbwd)."""
    out = {}
    for name, fn in (("F.conv1d", _oracle), ("causal-conv1d", _peer())):
        if fn is None:
            continue
        xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))

        def f(fn=fn):
            with torch.no_grad():
                return fn(x, w, b, activation="silu")

        def fb(fn=fn, xs=xs, ws=ws, bs=bs):
            return torch.autograd.grad(fn(xs, ws, bs, activation="silu"), (xs, ws, bs), dout)
        out[name] = dict(fwd=f, fwdbwd=fb)
    return out


def time_ms(fn, device):
    """Median ms: do_bench on a GPU with a window of >= ~60 calls; one timed call on CPU."""
    if device == "cuda":
        fn()  # compile / warm up
        import triton.testing
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        est = (time.perf_counter() - t0) * 1e3
        return float(triton.testing.do_bench(fn, warmup=max(5.0, 5 * est), rep=max(25.0, 60 * est),
                                             quantiles=[0.5, 0.2, 0.8])[0])
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def sweep(name, shape, mode, cands, runs, budget_end, device):
    """``common.sweep`` of ``runs[mode]`` (limit: relative RMS 1e-2 on every tensor); the first two configs (the
    default and the "before" row) always run."""
    return common_sweep(name, shape, mode, cands, runs[mode], set_cfg, lambda fn: time_ms(fn, device), budget_end,
                        always=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(n for n, _ in SHAPES))
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--budget-s", type=float, default=170.0, help="wall-clock budget for the config sweeps")
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "tune_conv.json"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 configs a stage (CPU smoke test)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    shapes = QUICK if args.quick else [s for s in SHAPES if s[0] in args.shapes.split(",")]
    modes = args.modes.split(",")
    print(f"# device {device_name(device)}, torch {torch.__version__}, env M2S2L_CONV_CFG="
          f"{os.environ.get('M2S2L_CONV_CFG', '')!r} (ignored: configs are set in-process)")
    print(SWEEP_HEADER)
    all_rows, best, peers = [], {}, {}
    for si, (name, shape) in enumerate(shapes):
        share = (args.budget_s - (time.time() - t0)) / (len(shapes) - si)
        x, w, b = _inputs(shape, torch.bfloat16, device, grad=False, channel_last=name in CHANNEL_LAST)
        dout = torch.randn(shape, device=device).to(torch.bfloat16)
        set_cfg({})
        long = conv._use_long(x)
        kind = "long" if long else ("cl" if name in CHANNEL_LAST else "tile")
        out = conv.causal_conv1d_fwd(x[:2], w, b, None, "silu", False)[0]
        ref_err = rel_rms(out.float(), _oracle(x[:2].float(), w.float(), b.float(), "silu"))
        print(f"# {name} {shape} ({kind} path): default forward vs F.conv1d float32 "
              f"(2 rows): rel RMS {ref_err:.2e}" + ("" if ref_err < 1e-2 else "  <-- DEFAULT WRONG"))
        runs = make_runs(x, w, b, dout)
        t_shape = time.time()
        best_fwd = {}
        if "fwd" in modes:
            fc = fwd_candidates(kind)[: 2 if args.quick else None]
            rows = sweep(name, shape, "fwd", fc, runs, t_shape + share * (0.4 if "fwdbwd" in modes else 0.85), device)
            all_rows += rows
            bst = best_of(rows)
            if bst:
                best[f"{name}/fwd"] = bst
                best_fwd = {k: v for k, v in bst["cfg_dict"].items() if k not in ("long", "short_wt")}
        if "fwdbwd" in modes:
            before = [dict(long=0)] if kind == "long" else ([dict(short_wt=0)] if kind == "cl" else [])
            bc = [{}] + before + [best_fwd] + [dict(best_fwd, **c) for c in bwd_candidates(kind)]
            bc = [c for i, c in enumerate(bc) if c not in bc[:i]][: 2 if args.quick else None]
            rows = sweep(name, shape, "fwdbwd", bc, runs, t_shape + share * 0.85, device)
            all_rows += rows
            bst = best_of(rows)
            if bst:
                best[f"{name}/fwdbwd"] = bst
        for pname, fns in peer_runs(x, w, b, dout).items():  # peers last: they may be slow (video fwdbwd)
            for mode in modes:
                if pname == "F.conv1d" and device == "cpu" and shape[0] * shape[1] * shape[2] > 1 << 16:
                    continue
                try:
                    peers[f"{name}/{mode}/{pname}"] = time_ms(fns[mode], device)
                except Exception as e:  # a peer that fails is reported, not fatal
                    print(f"# {pname} {name} {mode}: {type(e).__name__}: {str(e)[:100]}")
        del x, w, b, dout, runs
    print("\n# best config per shape/mode vs the default config and the peers (ms, median)")
    print(f"{'shape/mode':<16} {'default':>8} {'before':>8} {'best':>8} {'GB/s':>6} {'F.conv1d':>9} {'c-conv1d':>9}"
          f" {'best/peer':>9}  best config")
    for key, r in best.items():
        name, mode = key.split("/")
        rows = [x for x in all_rows if x["shape"] == name and x["mode"] == mode and x.get("status") == "ok"]
        d = next((x["ms"] for x in rows if x["cfg"] == "default"), float("nan"))
        other = next((x["ms"] for x in rows if x["cfg"] in ("long=0", "short_wt=0")), float("nan"))
        fc, cc = peers.get(f"{key}/F.conv1d", float("nan")), peers.get(f"{key}/causal-conv1d", float("nan"))
        env = r["cfg"] if r["cfg"] != "default" else ""
        io = 2 * r["dims"][0] * r["dims"][1] * r["dims"][2]  # bytes of one bf16 tensor
        gbs = (2 if mode == "fwd" else 5) * io / (r["ms"] * 1e6)  # ideal bytes: x + out (fwd); + x, dout, dx (bwd)
        print(f"{key:<16} {d:8.4f} {other:8.4f} {r['ms']:8.4f} {gbs:6.0f} {fc:9.4f} {cc:9.4f} {r['ms'] / cc:8.2f}x"
              f"  M2S2L_CONV_CFG=\"{env}\"")
    print("# before = what ran before this change (long=0: the tile kernels; short_wt=0: scalar tap loads on "
          "channel-last x); nan where the default path is unchanged")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(device=device_name(device), torch=torch.__version__, width=WIDTH, rows=all_rows,
                       peers=peers, best={k: v["cfg"] for k, v in best.items()}, wall_s=time.time() - t0), f, indent=1)
    print(f"# wrote {args.json} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
