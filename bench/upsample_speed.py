"""upsample_cat speed at the paper model's decoder shapes: m2s2l's one Triton kernel vs PyTorch's
F.interpolate(bilinear) + torch.cat, in channels_last (the model's layout with --channels-last) and contiguous.

    python bench/upsample_speed.py [--streams 1,32] [--dtype bf16] [--json PATH]
    TRITON_INTERPRET=1 python bench/upsample_speed.py --device cpu --small      # CPU smoke run of the script

Shapes: each decoder level of m2s2l_paper (256x256 frames): x (S, C, h, h) resized to the next level's (2h, 2h)
and concatenated with its skip (S, C/2, 2h, 2h), for S streams; the model runs each level twice a frame (appearance
and motion decoders). ``--small``: 2 streams of 32x32 frames (a smoke test, not a measurement).
Prints one row per (streams, level, layout): ms p50 (p20-p80) of each, GB/s (ideal bytes / p50: x read once, skip
read once, the output written once), % of the copy bandwidth, and the speed-up. Timing: triton.testing.do_bench on a
GPU. Run tests/triton_kernels/test_upsample_cat.py first: a speed-up counts only for a kernel that passes.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's m2s2l
from common import DTYPES, copy_bandwidth, device_name, time_ms, write_json  # noqa: E402

from m2s2l.ops import upsample_cat  # noqa: E402
from m2s2l.triton_kernels.upsample.naive import upsample_cat_ref  # noqa: E402

LEVELS = [(256, 16), (128, 32), (64, 64)]  # (C of x, h): x (S, C, h, h) -> (S, C + C // 2, 2h, 2h)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--streams", default="1,32")
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--small", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    quick = a.small or device.type != "cuda"
    bw = copy_bandwidth(device, quick=quick)
    levels = [(16, 4), (8, 8)] if a.small else LEVELS
    streams = [2] if a.small else [int(s) for s in a.streams.split(",")]
    rows = []
    for S in streams:
        for C, h in levels:
            for layout in ("channels_last", "contiguous"):
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                g = torch.Generator(device=device).manual_seed(C)
                x = torch.randn(S, C, h, h, device=device, dtype=dtype, generator=g).contiguous(memory_format=fmt)
                skip = torch.randn(S, C // 2, 2 * h, 2 * h, device=device, dtype=dtype,
                                   generator=g).contiguous(memory_format=fmt)
                nbytes = (x.numel() + skip.numel() + S * (C + C // 2) * 4 * h * h) * x.element_size()
                res = {}
                for name, fn in (("m2s2l", lambda: upsample_cat(x, skip, backend="triton")),
                                 ("torch", lambda: upsample_cat_ref(x, skip))):
                    with torch.no_grad():
                        res[name] = time_ms(fn, device, quick=quick)
                for name in ("m2s2l", "torch"):
                    p50, p20, p80 = res[name]
                    rows.append(dict(streams=S, level=f"{C}x{h}->{2 * h}", layout=layout, impl=name, ms=p50,
                                     p20=p20, p80=p80, gbs=nbytes / (p50 * 1e-3) / 1e9,
                                     pct_copy=100 * nbytes / (p50 * 1e-3) / bw,
                                     speedup=res["torch"][0] / p50 if name == "m2s2l" else 1.0))
    dev = device_name(device)
    print(f"# {dev}, {a.dtype}, copy bandwidth {bw / 1e9:.0f} GB/s")
    print("| streams | level (C x h -> 2h) | layout | impl | ms p50 (p20-p80) | GB/s | % copy bw | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['streams']} | {r['level']} | {r['layout']} | {r['impl']} | {r['ms']:.4f} ({r['p20']:.4f}-"
              f"{r['p80']:.4f}) | {r['gbs']:.0f} | {r['pct_copy']:.0f} | {r['speedup']:.2f}x |")
    if a.json:
        write_json(a.json, dev, bw, rows)
    return rows


if __name__ == "__main__":
    main()
