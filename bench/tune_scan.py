"""Selective-scan launch-config sweep: ms per config on the bench shapes, checked against the default config.

    python bench/tune_scan.py [--shapes LM,spatial,temporal8,temporal16] [--modes fwd,fwdbwd]
                              [--budget-s 270] [--json PATH] [--quick] [--cseq]
    python bench/tune_scan.py --shapes spatial,LM --modes fwd,fwdbwd --cseq --budget-s 240
    python bench/tune_scan.py --shapes temporal8,temporal16,train64,train128,train256 --modes bwd --budget-s 400
    python bench/tune_scan.py --shapes temporal8,stream64 --modes fwd --layout channel
    python bench/tune_scan.py --aot "" | --aot "fwd_block_d=8,chunk=8"    (no GPU: sm_90 compiler report)

Setup as bench/cases_scan.py (bf16, N = 16, input-dependent B/C (batch, 1, N, L), z, D, delta_bias, softplus);
only the launchers run (no custom-op/autograd dispatch). A config is a dict of ``M2S2L_SCAN_CFG`` keys (see
``scan_config._env_config``: chunk, fwd_block_d, fwd_warps, bwd_block_d, bwd_warps, seq, seq_max_len, seq_block_d,
seq_warps, seq_bwd, seq_bwd_block_d, seq_bwd_warps, seq_bwd_progs_per_sm, seq_bwd_programs, seq_bwd_maxnreg, and the
chunk-parallel sequential scan's cseq, cseq_chunk, cseq_block_d, cseq_warps, cseq_bwd_block_d, cseq_bwd_warps,
cseq_bwd_progs_per_sm) applied in-process by replacing the contents of ``scan_config._CFG`` — what the env variable
would do at import.
Shape names (``--shapes``, case-insensitive): LM, spatial, temporal8, temporal16, train64, train128, train256; an
unknown name is an error.

Stage "bwd" (seqlen <= 32; also the training shapes train64/128/256 = (262144, 64, 4), (65536, 128, 4),
(16384, 256, 4)): the backward launcher alone after one default forward; the default forward's time (chunk states
saved, as in training) for the bwd/fwd ratio, then the default (sequential backward), the chunked backward
(seq_bwd=0), seq_bwd_block_d x seq_bwd_warps, then seq_bwd_progs_per_sm and seq_bwd_maxnreg around the best
tile; every config's gradients are checked against the default's. A summary table (fwd, bwd seq, bwd chunked,
best, ratios, best M2S2L_SCAN_CFG) is printed last.

Stage "fwd" sweeps forward configs (the chunked kernel's chunk/block/warps and the sequential kernel's
block/warps); stage "fwdbwd" keeps the best forward config's forward keys and sweeps the backward's
(chunk, bwd_block_d, bwd_warps), timing forward (saving chunk states) + backward. The second config of each
stage is what the launchers picked before the compiler-report changes (commit 27867ee), for a before/after
ratio from the same run. Every config's outputs are
compared with the default config's (relative RMS per tensor, limit 1e-2 forward / 3e-2 gradients) and the
default's forward with the float32 reference loop on the first two batch rows. Configs run in priority order
until the time budget (split evenly over the shapes) is spent; the rest are listed as skipped. On sequences longer
than 32 steps the cseq configs (``scan_config.cseq_chunk``: the sequential kernels on all (batch row, time chunk,
channel block) programs at once, chunk length x tile x warps; fwdbwd adds the persistent backward's program count) run
right after the default, before the chunked-scan configs; ``--cseq`` keeps only the default and those.
``--quick``: tiny shapes, two configs a stage, on CPU under TRITON_INTERPRET=1 (a smoke test, seconds; with
``--cseq`` the second config is a cseq one).
``--aot CFG``: compile the kernels the launchers would run on the bench shapes for sm_90 (no GPU; launch arguments
captured on meta tensors, integer specialisation mimicked) and print registers (cuobjdump), spill bytes (ptxas -v),
shared memory, resident warps per SM (64K registers, 64 warps), programs and waves over 132 SMs, and PTX counts
of bar.sync/shfl/ld.shared/ex2, and the SASS of the hottest loop (the step loop: instructions, MUFU.EX2, loads,
stores, barriers an iteration; Triton's bundled nvdisasm). Run it without TRITON_INTERPRET (the interpreter picks
other block sizes).
"""
import argparse
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available() and "--aot" not in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# this checkout's m2s2l (and, through it, its triton_kernels/), not an editable install of another worktree
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cases_scan import SHAPES, _chan_inputs, _inputs  # noqa: E402
from common import SWEEP_HEADER, best_of, device_name, rel_rms, time_ms  # noqa: E402
from common import sweep as common_sweep  # noqa: E402
from scan_aot import aot_report, set_cfg  # noqa: E402

from m2s2l.triton_kernels.selective_scan import scan, scan_config  # noqa: E402
from m2s2l.triton_kernels.selective_scan.naive import selective_scan_ref  # noqa: E402

QUICK = [("tiny-long", (1, 4, 40)), ("tiny-video", (2, 4, 8))]  # interpreter cost grows with programs x steps
# the temporal level-0..2 scans of training (batch 16, T = 4): many length-4 sequences
TRAIN_SHAPES = [("train64", (262144, 64, 4)), ("train128", (65536, 128, 4)), ("train256", (16384, 256, 4))]
# the temporal scans of 32 streams scored at once (bench/fps.py --modes batched, m2s2l_paper, T = 4): levels 0-1
STREAM_SHAPES = [("stream64", (524288, 64, 4)), ("stream128", (131072, 128, 4))]
QUICK_CSEQ = dict(cseq=1, cseq_chunk=16)  # --quick --cseq: 3 chunks on tiny-long
QUICK_BWD = [("tiny-video", (3, 8, 8)), ("tiny-train", (5, 4, 4))]
KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
GRAD_NAMES = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias")


SEQ_KERNELS = dict(tile=0, tile_bwd=0)  # the cseq_* tile keys size the sequential kernels, not the tiled ones


def cseq_fwd_candidates():
    """Forward configs of the chunk-parallel sequential scan: chunk length, then tile (channels) x warps. Under cseq
    the launchers run the time-tiled kernels by default (``bench/scan_ab.py`` compares their settings); the
    block / warps configs here run the sequential kernels (tile=0) they size."""
    tiles = ((32, 2), (16, 1), (64, 4), (32, 1), (16, 2))
    return ([dict(cseq=1)] + [dict(cseq=1, cseq_chunk=lc) for lc in (64, 256, 32, 512)]
            + [dict(cseq=1, cseq_chunk=lc, cseq_block_d=bd, cseq_warps=w, **SEQ_KERNELS) for lc in (128, 64, 256)
               for bd, w in tiles])


def cseq_fwdbwd_candidates(best_fwd):
    """Forward + backward configs of the chunk-parallel sequential scan, on the best forward's cseq tile when the
    best forward was a cseq config: chunk length x the persistent backward's programs per SM (the default caps its
    scratch at 32 MiB, which at 128 steps a chunk means about one program per SM), then the backward tile."""
    keep = ("cseq_block_d", "cseq_warps", "tile", "tile_bwd")
    base = {k: v for k, v in best_fwd.items() if k in keep} if best_fwd.get("cseq") else {}
    grid = [dict(cseq_chunk=lc, cseq_bwd_progs_per_sm=p, **(SEQ_KERNELS if p else {}))
            for p in (None, 8, 4, 16) for lc in (128, 64, 32, 256)]
    tiles = [dict(cseq_chunk=64, cseq_bwd_progs_per_sm=8, cseq_bwd_block_d=bd, cseq_bwd_warps=w, **SEQ_KERNELS)
             for bd, w in ((16, 1), (64, 2), (32, 2), (16, 2))]
    return [dict(base, cseq=1, **{k: v for k, v in c.items() if v is not None}) for c in grid + tiles]


def fwd_candidates(L, only_cseq=False):
    """Forward configs in priority order (the default first)."""
    if L > 32 and only_cseq:
        return [{}] + cseq_fwd_candidates()
    if L <= 32:  # the sequential kernel is the default here; its block/warps, and the chunked kernel for contrast
        seq = [dict(seq_block_d=bd, seq_warps=w) for bd in (64, 32, 128, 16) for w in (4, 2, 8, 1)
               if 2 <= bd * 16 // (32 * w) <= 32]
        chunked = [dict(seq=0, fwd_block_d=8, fwd_warps=4), dict(seq=0, fwd_block_d=16, fwd_warps=8)]
        return [{}, dict(seq=0)] + seq + chunked  # seq=0: the launchers at 27867ee
    seq = [dict(seq=1, seq_block_d=bd, seq_warps=w) for bd, w in ((16, 4), (32, 4), (64, 4), (16, 2), (32, 2))]
    chunked = [dict(chunk=tc, fwd_block_d=bd, fwd_warps=w) for tc, bd, w in
               ((16, 8, 4), (16, 4, 4), (16, 16, 8), (16, 8, 8), (8, 8, 4), (8, 16, 8), (8, 4, 2), (16, 4, 2),
                (32, 4, 4), (32, 8, 8), (8, 16, 4), (16, 16, 4))]
    before = [dict(fwd_block_d=16)]  # the launchers at 27867ee (before the grid-fill rule; same on the LM shape)
    return [{}] + cseq_fwd_candidates() + before + seq + chunked


def bwd_candidates(L):
    tcs = (8, 16) if L <= 32 else (16, 8, 32)
    combos = ((4, 4), (8, 4), (2, 2), (4, 2), (8, 8), (16, 8), (2, 4), (16, 4))
    out = []
    for tc in tcs:
        if tc > max(2, triton_pow2(L)):
            continue
        out += [dict(chunk=tc, bwd_block_d=bd, bwd_warps=w) for bd, w in combos]
    return out


def seq_bwd_candidates(stage, best=None):
    """Sequential-backward configs: stage "a" the tile (block_d x warps) at the default program count, stage "b" the
    program count and register cap around stage a's best."""
    if stage == "a":
        return [dict(seq_bwd_block_d=bd, seq_bwd_warps=w) for bd, w in
                ((32, 1), (128, 8), (32, 8), (16, 1), (64, 2), (32, 2), (64, 4), (16, 2), (32, 4), (128, 4),
                 (64, 8), (64, 1), (8, 1))]  # 8 warps: half the barriers (session-6 AOT report)
    best = best or {}
    return ([dict(best, seq_bwd_progs_per_sm=p) for p in (4, 8, 16, 32, 2)]
            + [dict(best, seq_bwd_maxnreg=r) for r in (128, 168, 96)])


def triton_pow2(x):
    return 1 << max(int(x) - 1, 0).bit_length()


def make_runs(ins, dout):
    a = [ins[k] for k in KEYS]
    saved = {}

    def bwd():  # the backward alone; the forward (default config, chunk states saved) runs once
        if not saved:
            cfg = dict(scan_config._CFG)
            set_cfg({})
            saved["hc"] = scan.selective_scan_fwd(*a, None, True, False, True)[2]
            set_cfg(cfg)
        return tuple(scan.selective_scan_bwd(dout, *a, None, saved["hc"], True)[:8])

    def fwd_train():  # the forward as training runs it (chunk states saved), for the bwd / fwd ratio
        return (scan.selective_scan_fwd(*a, None, True, False, True)[0],)

    def fwd():
        return (scan.selective_scan_fwd(*a, None, True, False, False)[0],)

    def fwdbwd():
        out, _, hc = scan.selective_scan_fwd(*a, None, True, False, True)
        return (out,) + tuple(scan.selective_scan_bwd(dout, *a, None, hc, True)[:8])
    return dict(fwd=fwd, fwdbwd=fwdbwd, bwd=bwd, fwd_train=fwd_train)


def check_default_vs_ref(ins):
    """The default config's forward vs the float32 reference loop on the first two batch rows."""
    set_cfg({})
    sl = {k: (v[:2] if k in ("u", "delta", "z") or (k in ("B", "C") and v.dim() > 2) else v) for k, v in ins.items()}
    a = [sl[k].contiguous() for k in KEYS]
    out = scan.selective_scan_fwd(*a, None, True, False, False)[0]
    ref = selective_scan_ref(*[x.float() for x in a], True)
    ref = ref[0] if isinstance(ref, tuple) else ref
    return rel_rms(out.float(), ref)


def sweep(name, shape, mode, cands, runs, budget_end, device):
    """``common.sweep`` of ``runs[mode]`` (limits: relative RMS 1e-2 output, 3e-2 gradients)."""
    def timer(fn):
        return time_ms(fn, device, once=device == "cpu", quick=True)[0]
    return common_sweep(name, shape, mode, cands, runs[mode], set_cfg, timer, budget_end, limits=(1e-2, 3e-2))


def bwd_stage(name, shape, runs, end, quick, device, all_rows):
    """Backward alone (``--modes bwd``, seqlen <= 32): the forward's time (default config, states saved) for the
    ratio, then the default (sequential backward), the chunked backward (seq_bwd=0), the tile sweep and the
    program-count / register-cap sweep around its best. Returns the summary row."""
    fwd = sweep(name, shape, "fwd_train", [{}], runs, end, device)
    a = [{}, dict(seq_bwd=0)] + seq_bwd_candidates("a")
    a = [c for i, c in enumerate(a) if c not in a[:i]][: 3 if quick else None]
    rows_a = sweep(name, shape, "bwd", a, runs, end, device)
    best_a = best_of([r for r in rows_a if r["cfg_dict"].get("seq_bwd", 1)]) or rows_a[0]
    b = seq_bwd_candidates("b", best_a.get("cfg_dict"))[: 1 if quick else None]
    rows_b = sweep(name, shape, "bwd", [{}] + b, runs, end, device)[1:]  # {} again: the error reference
    all_rows.extend(fwd + rows_a + rows_b)
    ok = lambda r: r.get("status") == "ok"  # noqa: E731
    best = best_of([r for r in rows_a + rows_b if r["cfg_dict"].get("seq_bwd", 1)])
    return dict(shape=name, dims=list(shape), fwd_ms=fwd[0].get("ms") if ok(fwd[0]) else None,
                seq_ms=rows_a[0].get("ms") if ok(rows_a[0]) else None,
                chunked_ms=rows_a[1].get("ms") if len(rows_a) > 1 and ok(rows_a[1]) else None,
                best_ms=best["ms"] if best else None, best_cfg=best["cfg"] if best else None)


def print_bwd_summary(summary):
    """The last table: backward ms (default = sequential, chunked, best sequential config) and backward / forward."""
    f = lambda x: f"{x:9.4f}" if isinstance(x, float) else "      -  "  # noqa: E731
    r = lambda a, b: f"{a / b:6.2f}x" if isinstance(a, float) and isinstance(b, float) and b else "     - "  # noqa
    print("\n# backward alone (launchers), ms p50; bwd/fwd = backward over the default forward (states saved)")
    print(f"{'shape':<11} {'dims':<18} {'fwd':>9} {'bwd seq':>9} {'bwd chunk':>9} {'bwd best':>9} "
          f"{'seq/fwd':>7} {'best/fwd':>8} {'chunk/seq':>9}  best config")
    for s in summary:
        print(f"{s['shape']:<11} {str(tuple(s['dims'])):<18} {f(s['fwd_ms'])} {f(s['seq_ms'])} {f(s['chunked_ms'])} "
              f"{f(s['best_ms'])} {r(s['seq_ms'], s['fwd_ms'])} {r(s['best_ms'], s['fwd_ms']):>8} "
              f"{r(s['chunked_ms'], s['seq_ms']):>9}  M2S2L_SCAN_CFG=\"{s['best_cfg'] or ''}\"")


def pick_shapes(arg):
    """The (name, shape) pairs named in ``arg`` (comma-separated, case-insensitive); SystemExit on an unknown name."""
    known = {n.lower(): (n, s) for n, s in SHAPES + TRAIN_SHAPES + STREAM_SHAPES}
    names = [x.strip().lower() for x in arg.split(",") if x.strip()]
    bad = [x for x in names if x not in known]
    if bad or not names:
        sys.exit(f"--shapes: unknown {bad or arg!r}; known: "
                 f"{', '.join(n for n, _ in SHAPES + TRAIN_SHAPES + STREAM_SHAPES)}")
    return [known[x] for x in dict.fromkeys(names)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="LM,spatial,temporal8,temporal16")
    ap.add_argument("--modes", default="fwd,fwdbwd")
    ap.add_argument("--budget-s", type=float, default=270.0, help="wall-clock budget for all sweeps")
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "tune_scan.json"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 configs a stage (CPU smoke test)")
    ap.add_argument("--cseq", action="store_true",
                    help="sequences > 32 steps: only the default and the chunk-parallel sequential scan configs")
    ap.add_argument("--layout", choices=("time", "channel"), default="time",
                    help="u/delta/z seqlen-contiguous (mamba-ssm's layout) or channel-contiguous (Mamba.layout "
                         "'channel', what the model runs at <= 32 steps)")
    ap.add_argument("--aot", default=None, metavar="CFG",
                    help="no GPU needed: compile what the launchers pick under CFG ('' = defaults, else "
                         "M2S2L_SCAN_CFG syntax) for sm_90 and print registers/spills/occupancy; no timing")
    args = ap.parse_args()
    if args.aot is not None:
        cfg = {k.strip(): int(v) for k, v in (i.split("=", 1) for i in args.aot.split(",") if "=" in i)}
        if scan._INTERPRET:
            sys.exit("--aot: unset TRITON_INTERPRET (the interpreter picks other block sizes and cannot compile)")
        rows = aot_report(pick_shapes(args.shapes), cfg)
        with open(args.json, "w") as f:
            json.dump(dict(aot_cfg=args.aot, rows=rows), f, indent=1)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    shapes = QUICK if args.quick else pick_shapes(args.shapes)
    modes = args.modes.split(",")
    print(f"# device {device_name(device)}, torch {torch.__version__}, env M2S2L_SCAN_CFG="
          f"{os.environ.get('M2S2L_SCAN_CFG', '')!r} (ignored: configs are set in-process)")
    print(SWEEP_HEADER)
    all_rows, best, summary = [], {}, []
    for si, (name, shape) in enumerate(shapes):
        share = (args.budget_s - (time.time() - t0)) / (len(shapes) - si)
        ins = _inputs(shape, torch.bfloat16, device, grad=False)
        if args.layout == "channel":
            ins = _chan_inputs(ins)
        dout = torch.randn(shape, device=device, dtype=torch.float32).to(torch.bfloat16)
        ref_err = check_default_vs_ref(ins)
        print(f"# {name} {shape}: default forward vs float32 reference (2 rows): rel RMS {ref_err:.2e}"
              + ("" if ref_err < 1.5e-2 else "  <-- DEFAULT WRONG"))
        runs = make_runs(ins, dout)
        L = shape[2]
        t_shape = time.time()
        best_fwd = {}
        if "bwd" in modes and L <= 32:
            bshare = share * (0.5 if ("fwd" in modes or "fwdbwd" in modes) else 1.0)
            summary.append(bwd_stage(name, shape, runs, t_shape + bshare, args.quick, device, all_rows))
            t_shape, share = time.time(), share - (time.time() - t_shape)
        if "fwd" in modes:
            fcands = fwd_candidates(L, args.cseq)[: 2 if args.quick else None]
            if args.quick and args.cseq and L > 32:
                fcands = [{}, QUICK_CSEQ]
            end = t_shape + share * (0.45 if "fwdbwd" in modes else 1.0)
            rows = sweep(name, shape, "fwd", fcands, runs, end, device)
            all_rows += rows
            b = best_of(rows)
            if b:
                best[f"{name}/fwd"] = b
                best_fwd = b["cfg_dict"]
        if "fwdbwd" in modes:  # the true default first (the reference and baseline), then best forward + backward
            before = dict(fwd_block_d=16, bwd_block_d=8) if L > 32 else dict(seq=0)  # launchers at 27867ee
            if best_fwd.get("cseq"):  # the chunked backward's keys mean nothing to a cseq forward
                bc = [{}] + cseq_fwdbwd_candidates(best_fwd) + [before]
            elif L > 32 and args.cseq:
                bc = [{}] + cseq_fwdbwd_candidates({})
            else:
                bc = [{}, before, best_fwd] + (cseq_fwdbwd_candidates({}) if L > 32 else []) + [
                    dict(best_fwd, **c) for c in bwd_candidates(L)]
            bc = [c for i, c in enumerate(bc) if c not in bc[:i]][: 2 if args.quick else None]
            if args.quick and args.cseq and L > 32:
                bc = [{}, QUICK_CSEQ]
            rows = sweep(name, shape, "fwdbwd", bc, runs, t_shape + share, device)
            all_rows += rows
            b = best_of(rows)
            if b:
                best[f"{name}/fwdbwd"] = b
        del ins, dout, runs
    print("\n# best config per shape/mode (ms, speed-up over the default config)")
    for k, r in best.items():
        env = r["cfg"] if r["cfg"] != "default" else ""
        print(f"{k:<20} {r['ms']:9.4f} {r.get('speedup') or 1.0:6.2f}x  M2S2L_SCAN_CFG=\"{env}\"")
    if summary:
        print_bwd_summary(summary)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(device=device_name(device), torch=torch.__version__, rows=all_rows, bwd_summary=summary,
                       best={k: v["cfg"] for k, v in best.items()}, wall_s=time.time() - t0), f, indent=1)
    print(f"# wrote {args.json} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
