"""Shared benchmark plumbing: the Case record, timing, the copy-bandwidth floor, and the launch-config sweep
harness of ``tune_scan.py`` / ``tune_conv.py`` (``sweep``, ``fmt_row``, ``best_of``), and ``profile`` (kernels of a
callable under torch.profiler: ``fps.py``, ``speed.py``).

A ``Case`` is one (op, shape, dtype, mode) with one zero-argument callable per implementation. Timing on a GPU
uses ``triton.testing.do_bench`` quantiles [0.5, 0.2, 0.8] (ms); implementations listed in ``Case.once`` (slow
references) are run once to warm up and timed once. On CPU a plain timer loop is used.
Floor = max(bytes moved / measured device-to-device copy bandwidth, exp count / EXP_RATE).
"""
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Set

import torch

EXP_RATE = 4.2e12  # special-function (exp2) results per second, H100/H200 class (see shared/peers/ANCHORS.md)


@dataclass
class Case:
    op: str                                # "scan", "conv", "mamba"
    name: str                              # e.g. "LM"
    shape: str                             # e.g. "(8, 2048, 2048) N=16"
    dtype: str                             # "bf16" | "fp16" | "fp32"
    mode: str                              # "fwd" | "fwdbwd"
    impls: Dict[str, Callable[[], object]]  # implementation name -> one iteration
    bytes: int                             # bytes read + written by an ideal implementation
    exps: int = 0                          # exponentials an ideal implementation evaluates
    peer: Optional[str] = None             # the impl the "vs peer" column compares against
    once: Set[str] = field(default_factory=set)  # impls too slow for do_bench: timed with one call
    floor_ms: float = 0.0                  # filled by finish_floor()


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, once=False, quick=False):
    """(p50, p20, p80) in milliseconds."""
    if torch.device(device).type == "cuda" and not once:
        import triton.testing
        rep, warm = (20, 5) if quick else (100, 25)
        return tuple(triton.testing.do_bench(fn, warmup=warm, rep=rep, quantiles=[0.5, 0.2, 0.8]))
    fn()  # warm-up (compilation, allocator)
    sync(device)
    n = 1 if once else (3 if quick else 10)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append((time.perf_counter() - t0) * 1e3)
    q = torch.tensor(ts, dtype=torch.float64).quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return tuple(float(x) for x in q)


def copy_bandwidth(device, quick=False):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read + written."""
    n = (1 << 22) if (quick or torch.device(device).type != "cuda") else (1 << 28)
    x = torch.empty(n, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), device, quick=quick)[0]
    return 2 * n / (ms * 1e-3)


def finish_floor(case, copy_bw):
    case.floor_ms = max(case.bytes / copy_bw, case.exps / EXP_RATE) * 1e3
    return case


def device_name(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    import platform
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def optional_attr(module, attr):
    """``module.attr`` when the module imports (a peer built on this machine), else None."""
    try:
        return getattr(__import__(module, fromlist=[attr]), attr)
    except Exception:
        return None


# ---- launch-config sweeps (tune_scan.py, tune_conv.py) --------------------------------------------------------

SWEEP_HEADER = f"{'shape':<11} {'mode':<7} {'ms p50':>9} {'vs def':>7} {'err out/grad':<17} {'status':<10} config"


def case_grid(shapes, quick_shapes, dtypes, modes, on_gpu, quick):
    """(name, shape, dtype key, mode, grad) for every bench case of an op: the quick shapes on CPU or with --quick;
    grad = the mode is "fwdbwd"."""
    for name, shape in (quick_shapes if quick or not on_gpu else shapes):
        for dt in dtypes:
            for mode in modes:
                yield name, shape, dt, mode, mode == "fwdbwd"


def cfg_str(cfg):
    """A launch config {key: int} in the env-variable syntax "key=v,..." ("default" when empty)."""
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "default"


def rel_rms(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def fmt_row(r):
    """One sweep row as a line under ``SWEEP_HEADER``."""
    ms = r.get("ms")
    ms_s = f"{ms:9.4f}" if isinstance(ms, float) and ms == ms else "      -  "
    sp = r.get("speedup")
    sp_s = f"{sp:6.2f}x" if sp else "     - "
    err = f"{r.get('err_out', float('nan')):.1e}/{r.get('err_grad', float('nan')):.1e}"
    return f"{r['shape']:<11} {r['mode']:<7} {ms_s} {sp_s} {err:<17} {r['status']:<10} {r['cfg']}"


def best_of(rows):
    """The fastest row with status "ok", or None."""
    good = [r for r in rows if r.get("status") == "ok"]
    return min(good, key=lambda r: r["ms"]) if good else None


def sweep(name, shape, mode, cands, run, set_cfg, timer, budget_end, always=1, limits=(1e-2, 1e-2)):
    """Run ``run()`` (returns a tuple: the output, then gradients; None entries are skipped) under each config of
    ``cands`` (applied with ``set_cfg``), the first being the reference and the speed-up baseline, and time it with
    ``timer(run)`` -> ms. A config passes when its output's relative RMS against the first config's is below
    ``limits[0]`` and every gradient's below ``limits[1]`` (else MISMATCH, not timed). Once ``time.time()`` passes
    ``budget_end``, configs after the first ``always`` are listed as skipped. A config that does not compile or
    launch is reported, not fatal. Prints each row that ran (``fmt_row``), restores ``set_cfg({})`` and returns
    the rows (shape, dims, mode, cfg, cfg_dict, status, ms, err_out, err_grad, speedup)."""
    rows, ref, base_ms = [], None, None
    for i, cfg in enumerate(cands):
        row = dict(shape=name, dims=list(shape), mode=mode, cfg=cfg_str(cfg), cfg_dict=cfg)
        if time.time() > budget_end and i >= always:
            row.update(status="skipped (budget)")
            rows.append(row)
            continue
        set_cfg(cfg)
        try:
            outs = run()
            if ref is None:
                ref = [o.detach().clone() if o is not None else None for o in outs]
            errs = [rel_rms(o, r) for o, r in zip(outs, ref) if o is not None and r is not None]
            err_f, err_g = errs[0], max(errs[1:], default=0.0)
            ok = err_f < limits[0] and err_g < limits[1]
            ms = timer(run) if ok else float("nan")
            base_ms = ms if i == 0 else base_ms
            row.update(status="ok" if ok else "MISMATCH", ms=ms, err_out=err_f, err_grad=err_g,
                       speedup=(base_ms / ms) if ok and base_ms else None)
        except Exception as e:  # a config that does not compile or launch is reported, not fatal
            row.update(status=f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
        rows.append(row)
        print(fmt_row(row), flush=True)
    set_cfg({})
    return rows


def profile(fn, device, n, label, top=12):
    """Run ``fn`` n times under torch.profiler and print the ``top`` kernels by total device (CUDA) or CPU time."""
    from torch.profiler import ProfilerActivity
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            fn()
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60)
    except Exception:   # older/newer profilers name the column device_time_total
        table = prof.key_averages().table(sort_by="device_time_total", row_limit=top, max_name_column_width=60)
    print(f"## profile, {label}, {n} calls\n{table}", flush=True)


def write_json(path, device_label, copy_bw, rows):
    """The bench JSON: the device, the measured copy bandwidth, torch's version, the command's arguments, the rows."""
    import json
    import sys
    with open(path, "w") as f:
        json.dump(dict(device=device_label, copy_bw=copy_bw, torch=torch.__version__, argv=sys.argv[1:], rows=rows), f,
                  indent=1)
