"""Scoring throughput in frames/s: (a) clip mode, batch 1 (the paper's setting: the whole T-frame clip through
the encoder for every frame), (b) streaming, batch 1 (``StreamStep``: the new frame's encoder pass + the temporal /
decoder part on the cached pyramids; the score is copied to the host every frame), (c) ``--streams`` (32)
independent streams scored in lock-step as one batch.

    python bench/fps.py [--device cpu|cuda] [--preset m2s2l_lite] [--threads N] [--seconds 5] [--streams 32]
                        [--amp] [--compile] [--cuda-graphs] [--branches] [--backend auto] [--json PATH]

Frame decoding / resizing is excluded (frames are already tensors on the device). Each mode runs a warm-up,
then as many steps as fit in ``--seconds``; FPS = frames scored / wall time. ``--compile`` wraps the step in
``torch.compile`` (with ``--pure-torch`` it can fuse the scan: the custom ops are opaque to it); ``--cuda-graphs`` (CUDA only) captures one streaming step in a CUDA graph and replays it.
A mode that fails is reported with its error, the others still run. Weights are random (speed does not depend
on them).
"""
import argparse
import contextlib
import functools
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import profile, sync  # noqa: E402
from m2s2l.engine.evaluate import apply_backend  # noqa: E402
from m2s2l.engine.export import pure_torch_ops  # noqa: E402
from m2s2l.engine.stream import CudaBranches, StateRing, StreamStep, capture_graph  # noqa: E402
from m2s2l.models import create_model  # noqa: E402
from m2s2l.models.fuse import fused_for_inference  # noqa: E402
from m2s2l.models.temporal import set_fused, set_prep  # noqa: E402


def timed(fn, frames_per_call, device, seconds, warmup=3):
    for _ in range(warmup):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n % 4 == 0 or device.type != "cuda":
            sync(device)
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
    return {"fps": n * frames_per_call / dt, "ms_per_call": dt / n * 1e3, "calls": n}


def clip_mode(model, device, amp):
    x = model.example_inputs(1)[0].to(device)
    batch = {"clip": x, "target": x[:, -1]}

    def fn():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return model.score(batch)["score"].float().cpu()
    return fn


def stream_mode(model, device, batch, amp, compile_=False, graphs=False, pure=False, channels_last=False,
                branches=False, ring=True):
    """One streaming step of ``batch`` streams (as ``StreamScorer`` runs it): with ``ring`` (default) the state in a
    ``StateRing`` (no state copies; with ``graphs`` one CUDA graph per ring phase, replayed in turn), else the pure
    step (state in, state out: ``roll`` + the copy of the new state into the graph's static input)."""
    c = model.config
    step = StreamStep(model, run=CudaBranches(device) if branches else None).eval()
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    frame = (torch.rand(batch, c.in_channels, c.image_size, c.image_size, generator=g) * 2 - 1).to(device)
    frame = frame.contiguous(memory_format=fmt)
    # the step's second input: the previous frame ("diff" models) or the optical flow to this frame ("flow")
    prev = (torch.randn(batch, 2, c.image_size, c.image_size, generator=g).to(device)
            if getattr(c, "motion_target", "diff") == "flow" else frame.clone())
    dtype = torch.bfloat16 if amp else torch.float32
    if ring and not compile_:
        with torch.no_grad(), _ctx(device, amp, pure):  # (the ring's projections in the steps' autocast)
            rng = StateRing([torch.randn(batch, *s, generator=g).to(device, dtype) for s in model.feature_shapes()],
                            c.clip_len, model=model)
            for n in range(2 * rng.M):  # random history in every slot
                rng.write([torch.randn(batch, *s, generator=g).to(device, dtype) for s in model.feature_shapes()],
                          n)

        def run_n(n):
            with torch.no_grad(), _ctx(device, amp, pure):
                return step.ring_forward(frame, prev, rng, n)[0].float()
        counter = {"n": 2 * rng.M}
        if not graphs:
            def fn():
                counter["n"] += 1
                return run_n(counter["n"]).cpu()
            return fn
        if device.type != "cuda":
            raise ValueError("--cuda-graphs needs --device cuda")
        phases, pool = {}, None
        for ph in range(rng.M):  # capture every phase (the warm-ups write that phase's slots: the same values)
            phases[ph] = capture_graph(functools.partial(run_n, 2 * rng.M + ph), 3 if ph == 0 else 1, pool)
            pool = phases[ph][0].pool()

        def fn():
            counter["n"] += 1
            graph, out = phases[counter["n"] % rng.M]
            graph.replay()
            return out.cpu()
        return fn
    state = [StreamStep.state_layout(torch.randn(batch, c.clip_len, *s, generator=g).to(device, dtype))
             for s in model.feature_shapes()]  # in the memory order the step's roll returns

    def run(frame, prev, *state):
        with torch.no_grad(), _ctx(device, amp, pure):
            out = step(frame, prev, *state)
        return (out[0].float(),) + tuple(s.to(dtype) for s in out[4:])
    if compile_:
        run = torch.compile(run)
    holder = {"state": state}
    if graphs:
        if device.type != "cuda":
            raise ValueError("--cuda-graphs needs --device cuda")
        static_in = [frame, prev] + state
        graph, static_out = capture_graph(lambda: run(*static_in), 3)

        def fn():
            graph.replay()
            for dst, src in zip(static_in[2:], static_out[1:]):
                dst.copy_(src)  # state out -> state in
            return static_out[0].cpu()
        return fn

    def fn():
        out = run(frame, prev, *holder["state"])
        holder["state"] = list(out[1:])
        return out[0].cpu()
    return fn


@contextlib.contextmanager
def _ctx(device, amp, pure):
    """bf16 autocast (``amp``) and the pure-PyTorch ops (``pure``) around a step."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), \
            (pure_torch_ops() if pure else contextlib.nullcontext()):
        yield


def scorer_mode(model, device, batch, amp, graphs, branches, error_maps=True):
    """``batch`` streams through ``m2s2l.engine.stream.StreamScorer.push_batch`` -- the product's path (``m2s2l
    score``): the step as the scorer runs it (its own CUDA graphs and autocast), the scores and error maps copied to
    the host and the alert logic every call. Frames are (batch, C, H, W) tensors already on the device."""
    from m2s2l.engine.stream import StreamScorer
    sc = StreamScorer(model, device=device, amp=amp, fuse_bn=False, cuda_graphs=graphs,
                      branches=branches if graphs else None,   # (the model is already folded by main)
                      error_maps=error_maps)
    x = model.example_inputs(batch)[0][:, -1].to(device)      # (batch, C, H, W)
    for _ in range(model.config.clip_len):
        sc.push_batch(x)
    return lambda: sc.push_batch(x)


def flow_mode(model, threads):
    """Flow models' extra per-frame cost: one OpenCV DIS call (m2s2l.data.store.flow_fn, what StreamScorer runs on
    the host for every new frame) on a pair of model-size grey frames, ``threads`` OpenCV threads (0 = leave)."""
    import cv2
    import numpy as np
    from m2s2l.data.store import flow_fn
    if threads:
        cv2.setNumThreads(threads)
    n = model.config.image_size
    g = np.random.default_rng(0)
    a = g.integers(0, 256, (n, n), dtype=np.uint8)
    b = np.roll(a, 2, axis=1)
    fn = flow_fn("dis")
    return lambda: fn(a, b)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="m2s2l_lite")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (int values)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per mode")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--modes", default="clip,stream,batched", help="any of clip,stream,batched,scorer,flow (scorer: "
                   "--streams streams through StreamScorer.push_batch, host copies and alerts included; flow: the "
                   "host-side OpenCV DIS call a motion_target=flow model adds per frame and stream)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the streaming step")
    p.add_argument("--cuda-graphs", action="store_true", help="replay the streaming step as a CUDA graph")
    p.add_argument("--branches", action="store_true", help="run the step's independent parts on parallel CUDA "
                   "streams (m2s2l.engine.stream.CudaBranches; with --cuda-graphs a graph with parallel branches)")
    p.add_argument("--pure-torch", action="store_true", help="run the Mamba ops as their plain-PyTorch references "
                   "(not the m2s2l:: custom ops), so --compile can fuse the scan loop (see m2s2l.engine.export)")
    p.add_argument("--backend", default="auto", help="auto (torch on CPU) | triton | cuda | torch")
    p.add_argument("--ln-backend", default=None, help="backend of the LayerNorm modules only (e.g. torch, to "
                   "compare with the Triton short-row kernel in one run)")
    p.add_argument("--channels-last", action="store_true", help="model weights and frames in channels_last "
                   "(NHWC convolutions)")
    p.add_argument("--mamba-layout", default=None, help="time | channel | auto: Mamba.layout of every Mamba block "
                   "(the scan inputs' memory layout; default: the blocks' own, auto)")
    p.add_argument("--fused-block", default="auto", choices=("auto", "on", "off"), help="the temporal Mamba blocks "
                   "as one m2s2l.ops.mamba_block_last kernel each (on), unfused (off), or MambaBlock's default (auto: "
                   "m2s2l.models.temporal.fused_default)")
    p.add_argument("--upsample-backend", default=None, help="backend of the decoders' upsample_cat only (torch: "
                   "F.interpolate + torch.cat, to compare with the one-kernel Triton form in one run)")
    p.add_argument("--roll-state", action="store_true", help="the pure step: state in, rolled state out (and, with "
                   "--cuda-graphs, copied back into the graph's input); default: the state in place in a StateRing")
    p.add_argument("--contiguous-state", action="store_true", help="with --roll-state: the rolled state "
                   "(B, T, C, H, W) "
                   "contiguous (default: (B, H, W, T, C) memory order, StreamStep.STATE_ORDER, so the temporal "
                   "encoders read it without a layout copy)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True (cuDNN "
                   "times its algorithms for each convolution shape during the warm-up, before any graph capture)")
    p.add_argument("--prep-block", action="store_true", help="temporal blocks with d_inner <= 128 as "
                   "ops.mamba_block_prep (pooling, LayerNorm, in_proj, conv, x_proj in one kernel) + the scan + "
                   "out_proj (m2s2l.models.temporal.set_prep)")
    p.add_argument("--full-gate", action="store_true", help="last-only Mamba calls compute the gate z for every step "
                   "(A/B of Mamba.gate_last_only, default: the last step alone)")
    p.add_argument("--fused-score", default=None, action=argparse.BooleanOptionalAction, help="the score's error "
                   "maps and appearance MSE as one m2s2l.ops.frame_errors kernel, or (--no-fused-score) as the "
                   "PyTorch ops (m2s2l.models.scoring.fused_errors; default: its own, on for CUDA tensors)")
    p.add_argument("--scorer-no-maps", action="store_true", help="scorer mode: StreamScorer(error_maps=False), "
                   "as m2s2l score without --overlay (no device-to-host copy of the error maps)")
    p.add_argument("--proj-ring", default="auto", choices=("auto", "on", "off"), help="the StateRing's projection "
                   "rings (the temporal blocks' pooling, LayerNorm and in_proj once a frame, cached) always (on), "
                   "never (off: every step of the window each frame), or StateRing.project's default (auto: on CPU, "
                   "and on CUDA from StateRing.min_rows_cuda rows of the first level)")
    p.add_argument("--no-dt-fold", action="store_true", help="keep each Mamba mixer's dt_proj as its own GEMM "
                   "(A/B of Mamba.fold_dt_proj)")
    p.add_argument("--out-fold", action="store_true", help="fold the temporal encoders' out_proj and residuals into "
                   "their fuse layer (m2s2l.models.fuse.fold_out_projs; the projected streaming path: GEMMs "
                   "accumulating in place instead of strided adds; opt-in until timed)")
    p.add_argument("--no-conv-act", action="store_true", help="keep each folded convolution's bias / residual / ReLU "
                   "as separate kernels (default: one cuDNN call each, m2s2l.models.fuse.ConvAct)")
    p.add_argument("--no-fuse-bn", action="store_true", help="keep the BatchNorm kernels (default: fold them into "
                   "the convolutions, as m2s2l score / StreamScorer do)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="after timing, profile N calls of each mode "
                   "and print its 12 most expensive kernels (CUDA: device time)")
    p.add_argument("--scan-cfg", default=None, metavar="K=V,...", help="selective-scan launch overrides, as "
                   "M2S2L_SCAN_CFG (e.g. last_rows=1: one row a program in the last-step kernel at every length), "
                   "set in process")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.scan_cfg:
        from scan_ab import parse_cfg

        from m2s2l.triton_kernels.selective_scan import scan_config
        scan_config._CFG.update(parse_cfg(a.scan_cfg, "--scan-cfg"))
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    device = torch.device(a.device)
    kw = {}
    for s in a.set:
        k, v = s.split("=", 1)
        kw[k] = int(v) if v.lstrip("-").isdigit() else v
    model = create_model(a.preset, **kw).to(device).eval()
    if not a.no_fuse_bn:
        model = fused_for_inference(model, conv_act=not a.no_conv_act, dt_fold=not a.no_dt_fold,
                                    out_fold=a.out_fold)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    apply_backend(model, a.backend, device)
    if a.ln_backend:  # e.g. "torch": PyTorch's LayerNorm kernel in the temporal blocks, the rest unchanged
        from m2s2l.modules import LayerNorm
        for m in model.modules():
            if isinstance(m, LayerNorm):
                m.backend = a.ln_backend
    if a.contiguous_state:
        StreamStep.permuted_state = False
    StateRing.project = {"auto": None, "on": True, "off": False}[a.proj_ring]
    if a.fused_score is not None:
        from m2s2l.models import scoring
        scoring.fused_errors = a.fused_score
    if a.full_gate:
        from m2s2l.modules import Mamba
        Mamba.gate_last_only = False
    if a.upsample_backend:
        from m2s2l.models.decoder import Decoder
        for m in model.modules():
            if isinstance(m, Decoder):
                m.backend = a.upsample_backend
    set_fused(model, {"auto": None, "on": True, "off": False}[a.fused_block])
    set_prep(model, a.prep_block)
    if a.mamba_layout:
        from m2s2l.modules import Mamba
        for m in model.modules():
            if isinstance(m, Mamba):
                m.layout = a.mamba_layout
    amp = a.amp and device.type == "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    res = {"preset": a.preset, "device": name, "amp": amp, "compile": a.compile, "cuda_graphs": a.cuda_graphs,
           "branches": a.branches,
           "channels_last": a.channels_last, "ln_backend": a.ln_backend,
           "upsample_backend": a.upsample_backend, "fuse_bn": not a.no_fuse_bn,
           "conv_act": not (a.no_fuse_bn or a.no_conv_act),
           "dt_fold": not (a.no_fuse_bn or a.no_dt_fold), "cudnn_benchmark": a.cudnn_benchmark,
           "gate_last_only": not a.full_gate, "fused_score": a.fused_score, "prep_block": a.prep_block, "permuted_state": not a.contiguous_state,
           "ring_state": not a.roll_state, "proj_ring": a.proj_ring, "out_fold": a.out_fold, "scorer_maps": not a.scorer_no_maps,
           "mamba_layout": a.mamba_layout, "fused_block": a.fused_block, "backend": a.backend,
           "pure_torch": a.pure_torch,
           "image_size": model.config.image_size, "clip_len": model.config.clip_len,
           "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "modes": {}}
    todo = {"clip": lambda: (clip_mode(model, device, amp), 1),
            "stream": lambda: (stream_mode(model, device, 1, amp, a.compile, a.cuda_graphs, a.pure_torch,
                                              a.channels_last, a.branches, not a.roll_state), 1),
            "batched": lambda: (stream_mode(model, device, a.streams, amp, a.compile, a.cuda_graphs, a.pure_torch,
                                               a.channels_last, a.branches, not a.roll_state), a.streams),
            "scorer": lambda: (scorer_mode(model, device, a.streams, amp, a.cuda_graphs, a.branches,
                                           not a.scorer_no_maps), a.streams),
            "flow": lambda: (flow_mode(model, a.threads), 1)}
    print(f"# {a.preset} on {name}, amp={amp}, compile={a.compile}, cuda_graphs={a.cuda_graphs}, "
          f"channels_last={a.channels_last}, branches={a.branches}, fuse_bn={not a.no_fuse_bn}, "
          f"mamba_layout={a.mamba_layout}, ring_state={not a.roll_state}", flush=True)
    for mode in a.modes.split(","):
        try:
            fn, per = todo[mode]()
            r = timed(fn, per, device if mode != "flow" else torch.device("cpu"), a.seconds)
            if a.profile:
                profile(fn, device, a.profile, mode)
        except Exception as e:  # report and continue
            r = {"error": f"{type(e).__name__}: {e}"}
        res["modes"][mode] = r
        label = {"clip": "clip mode, batch 1", "stream": "streaming, batch 1",
                 "batched": f"streaming, {a.streams} streams batched",
                 "scorer": f"StreamScorer, {a.streams} streams",
                 "flow": "optical flow per frame (host CPU)"}[mode]
        print(f"{label:36s} " + (f"{r['fps']:9.1f} frames/s  ({r['ms_per_call']:.2f} ms per call)"
                                 if "fps" in r else r["error"]), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
