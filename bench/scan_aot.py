"""Ahead-of-time compiler report of the selective-scan kernels for sm_90, without a GPU: what the launchers would
run on a shape under a launch config (captured on meta tensors), compiled by Triton for sm_90 with its integer
specialisation mimicked, then registers (cuobjdump), spills (ptxas -v), shared memory, resident warps per SM, the
grid in waves over 132 SMs, PTX counts of bar.sync / shfl / ld.shared / ex2, and the SASS counts of the hottest
loop (``hot_loop``: instructions, MUFU.EX2, loads, stores, barriers an iteration). ``python bench/tune_scan.py --aot
CFG`` prints it (run without TRITON_INTERPRET: the interpreter picks other block sizes and cannot compile).
"""
import os

import torch

from m2s2l.triton_kernels.selective_scan import scan, scan_config


def set_cfg(cfg):
    """Replace the launch config (``scan_config._CFG``, what M2S2L_SCAN_CFG sets at import) in place."""
    scan_config._CFG.clear()
    scan_config._CFG.update(cfg)


def _aot_compile(jit, vals, consts, num_warps, maxnreg=None):
    """(regs, spill bytes (stores + loads, -1 unknown), shared bytes, ptx) of one kernel compiled for sm_90."""
    import inspect
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    names = list(inspect.signature(jit.fn).parameters)
    dns = {names[i] if isinstance(i, int) else i for i in (getattr(jit, "do_not_specialize", None) or [])}
    sig, cx, attrs = {}, dict(consts), {}
    for i, n in enumerate(names):  # mimic the launch-time specialisation: pointers and ints % 16, ints == 1
        v = vals.get(n)
        if n in consts:
            sig[n] = "constexpr"
        elif isinstance(v, str):
            sig[n], attrs[(i,)] = v, [["tt.divisibility", 16]]
        else:
            sig[n] = "i32" if abs(v) < 2 ** 31 else "i64"
            if n not in dns and v == 1:
                sig[n], cx[n] = "constexpr", 1
            elif n not in dns and v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    k = triton.compile(ASTSource(fn=jit, signature=sig, constexprs=cx, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {})))
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    regs, spills = -1, -1
    with tempfile.TemporaryDirectory() as d:
        cub, ptx = os.path.join(d, "k.cubin"), os.path.join(d, "k.ptx")
        open(cub, "wb").write(k.asm["cubin"])
        open(ptx, "w").write(k.asm["ptx"])
        res = subprocess.run([os.path.join(bindir, "cuobjdump"), "-res-usage", cub], capture_output=True, text=True)
        m = re.search(r"REG:(\d+)", res.stdout)
        regs = int(m.group(1)) if m else -1
        for tool, arch in (("ptxas-blackwell", "sm_90a"), ("ptxas", "sm_90a"), ("ptxas", "sm_90")):
            exe = os.path.join(bindir, tool)
            if not os.path.exists(exe):
                continue
            r = subprocess.run([exe, "-v", f"-arch={arch}", "-o", os.path.join(d, "x.cubin"), ptx],
                               capture_output=True, text=True)
            sp = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
            if r.returncode == 0 and sp:
                spills = sum(int(a) + int(b) for a, b in sp)
                break
        loop = hot_loop(cub, os.path.join(bindir, "nvdisasm"))
    return regs, spills, k.metadata.shared, k.asm["ptx"], loop


def hot_loop(cubin_path, nvdisasm):
    """SASS counts of the kernel's hottest loop: of the innermost loops (a label and the backward branch to it, with
    no other loop inside), the one with the most ``MUFU.EX2`` (the scan's step loop). Returns dict(instr, ex2,
    loads (LDG / LDS / LDL), stores, bar) counted once per iteration, or {} without nvdisasm or a loop."""
    import re
    import subprocess
    if not os.path.exists(nvdisasm):
        return {}
    sass = subprocess.run([nvdisasm, "-c", cubin_path], capture_output=True, text=True).stdout.splitlines()
    label_at, ops, loops = {}, [], []
    for line in sass:
        m = re.match(r"\s*(\.L_x_\d+):", line)
        if m:
            label_at[m.group(1)] = len(ops)
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z][\w.]*)(.*)", line)
        if not m:
            continue
        ops.append(m.group(2))
        b = re.search(r"BRA\s+`\((\.L_x_\d+)\)", line)
        if m.group(2) == "BRA" and b and b.group(1) in label_at:  # a backward branch closes a loop
            loops.append((label_at[b.group(1)], len(ops)))
    inner = [(a, e) for a, e in loops if not any(a <= a2 and e2 <= e and (a2, e2) != (a, e) for a2, e2 in loops)]
    if not inner:
        return {}
    a, e = max(inner, key=lambda r: (sum(o.startswith("MUFU.EX2") for o in ops[r[0]:r[1]]), r[1] - r[0]))
    body = ops[a:e]
    return dict(instr=len(body), ex2=sum(o.startswith("MUFU.EX2") for o in body),
                loads=sum(o.split(".")[0] in ("LDG", "LDS", "LDL") for o in body),
                stores=sum(o.split(".")[0] in ("STG", "STS", "STL") for o in body),
                bar=sum(o.startswith("BAR") for o in body))


class _Capture:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *a, **kw: self.calls.append((grid, a, kw))


def _capture(shape, bwd):
    """The kernel name, grid, argument values and meta-parameters the launchers pick for ``shape`` (meta tensors)."""
    import inspect
    batch, dim, L = shape
    N, m = 16, dict(device="meta")
    u = torch.empty(batch, dim, L, dtype=torch.bfloat16, **m)
    A, D, bias = torch.empty(dim, N, **m), torch.empty(dim, **m), torch.empty(dim, **m)
    Bt = torch.empty(batch, 1, N, L, dtype=torch.bfloat16, **m)
    names = ["_bwd_kernel", "_bwd_seq_kernel", "_bwd_tile_kernel"] if bwd else ["_fwd_kernel", "_fwd_seq_kernel", "_fwd_tile_kernel"]
    names.append("_chunk_combine_kernel")  # cseq: captured so that it does not run on meta tensors; not reported
    real = {n: getattr(scan, n) for n in names}
    caps = {n: _Capture() for n in names}
    try:
        for n in names:
            setattr(scan, n, caps[n])
        if bwd:
            ns = scan.saved_state_count(L, N, batch * dim)
            hc = torch.empty(batch, ns, dim, N, **m) if ns > 0 else None
            scan.selective_scan_bwd(u, u, u, A, Bt, Bt, D, u, bias, None, hc, True)
        else:
            scan.selective_scan_fwd(u, u, A, Bt, Bt, D, u, bias, None, True, False, True)
    finally:
        for n in names:
            setattr(scan, n, real[n])
    name = next(n for n in names if caps[n].calls)
    grid, a, kw = caps[name].calls[-1]  # cseq: the second (output) pass
    ty = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}
    pnames = list(inspect.signature(real[name].fn).parameters)
    vals = {p: (ty[x.dtype] if isinstance(x, torch.Tensor) else int(x)) for p, x in zip(pnames, a)}
    kw = dict(kw)
    return name, real[name], grid, vals, kw.pop("num_warps"), kw


def aot_report(shapes, cfg, num_sms=132):
    """One row per (shape, kernel): the launch config, registers, spills, shared memory, resident warps per SM and
    the grid, for an sm_90 compile of what the launchers would run under ``cfg``."""
    set_cfg(cfg)
    rows = []
    for name, shape in shapes:
        for bwd in (False, True):
            kname, jit, grid, vals, warps, meta = _capture(shape, bwd)
            regs, spills, smem, ptx, loop = _aot_compile(jit, vals, meta, warps, meta.pop("maxnreg", None))
            per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
            blocks = min(65536 // (per_warp * warps), 64 // warps, 32, 233472 // (smem + 1024) if smem else 32)
            progs = grid[0] * (grid[1] if len(grid) > 1 else 1)
            row = dict(shape=name, dims=list(shape), kernel=kname.strip("_"), T_C=meta.get("T_C", 1),
                       BLOCK_D=meta["BLOCK_D"], warps=warps, regs=regs, spill_bytes=spills, smem=smem,
                       warps_per_sm=blocks * warps, programs=progs, waves=round(progs / (num_sms * max(blocks, 1)), 2),
                       **{k: ptx.count(k) for k in ("bar.sync", "shfl", "ld.shared", "ex2")},
                       **{f"loop_{k}": v for k, v in loop.items()})
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items() if k != "dims"), flush=True)
    set_cfg({})
    return rows
