"""The fused temporal block (``m2s2l.ops.mamba_block_last``) against the unfused model path on one device.

    python bench/fused_block_check.py [--preset m2s2l_paper] [--batch 2]

Scores a random clip with every ``MambaBlock.fused`` on and off (fp32, and bf16 autocast with channels_last as
scored) and prints the largest differences of the two predictions and of the temporal encoders' outputs."""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from m2s2l.models import create_model  # noqa: E402
from m2s2l.models.fuse import fused_for_inference  # noqa: E402
from m2s2l.models.temporal import set_fused  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="m2s2l_paper")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = fused_for_inference(create_model(a.preset).to(dev).eval())
    clip = model.example_inputs(a.batch)[0]
    set_fused(model, True)
    with torch.no_grad():
        if not model.temporal[0]._fusable(model._encode_clip(clip)[0]):
            raise SystemExit(f"the fused block does not run on {dev} here (CPU needs TRITON_INTERPRET=1): "
                             "nothing to compare")
    for amp in (False, True):
        if amp:
            model = model.to(memory_format=torch.channels_last)
        res = {}
        for on in (True, False):
            set_fused(model, on)
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
                feats = model._encode_clip(clip)
                temporal = [model.temporal[l](feats[l]).float() for l in range(len(feats))]
                pred = model.forward_features(feats)
            res[on] = (temporal, pred)
        dt = [(x - y).abs().max().item() for x, y in zip(res[True][0], res[False][0])]
        mag = [y.abs().max().item() for y in res[False][0]]
        dp = {k: (res[True][1][k].float() - res[False][1][k].float()).abs().max().item() for k in res[True][1]}
        print(f"{'bf16 autocast' if amp else 'fp32'}: temporal levels max |fused - unfused| "
              f"{['%.2e' % v for v in dt]} (max |unfused| {['%.1f' % v for v in mag]}); predictions {dp}",
              flush=True)


if __name__ == "__main__":
    main()
