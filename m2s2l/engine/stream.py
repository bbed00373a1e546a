"""Real-time scoring of a video file, a frames folder, a camera or an RTSP stream: ``m2s2l score``.

Streaming equals offline scoring: the score of frame t is ``model.score`` on the clip of the T frames that
precede it (target = frame t), exactly as ``m2s2l eval`` scores it; the first T frames are not scored. Each
frame goes through the spatial encoder ONCE; its feature pyramid is kept in a fixed-size state of the last T
pyramids (constant memory, encoder cost per frame independent of T) and only the temporal / decoder part
runs per scored frame.

Online normalisation and alerts (per-video min-max is offline-only): with the checkpoint's calibration
(``m2s2l.engine.calibrate``) ``normalised = (raw - mean) / std`` and a frame is *above* when
``raw > threshold`` (the ``quantile`` of normal scores). Hysteresis: the alert turns ON after ``K``
consecutive frames above the threshold and OFF after ``K`` consecutive frames at or below it
(``--hysteresis K``, default 3); K = 1 alerts on every frame above. Without calibration ``normalised`` is NaN
and no alert is raised; ``--threshold-z Z`` replaces the calibrated threshold by ``mean + Z * std``.

Real input: any resolution / aspect / colour (resized + converted like the offline loader,
``m2s2l.data.frames.to_model_frame``); unreadable or dropped frames are skipped with a warning and counted
(a skipped frame does not enter the history, so the next T read frames form the next clip); the ``frame``
column is the index of the frame in the source.
"""
import concurrent.futures
import csv
import os
import sys
import threading
import time

import numpy as np
import torch

from m2s2l.data.frames import to_model_frame

from .step import CudaBranches, StateRing, StreamStep, capture_graph  # noqa: F401  (public here too)
from .video_io import FrameSource, Overlay, plot_scores


def _to_host(tensors):
    """numpy copies of ``tensors``. CUDA tensors go through fresh page-locked buffers (PyTorch's caching host
    allocator: a buffer is reused only once its numpy array is gone), copied asynchronously and waited for once --
    32 streams' error maps are 8 MB a frame, which a synchronous copy to pageable memory moves at a fraction of the
    link's speed."""
    if not any(t.is_cuda for t in tensors):
        return [t.cpu().numpy() for t in tensors]
    host = []
    for t in tensors:
        h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        h.copy_(t, non_blocking=True)
        host.append(h)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [h.numpy() for h in host]


class StreamScorer:
    """Score frames one at a time (or B streams at a time) with constant memory.

    ``push(frame)``: frame = HxW / HxWx3 uint8 RGB numpy array of any size, or a (C, H, W) float tensor in
    [-1, 1] at the model's size. Returns None while the T-frame history fills, then a dict: "score" (raw),
    "appearance", "motion", "normalised" (z-score, NaN without calibration), "above", "alert" (hysteresis, module
    docstring), "error_map" (H, W) numpy (not with ``error_maps=False``: no copy of the maps to the host).
    ``push_batch(frames (B, C, H, W) in [-1, 1])`` scores B independent
    streams in lock-step and returns the same keys as (B,) arrays / (B, H, W).

    The scorer runs its own eval copy of ``model`` with BatchNorm folded into the convolutions (``fuse_bn=True``,
    :func:`m2s2l.models.fuse.fused_for_inference`); ``fuse_bn=False`` scores with ``model`` itself.
    The T cached pyramids are kept in place in a :class:`StateRing` (each frame writes its own features; no copy of
    the state a frame); ``state`` shows them as (B, T, C_l, H_l, W_l) views. ``cuda_graphs=True`` (CUDA only)
    captures the scoring step as CUDA graphs, one per phase of the ring (T + 1, sharing one memory pool, each
    captured the first time its phase runs; again when the batch size changes) and replays them.
    ``branches=True`` (CUDA only) runs the step's independent parts on parallel CUDA streams (:class:`CudaBranches`;
    with ``cuda_graphs`` graphs with parallel branches), same scores; None (default) turns it on exactly with
    ``cuda_graphs`` and no ``compile``
    (H100, m2s2l_paper, bf16: streaming batch 1 586 -> 827-842 frames/s, docs/BENCHMARKS.md). Not with
    ``compile``: a GPU test of the compiled multi-stream step against the eager step failed (cause not yet
    investigated), and it was no faster than either alone."""

    def __init__(self, model, calibration=None, device=None, hysteresis=3, threshold_z=None, amp=False,
                 compile=False, flow_method="dis", fuse_bn=True, cuda_graphs=False, branches=None, error_maps=True):
        if hysteresis < 1:
            raise ValueError(f"hysteresis must be >= 1 frame, got {hysteresis}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        # fuse_bn: score with an eval copy whose Conv2d -> BatchNorm2d pairs are folded into single convolutions
        # (m2s2l.models.fuse; 44 fewer kernels a step in m2s2l_paper, same scores up to rounding); the caller's
        # model is not modified beyond .to(device).eval()
        self.model = model.to(self.device).eval()
        if fuse_bn:
            from m2s2l.models.fuse import fused_for_inference
            self.model = fused_for_inference(self.model)
        if branches is None:
            branches = bool(cuda_graphs) and not compile and self.device.type == "cuda"
        if branches and self.device.type != "cuda":
            raise ValueError(f"branches needs a CUDA device, got device={self.device}")
        if branches and compile:
            raise ValueError("branches cannot be combined with compile (the compiled multi-stream step is not "
                             "checked equal to the eager one); use cuda_graphs with branches, or compile alone")
        self.step = StreamStep(self.model, run=CudaBranches(self.device) if branches else None)
        self.cfg = model.config
        self.calibration = calibration
        self.threshold = None
        if calibration is not None:
            self.threshold = (calibration["threshold"] if threshold_z is None
                              else calibration["mean"] + threshold_z * calibration["std"])
        self.hysteresis = int(hysteresis)
        # error_maps=False: results without "error_map" -- its device-to-host copy (32 streams at 256 x 256: 8 MB a
        # frame) skipped where nothing draws it (m2s2l score without --overlay)
        self.error_maps = bool(error_maps)
        # flow models: the optical flow of each new frame from the previous one, on the same uint8 grey images
        # at the model's size as FrameStore.compute_flow (the checkpoint's train_args.flow_method)
        self._flow_pool, self._flow_method = None, flow_method
        self._flow_local = threading.local()  # one OpenCV flow object per thread (they are not shareable)
        if self.step.flow:
            self._thread_flow_fn()  # fails here, not at the first frame, without OpenCV
        self.amp = amp and self.device.type == "cuda"
        # compile: torch.compile the scoring step with the Mamba ops as plain-PyTorch references (the m2s2l::
        # custom ops are opaque to the compiler); on CPU the fused scan loop is ~8x faster than eager (bench/fps.py)
        # after a compile of minutes (first scored frame)
        self._compiled = torch.compile(self.step.score_and_encode) if compile else None
        # cuda_graphs: the scoring step is captured once per batch size as a CUDA graph and replayed (static input
        # buffers, the state copied in, the graph's outputs read back): one launch a frame instead of hundreds
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, got device={self.device}")
        # the state: a StateRing (written in place, no state copies a frame); kept across reset() for the same
        # batch size, with the CUDA graphs captured on it (one per ring phase, captured as each phase first runs)
        self._cuda_graphs, self._graphs, self.ring = bool(cuda_graphs), None, None
        self.reset()

    def reset(self):
        """Forget the history (a new video / a cut in the stream)."""
        self.prev, self.prev_gray, self.flow, self.n_seen, self.batch = None, None, None, 0, None
        self._alert = self._run = None
        if self.ring is not None:
            self.ring.zero_()

    @property
    def state(self):
        """The T cached pyramids (per level a (B, T, C_l, H_l, W_l) view of the ring, oldest frame first), or None
        before the first frame."""
        return None if self.ring is None or self.batch is None else self.ring.window(self.n_seen)

    def preprocess(self, frame):
        """uint8 HxW / HxWx3 RGB numpy (any size) -> (C, H, W) float32 tensor in [-1, 1] on the device."""
        if isinstance(frame, torch.Tensor):
            return frame.to(self.device, torch.float32)
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
            raise TypeError("frame must be an HxW or HxWx3 uint8 numpy array (RGB) or a (C, H, W) float tensor, "
                            f"got {type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}")
        a = to_model_frame(frame, self.cfg.image_size, self.cfg.in_channels)
        return torch.from_numpy(np.array(a)).to(self.device).float().mul_(1 / 127.5).sub_(1.0)

    def push(self, frame):
        out = self.push_batch(self.preprocess(frame)[None])
        if out is None:
            return None
        return {k: (v[0] if k == "error_map" else v[0].item()) for k, v in out.items()}

    @torch.no_grad()
    def push_batch(self, frames):
        c = self.cfg
        want = (c.in_channels, c.image_size, c.image_size)
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or tuple(frames.shape[1:]) != want:
            raise ValueError(f"frames must be a (B, C, H, W) = (B, {', '.join(map(str, want))}) tensor, got "
                             f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
        frames = frames.to(self.device, torch.float32)
        if self.batch is not None and frames.shape[0] != self.batch:
            raise ValueError(f"frames has batch {frames.shape[0]} but this stream has {self.batch}; call reset()")
        self.batch = B = frames.shape[0]
        T = c.clip_len
        if self.step.flow:
            self._update_flow(frames)
        if self.n_seen < T:  # history filling: encoder only (and the ring's projections, in the step's autocast)
            with self._autocast():
                feats = self.step.encode(frames)
                if self.ring is None or self.ring.batch != B or self.ring.bufs[0].dtype != feats[0].dtype:
                    self.ring = self._graphs = None  # (frees the old graphs and buffers first)
                    # (the compiled step reads the window alone: no projection rings)
                    self.ring = StateRing(feats, T, model=self.step.model if self._compiled is None else None)
                self.ring.write(feats, self.n_seen)
            out = None
        else:
            out = self._run_step(frames)  # (outside any autocast region: the step enters its own)
        self.prev = frames
        self.n_seen += 1
        if out is None:
            return None
        # two device->host copies per frame (the three scalars stacked, the error map), not four
        host = _to_host([torch.stack([r.float() for r in out[:3]])] + ([out[3][:, 0].float()] if self.error_maps
                                                                          else []))
        sam = host[0].astype(np.float64)
        out = {"score": sam[0], "appearance": sam[1], "motion": sam[2]}
        if self.error_maps:
            out["error_map"] = host[1]
        out.update(self._alerts(out["score"]))
        return out

    def _update_flow(self, frames):
        """Flow models: grey uint8 images of ``frames`` (exactly the offline loader's: the float frames are
        uint8 / 127.5 - 1) and the flow from the previous frame of each stream, (B, 2, H, W) float32 (via float16,
        as the offline store keeps it)."""
        u8 = ((frames.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        from m2s2l.data.store import gray_u8
        gray = gray_u8(u8)
        if self.prev_gray is not None:
            pairs = list(zip(self.prev_gray, gray))
            if len(pairs) == 1:
                flow = self._thread_flow(pairs[0])[None]
            else:  # B streams: OpenCV releases the GIL, so the per-stream flows run in parallel host threads
                if self._flow_pool is None:
                    self._flow_pool = concurrent.futures.ThreadPoolExecutor(min(len(pairs), os.cpu_count() or 1))
                flow = np.stack(list(self._flow_pool.map(self._thread_flow, pairs)))
            self.flow = torch.from_numpy(flow).to(self.device).float()
        self.prev_gray = gray

    def _thread_flow_fn(self):
        """This thread's flow function (``m2s2l.data.store.flow_fn``), created on first use."""
        fn = getattr(self._flow_local, "fn", None)
        if fn is None:
            from m2s2l.data.store import flow_fn
            fn = self._flow_local.fn = flow_fn(self._flow_method)
        return fn

    def _thread_flow(self, pair):
        return self._thread_flow_fn()(*pair)

    def _run_step(self, frames):
        """(score, appearance, motion, error_map) of frame ``n_seen``, its pyramid written into the ring (the step
        replayed as the graph of its ring phase with ``cuda_graphs``)."""
        motion_in = self.flow if self.step.flow else self.prev
        n = self.n_seen
        if not self._cuda_graphs:
            return self._ring_step(frames, motion_in, n)
        g = self._graphs
        if g is None or any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip((frames, motion_in), g["in"])):
            self._graphs = None  # new input shapes / dtypes: capture again (frees the old graphs first)
            g = self._graphs = {"in": [frames.clone(), motion_in.clone()], "phase": {}, "pool": None}
        for dst, src in zip(g["in"], (frames, motion_in)):
            dst.copy_(src)
        phase = n % self.ring.M
        if phase not in g["phase"]:  # (the phase's writes into the ring are the same on every call)
            g["phase"][phase] = capture_graph(lambda: self._ring_step(*g["in"], n), pool=g["pool"],
                                               device=self.device)
            g["pool"] = g["phase"][phase][0].pool()
        graph, out = g["phase"][phase]
        graph.replay()
        return out

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _ring_step(self, frames, motion_in, n):
        """The step of frame ``n`` in its own autocast region (``amp``). Its own, not an enclosing one: captured
        as a CUDA graph from outside any region, the weights' bf16 casts are made once a call inside the graph with
        autocast's cache on (``capture_graph``); inside an enclosing region the cache had to be off (one cast a use
        of a weight), which measured 1.5x slower at 32 streams in bench/fps.py (H100, session 20:
        2452 vs 3713 frames/s, docs/BENCHMARKS.md)."""
        with self._autocast():
            if self._compiled is None:
                return self.step.ring_forward(frames, motion_in, self.ring, n)
            from .export import pure_torch_ops  # the compiled step without the roll: window in, frame's pyramid out
            with pure_torch_ops():
                res = self._compiled(frames, motion_in, *self.ring.window(n))
            self.ring.write(res[4:], n)
            return res[:4]

    def _alerts(self, raw):
        B = raw.shape[0]
        if self._alert is None:
            self._alert, self._run = np.zeros(B, bool), np.zeros(B, np.int64)
        if self.calibration is None:
            nan = np.full(B, np.nan)
            return {"normalised": nan, "above": np.zeros(B, bool), "alert": self._alert.copy()}
        above = raw > self.threshold
        flip = above != self._alert          # frames contradicting the current alert state
        self._run = np.where(flip, self._run + 1, 0)
        switch = self._run >= self.hysteresis
        self._alert = np.where(switch, ~self._alert, self._alert)
        self._run[switch] = 0
        return {"normalised": (raw - self.calibration["mean"]) / self.calibration["std"], "above": above,
                "alert": self._alert.copy()}


def score_frames(scorer, frames, csv_file, overlay=None, max_frames=0, progress=None):
    """The streaming loop of ``m2s2l score``: push every ``(index, frame)`` of ``frames`` (any iterable, e.g. a
    ``FrameSource`` or a generator) into ``scorer`` and write one CSV row per scored frame to the open text file
    ``csv_file`` (flushed per row; nothing per frame is kept). ``progress(i, n_read)`` is called after every
    frame. Returns (n_read, n_scored, n_alert_frames)."""
    w = csv.writer(csv_file)
    w.writerow(["frame", "score", "normalised", "alert", "appearance", "motion"])
    n_read = n_scored = n_alert_frames = 0
    for i, frame in frames:
        if max_frames and n_read >= max_frames:
            break
        n_read += 1
        res = scorer.push(frame)
        if res is not None:
            n_scored += 1
            n_alert_frames += int(res["alert"])
            w.writerow([i, f"{res['score']:.6g}", f"{res['normalised']:.4f}", int(res["alert"]),
                        f"{res['appearance']:.6g}", f"{res['motion']:.6g}"])
            csv_file.flush()
            if overlay is not None:
                overlay.add(frame, res, scorer.threshold)
        if progress is not None:
            progress(i, n_read)
    return n_read, n_scored, n_alert_frames


def run_score(args):
    """Body of ``m2s2l score``; returns the exit code (0, or 1 when no frame could be scored)."""
    from .checkpoint import load_checkpoint
    from .evaluate import apply_backend
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    src = FrameSource(args.input)  # errors (not a video, missing) before the model loads
    model, ckpt = load_checkpoint(args.ckpt, device)
    apply_backend(model, args.backend, device)
    cal = ckpt.get("calibration")
    if cal is None:
        print("warning: the checkpoint has no calibration: no normalised scores and no alerts", file=sys.stderr)
    scorer = StreamScorer(model, cal, device, hysteresis=args.hysteresis, threshold_z=args.threshold_z,
                          amp=args.amp, compile=args.compile, cuda_graphs=args.cuda_graphs,
                          branches={"auto": None, "on": True, "off": False}[args.branches],
                          flow_method=(ckpt.get("train_args") or {}).get("flow_method", "dis"),
                          error_maps=bool(args.overlay))  # (only the overlay draws the maps)
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "scores.csv")
    overlay = Overlay(os.path.join(args.out, "overlay.mp4"), src.fps) if args.overlay else None
    t0, t_print = time.time(), [time.time()]

    def progress(i, n_read):
        if time.time() - t_print[0] > args.progress_every:
            total = f"/{src.total}" if src.total else ""
            print(f"score: frame {i + 1}{total}, {n_read / (time.time() - t0):.1f} frames/s, "
                  f"{src.skipped} skipped", flush=True)
            t_print[0] = time.time()
    with open(csv_path, "w", newline="") as f:
        n_read, n_scored, n_alert_frames = score_frames(scorer, src, f, overlay, args.max_frames, progress)
    if overlay is not None:
        overlay.close()
    dt = max(time.time() - t0, 1e-9)
    if n_read == 0:
        print(f"m2s2l score: error: no frame could be read from {args.input!r}", file=sys.stderr)
        return 1
    plot_scores(csv_path, os.path.join(args.out, "score_curve.png"), scorer.threshold)
    print(f"score: {n_read} frames read, {n_scored} scored (the first {model.config.clip_len} have no history), "
          f"{src.skipped} skipped, {n_alert_frames} frames in alert, {n_read / dt:.1f} frames/s -> {args.out}")
    return 0 if n_scored else 1


def add_parser(subparsers):
    p = subparsers.add_parser("score", help="score a video file, frames folder, camera or stream in real time")
    p.add_argument("input", help="video file, folder of frame images, camera index (0) or URL (rtsp://...)")
    p.add_argument("--ckpt", required=True, help="checkpoint (model.pt); its calibration gives the alert threshold")
    p.add_argument("--out", required=True, help="output folder: scores.csv, score_curve.png[, overlay.mp4]")
    p.add_argument("--overlay", action="store_true", help="write overlay.mp4 (frame, error heatmap, score strip)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after reading N frames (0 = all)")
    p.add_argument("--hysteresis", type=int, default=3, help="alert on/off after K consecutive frames above/below")
    p.add_argument("--threshold-z", type=float, default=None, help="alert threshold mean + Z*std (default: the "
                   "calibrated quantile threshold)")
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    p.add_argument("--backend", default="auto", help="kernel backend: auto|triton|cuda|torch (auto = torch on CPU)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile the step (pure-PyTorch Mamba ops): much "
                   "faster on CPU after a compile of minutes at the first scored frame")
    p.add_argument("--cuda-graphs", action="store_true", help="CUDA: replay the scoring step as a CUDA graph "
                   "(captured at the first scored frame; far fewer launches per frame)")
    p.add_argument("--branches", choices=("auto", "on", "off"), default="auto", help="CUDA: run the step's "
                   "independent parts (pyramid levels, temporal scales, decoders, the new frame's encoder) on "
                   "parallel CUDA streams (auto: with --cuda-graphs, without --compile)")
    p.set_defaults(func=run_score)
