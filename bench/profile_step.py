"""Where a streaming step's device time goes, by PyTorch op and input shapes (eager, no CUDA graph: the graph replay
hides the ops that launched its kernels; the kernels are the same).

    python bench/profile_step.py [--preset m2s2l_paper] [--streams 32] [--calls 3] [--top 40]

Model setup as ``bench/fps.py --amp --channels-last`` (BatchNorm folded, bf16 autocast, NHWC weights), the
``StreamStep`` of ``--streams`` streams. Prints the ``--top`` ops by self device time with their input shapes
(torch.profiler ``group_by_input_shape``), then the top kernels by device time.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's m2s2l
from fps import stream_mode  # noqa: E402

from m2s2l.models import create_model  # noqa: E402
from m2s2l.models.fuse import fused_for_inference  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="m2s2l_paper")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--brief", action="store_true", help="one short line an op / kernel (name, device ms a call, "
                   "launches a call) instead of the profiler's tables")
    p.add_argument("--flags", default="", help="bench/fps.py switches applied first, e.g. '--prep-block' "
                   "(--prep-block, --full-gate, --roll-state)")
    a = p.parse_args(argv)
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    device = torch.device(a.device)
    model = fused_for_inference(create_model(a.preset).to(device).eval()).to(memory_format=torch.channels_last)
    if device.type == "cpu":
        model.set_backend("torch")
    flags = a.flags.split()
    if "--prep-block" in flags:
        from m2s2l.models.temporal import set_prep
        set_prep(model, True)
    if "--full-gate" in flags:
        from m2s2l.modules import Mamba
        Mamba.gate_last_only = False
    fn = stream_mode(model, device, a.streams, device.type == "cuda", channels_last=True,
                     ring="--roll-state" not in flags)
    for _ in range(3):
        fn()
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        for _ in range(a.calls):
            fn()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    if a.brief:
        rows = []
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None)
            t = getattr(e, "self_cuda_time_total", 0) if t is None else t
            t = t if device.type == "cuda" else e.self_cpu_time_total
            rows.append((t / a.calls / 1000, e.count / a.calls, e.key))
        rows.sort(reverse=True)
        total = sum(r[0] for r in rows if not r[2].startswith("aten::"))
        print(f"## {a.preset}, {a.streams} streams, flags [{a.flags}]: ms a call (self), launches a call; "
              f"kernels total {total:.2f} ms")
        for ms, n, name in rows[:a.top]:
            print(f"{ms:7.3f} {n:6.1f}  {name[:70]}")
        return
    for group in (True, False):
        avg = prof.key_averages(group_by_input_shape=group)
        try:
            table = avg.table(sort_by=key, row_limit=a.top, max_name_column_width=70, max_shapes_column_width=110)
        except Exception:
            table = avg.table(sort_by=key.replace("cuda", "device"), row_limit=a.top, max_name_column_width=70,
                              max_shapes_column_width=110)
        print(f"## {a.preset}, {a.streams} streams, {a.calls} calls, by {'op and shapes' if group else 'op'}")
        print(table, flush=True)


if __name__ == "__main__":
    main()
