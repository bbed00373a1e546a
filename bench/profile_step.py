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
    a = p.parse_args(argv)
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    device = torch.device(a.device)
    model = fused_for_inference(create_model(a.preset).to(device).eval()).to(memory_format=torch.channels_last)
    if device.type == "cpu":
        model.set_backend("torch")
    fn = stream_mode(model, device, a.streams, device.type == "cuda", channels_last=True)
    for _ in range(3):
        fn()
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=True) as prof:
        for _ in range(a.calls):
            fn()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
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
