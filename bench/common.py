"""Shared benchmark plumbing: the Case record, timing, the copy-bandwidth floor.

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
