"""Where a streaming step's time goes: each part of ``StreamStep`` timed alone, as a CUDA graph replayed many times.

    python bench/fps_parts.py [--preset m2s2l_paper] [--streams 1,32] [--reps 50] [--no-amp] [--no-channels-last]

Parts (same model setup as ``bench/fps.py --amp --cuda-graphs --channels-last``: BatchNorm folded, bf16 autocast,
NHWC weights): the new frame's encoder pass, the temporal encoder of each pyramid level (both scales, fuse), the
spatial BiMamba, the decompositions, each decoder, the scoring; then, for every level, the temporal Mamba block's
pieces (LayerNorm, in_proj, conv, x/dt projections, scan, out_proj) on that level's rows. The parts run one after
another here (no CUDA-stream overlap), so their sum is an upper bound on a step's device time. Prints one table
(ms a call, device time by CUDA events) per stream count. Without CUDA: wall ms of plain calls (a smoke run).
"""
import argparse
import contextlib
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from m2s2l.models import create_model  # noqa: E402
from m2s2l.models import scoring  # noqa: E402
from m2s2l.models.fuse import fused_for_inference  # noqa: E402
from m2s2l.models.temporal import set_fused  # noqa: E402


def graph_ms(fn, reps):
    """Device ms of one call of ``fn``, captured in a CUDA graph and replayed ``reps`` times (median of 3 rounds);
    without CUDA (a smoke run of this script) wall ms of plain calls."""
    if not torch.cuda.is_available():
        import time
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps * 1e3
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / reps)
    return sorted(times)[1]


@contextlib.contextmanager
def _fused_as(block, fused):
    """``block.fused`` set to ``fused`` inside the context, restored after."""
    saved, block.fused = block.fused, fused
    try:
        yield
    finally:
        block.fused = saved


def block_pieces(block, x):
    """The temporal MambaBlock's pieces on rows x (rows, T, C), as (name, thunk) pairs (last_only, as scored)."""
    m = block.mixer
    batch, seqlen, _ = x.shape
    dev = x.device.type
    dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    chan = m._channel_layout(seqlen, x.device)
    h = block.norm(x, out_dtype=dt)
    xz = m._in_proj(h, chan)
    xs, z = xz.chunk(2, dim=1)
    xc = m._conv(xs, m.conv1d.weight[:, 0], m.conv1d.bias, None)
    delta, B, C = m._x_dt_proj(xc, m.x_proj.weight, m.dt_proj.weight, chan)
    y = m._scan(xc, delta, m.A_log, B, C, m.D, z, m.dt_proj.bias, None, True)
    with _fused_as(block, True):
        fusable = block.can_fuse(x)  # the kernel takes these sizes (whatever block.fused says)

    def unfused():
        with _fused_as(block, False):
            return block(x, last_only=True)
    return [("LayerNorm", lambda: block.norm(x, out_dtype=dt)),
            ("in_proj", lambda: m._in_proj(h, chan)),
            ("conv1d", lambda: m._conv(xs, m.conv1d.weight[:, 0], m.conv1d.bias, None)),
            ("x_proj+dt_proj", lambda: m._x_dt_proj(xc, m.x_proj.weight, m.dt_proj.weight, chan)),
            ("scan (last_only)", lambda: m._scan(xc, delta, m.A_log, B, C, m.D, z, m.dt_proj.bias, None, True)),
            ("out_proj", lambda: m.out_proj(y.transpose(1, 2))),
            ("whole block, unfused", unfused)] + (
            [("whole block, fused kernel", lambda: block.fused_last(x))] if fusable else [])


def parts(model, B, amp, channels_last, blocks_only=False):
    c = model.config
    dev = DEVICE
    dtype = torch.bfloat16 if amp else torch.float32
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    frame = (torch.rand(B, c.in_channels, c.image_size, c.image_size, generator=g) * 2 - 1).to(dev)
    frame = frame.contiguous(memory_format=fmt)
    state = [torch.randn(B, c.clip_len, *s, generator=g).to(dev, dtype) for s in model.feature_shapes()]
    L = len(state)
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=amp):
        fused = [model.temporal[l](state[l]) for l in range(L)]
        sp = model.spatial(fused[-1])
        dec = [model.decompose[l](sp if l == L - 1 else fused[l]) for l in range(L)]
        app, mot = [d[0] for d in dec], [d[1] for d in dec]
        pred = {"appearance": model.app_decoder(app), "motion": model.motion_decoder(mot)}
    rows = [("encoder (new frame)", lambda: model.encode_frames(frame))]
    rows += [(f"temporal level {l} ({B * s[1] * s[2]} rows x T={c.clip_len}, C={s[0]})",
              functools.partial(model.temporal[l], state[l])) for l, s in enumerate(model.feature_shapes())]
    rows += [("spatial BiMamba", lambda: model.spatial(fused[-1])),
             ("decompositions", lambda: [model.decompose[l](sp if l == L - 1 else fused[l]) for l in range(L)]),
             ("appearance decoder", lambda: model.app_decoder(app)),
             ("motion decoder", lambda: model.motion_decoder(mot)),
             ("scoring", lambda: scoring.score(c, pred, frame, frame * 0.5))]
    detail = []
    for l, s in enumerate(model.feature_shapes()):
        x = state[l].permute(0, 3, 4, 1, 2).reshape(-1, c.clip_len, s[0])
        with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=amp):
            for name, fn in block_pieces(model.temporal[l].branches[0][0], x):
                detail.append((f"  L{l} scale-1 block: {name}", fn))
    out = []
    for name, fn in (detail if blocks_only else rows + detail):
        def run(fn=fn):
            with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=amp):
                return fn()
        try:
            out.append((name, graph_ms(run, REPS)))
        except Exception as e:  # report, go on
            out.append((name, f"failed: {type(e).__name__}: {str(e)[:80]}"))
    return out


REPS = 50
DEVICE = torch.device("cuda")


def main(argv=None):
    global REPS, DEVICE
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="m2s2l_paper")
    p.add_argument("--streams", default="1,32")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--fused-block", default="auto", choices=("auto", "on", "off"), help="MambaBlock.fused of the "
                   "temporal blocks: True (on), False (off), None (auto)")
    p.add_argument("--blocks-only", action="store_true", help="only the temporal blocks' rows")
    a = p.parse_args(argv)
    REPS = a.reps
    if not torch.cuda.is_available():
        DEVICE = torch.device("cpu")
    model = fused_for_inference(create_model(a.preset).to(DEVICE).eval())
    if not a.no_channels_last:
        model = model.to(memory_format=torch.channels_last)
    set_fused(model, {"auto": None, "on": True, "off": False}[a.fused_block])
    tables = {}
    for B in [int(v) for v in a.streams.split(",")]:
        tables[B] = parts(model, B, not a.no_amp, not a.no_channels_last, a.blocks_only)
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (wall ms, no graphs)"
    print(f"# {a.preset} on {name}, amp={not a.no_amp}, "
          f"channels_last={not a.no_channels_last}; device ms a call (CUDA graph replay)")
    Bs = list(tables)
    print("| part | " + " | ".join(f"{B} stream(s)" for B in Bs) + " |")
    print("|---|" + "---|" * len(Bs))
    for i, (name, _) in enumerate(tables[Bs[0]]):
        cells = [tables[B][i][1] for B in Bs]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else v for v in cells) + " |")


if __name__ == "__main__":
    main()
