"""The streaming step: one frame's scoring from the T cached pyramids before it (state in, state out, or the
state kept in place in a ring buffer), and the runner that executes its independent parts on parallel CUDA
streams. ``StreamScorer`` (``m2s2l.engine.stream``) drives it frame by frame; ``m2s2l export`` exports it."""
import torch
import torch.nn as nn

from m2s2l.models import scoring


class CudaBranches:
    """A runner for ``M2S2L.forward_features(..., run=)``: executes a list of independent zero-argument callables
    concurrently on CUDA streams and returns their results in order.

    The first callable runs on the current stream, each other one on a side stream (taken round-robin from a pool
    of ``n_streams``) that first waits for the current stream; the current stream then waits for every side stream
    before the call returns, so results are ordered before whatever follows, and every result tensor is recorded
    on the current stream for the caching allocator. Inside a CUDA graph capture this turns the step into a graph
    with parallel branches: a batch-1 step is bound by the latency of hundreds of small kernels in a row, and the
    pyramid levels, temporal scales, decoders and the new frame's encoder pass need not wait for one another.
    Nested calls (a branch forking again) are allowed. Results equal serial execution (the same kernels on the
    same inputs)."""

    def __init__(self, device, n_streams=8):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CudaBranches needs a CUDA device, got {self.device}")
        if n_streams < 1:
            raise ValueError(f"n_streams must be >= 1, got {n_streams}")
        self.streams = [torch.cuda.Stream(self.device) for _ in range(n_streams)]
        self._next = 0

    def __call__(self, thunks):
        cur = torch.cuda.current_stream(self.device)
        out, used = [None] * len(thunks), []
        for k in range(1, len(thunks)):
            s = self.streams[self._next % len(self.streams)]
            self._next += 1
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                out[k] = thunks[k]()
            used.append(s)
        if thunks:
            out[0] = thunks[0]()
        for s in used:
            cur.wait_stream(s)
        if not torch.compiler.is_compiling():  # (under torch.compile the compiled graph plans its own buffers)
            _record_stream(out, cur)
        return out


def _record_stream(x, stream):
    if isinstance(x, torch.Tensor):
        if x.is_cuda:
            x.record_stream(stream)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _record_stream(v, stream)
    elif isinstance(x, dict):
        for v in x.values():
            _record_stream(v, stream)


def capture_graph(fn, warmups=2, pool=None, device=None):
    """(graph, outputs) of ``fn()`` captured as a CUDA graph (in memory pool ``pool``, e.g. ``other.pool()`` of a
    graph never replayed concurrently with this one), after ``warmups`` eager calls on a side stream (kernel
    compilation, cuDNN algorithm choice, allocator). ``fn``'s effects must be the same on every call.

    Called inside an autocast region, autocast's weight-cast cache is off for the warm-ups and the capture: with it
    the graph would read the bf16 weight copies cached by the warm-ups, which live in that region's cache, are freed
    when it ends and are then handed to other tensors; the casts are in the graph instead, one a use (1.5x slower
    at 32 streams, docs/BENCHMARKS.md session 20). Outside any region the cache is left as it is: an ``fn`` that
    enters autocast itself keeps the cache for the duration of the call, so its casts are made once a call inside
    the graph, in the graph's memory -- how ``StreamScorer`` and ``bench/fps.py`` capture. ``device``: the CUDA
    device (default the current one)."""
    cache = torch.is_autocast_cache_enabled()
    if torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu"):
        torch.set_autocast_cache_enabled(False)
    try:
        cur = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            for _ in range(warmups):
                fn()
        cur.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
    finally:
        torch.set_autocast_cache_enabled(cache)
    return graph, out


class StateRing:
    """The streaming state kept in place: per pyramid level a ring buffer (B, H_l, W_l, 2M, C_l), M = T + 1 slots,
    each frame's features written twice (frame n at slots n % M and n % M + M), so that the T newest frames are
    always the contiguous run of slots ``[(n - 1) % M + 2, (n - 1) % M + 2 + T)`` after n frames: a view, in the
    (B, H, W, T, C) memory order the temporal encoders read in place (``StreamStep.STATE_ORDER``; rows of T steps
    with a row stride of 2M steps).

    What it saves: ``StreamStep.roll`` copies (T - 1) / T of the state into a new tensor every frame, and a CUDA
    graph then copies the new state back into its static input -- two passes over the whole state (32 streams of
    m2s2l_paper in bf16: 252 MB) a frame; here a frame writes only its own features, twice. While frame n's
    features are written (slots n % M, n % M + M) frame n is scored from the window after n frames, which does
    not contain those slots, so the two can run concurrently (``CudaBranches``). The window's place depends on
    n % M only: a CUDA graph of a step is captured per phase (M graphs).

    Projection rings (``model`` given, ``model.projectable(window)`` and ``StateRing.project`` on): the temporal
    blocks' first ops -- pooling, LayerNorm and in_proj -- see only the frames' own features, so ``write`` also
    computes them for the newest pooled step of each level and temporal scale, once a frame
    (``MultiTemporalMamba.project_into``), into rings of their own: the x half (B, H, W, 2M, d_inner) written
    twice as the features, the gate half (B, H, W, M, d_inner) once; ``proj_window(n)`` gives what
    ``M2S2L.forward_features(..., proj=)`` reads instead of projecting all T / s steps of the window each frame;
    for scales s > 1 the pooled step itself too (B, H, W, M, C_l), the block's residual.
    Frames before the first are zero features, so the projection rings start as the projection of a zero row,
    computed at construction: construct the ring under the autocast setting the steps run with.

    ``StateRing(feats, clip_len, model=None)``: zeros shaped, typed and placed like ``feats`` (a list of
    (B, C_l, H_l, W_l) pyramids, e.g. the first frame's). ``window(n)``: the state after n frames, per level a
    (B, T, C_l, H_l, W_l) view, oldest frame first (zeros for frames before the first). ``write(feats, n)``: store
    frame n (and its projections). ``proj_window(n)``: None without projection rings."""

    # None (default): projection rings on CUDA from ``min_rows_cuda`` rows (batch x H_0 x W_0) of the first level up
    # -- H100, m2s2l_paper: 32 streams (524288 rows) 3755 -> 3929 frames/s, but batch 1 (16384 rows, a latency-bound
    # step: the extra small kernels of each write) 1428 -> 1237 (docs/BENCHMARKS.md, session 21) -- and not on CPU
    # (m2s2l_lite, batch 1, 2 threads: 35.1 vs 35.5 frames/s, within the noise). True / False: always / never (A/B
    # switch; bench/fps.py --proj-ring).
    project = None
    min_rows_cuda = 131072

    def __init__(self, feats, clip_len, model=None):
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        self.T, self.M = int(clip_len), int(clip_len) + 1
        self.bufs = [f.new_zeros(f.shape[0], *f.shape[2:], 2 * self.M, f.shape[1]) for f in feats]
        self.model, self.xbufs, self.zbufs, self.pbufs, self._zero = None, None, None, None, None
        can = getattr(model, "projectable", None)  # (a model without it, e.g. a stand-in: no projection rings)
        if self._wants_proj() and callable(can) and can(self.window(0)):
            self._init_proj(model)

    def _wants_proj(self):
        if self.project is not None:
            return bool(self.project)
        b = self.bufs[0]
        return b.device.type == "cuda" and b.shape[0] * b.shape[1] * b.shape[2] >= self.min_rows_cuda

    def _init_proj(self, model):
        self.model = model
        temporal = list(model.temporal)
        if len(temporal) != len(self.bufs):
            raise ValueError(f"model has {len(temporal)} pyramid levels, the features {len(self.bufs)}")
        self.xbufs, self.zbufs, self.pbufs, self._zero = [], [], [], []
        with torch.no_grad():
            for tm, b in zip(temporal, self.bufs):
                B, H, W, _, C = b.shape
                if max(tm.scales) > self.T:
                    raise ValueError(f"temporal scales {tm.scales} exceed clip_len={self.T}")
                d = [br[0].mixer.d_inner for br in tm.branches]
                # the projection of a zero row (frames before the first), in the dtype the steps produce
                zero = b.new_zeros(1, 1, 1, max(tm.scales), C)
                xo = [[torch.empty(1, 1, 1, di, device=b.device, dtype=self._proj_dtype(b))] for di in d]
                zo = [torch.empty(1, 1, 1, di, device=b.device, dtype=xo[0][0].dtype) for di in d]
                tm.project_into(zero, xo, zo)
                self._zero.append([(x[0].view(-1), z.view(-1)) for x, z in zip(xo, zo)])
                self.xbufs.append([b.new_empty(B, H, W, 2 * self.M, di, dtype=xo[0][0].dtype) for di in d])
                self.zbufs.append([b.new_empty(B, H, W, self.M, di, dtype=xo[0][0].dtype) for di in d])
                # scales s > 1: the pooled step (mean of the s newest frames) itself, once a frame: the residual
                self.pbufs.append([None if s == 1 else b.new_zeros(B, H, W, self.M, C) for s in tm.scales])
        self._fill_proj()

    @staticmethod
    def _proj_dtype(b):
        dev = b.device.type
        return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else b.dtype

    def _fill_proj(self):
        if self.xbufs is None:
            return
        for xs, zs, ps, zero in zip(self.xbufs, self.zbufs, self.pbufs, self._zero):
            for x, z, p, (x0, z0) in zip(xs, zs, ps, zero):
                x.copy_(x0.expand_as(x))
                z.copy_(z0.expand_as(z))
                if p is not None:
                    p.zero_()

    @property
    def batch(self):
        return self.bufs[0].shape[0]

    def zero_(self):
        for b in self.bufs:
            b.zero_()
        self._fill_proj()
        return self

    def window(self, n):
        s = (n - 1) % self.M + 2
        return [b[:, :, :, s:s + self.T].permute(0, 3, 4, 1, 2) for b in self.bufs]

    def proj_window(self, n):
        """The projections of the window after n frames: per level, per temporal scale s a triple (x (B, H, W,
        T / s, d_inner) views of the pooled steps ending at frames n - 1 - T + s, ..., n - 1 (every s-th), z (B, H,
        W, d_inner) of the one ending at frame n - 1, and that pooled step itself (B, H, W, C_l), the block's
        residual): ``M2S2L.forward_features``'s ``proj``. None without projection rings."""
        if self.xbufs is None:
            return None
        out, last = [], (n - 1) % self.M
        for tm, b, xs, zs, ps in zip(self.model.temporal, self.bufs, self.xbufs, self.zbufs, self.pbufs):
            lvl = []
            for s, x, z, p in zip(tm.scales, xs, zs, ps):
                a = (n - self.T + s - 1) % self.M
                res = b[:, :, :, last] if p is None else p[:, :, :, last]       # the newest pooled step itself
                lvl.append((x[:, :, :, a:a + self.T - s + 1:s], z[:, :, :, last], res))
            out.append(lvl)
        return out

    def write(self, feats, n):
        j = n % self.M
        for b, f in zip(self.bufs, feats):
            v = f.permute(0, 2, 3, 1)                                                    # (B, H, W, C)
            b[:, :, :, j].copy_(v)
            b[:, :, :, j + self.M].copy_(v)
        if self.xbufs is None:
            return
        for tm, b, xs, zs, ps in zip(self.model.temporal, self.bufs, self.xbufs, self.zbufs, self.pbufs):
            s_max = max(tm.scales)
            a = (n - s_max + 1) % self.M                       # frames n - s_max + 1 .. n: contiguous slots
            tm.project_into(b[:, :, :, a:a + s_max], [[x[:, :, :, j], x[:, :, :, j + self.M]] for x in xs],
                            [z[:, :, :, j] for z in zs], [None if p is None else p[:, :, :, j] for p in ps])


class StreamStep(nn.Module):
    """One streaming step as a pure function (state in, state out) -- also what ``m2s2l export`` exports.

    forward(frame (B, C, H, W), motion_in, *state) -> (score (B,), appearance (B,), motion (B,),
    error_map (B, 1, H, W), *new_state); frames in [-1, 1]; ``state[l]`` (B, T, C_l, H_l, W_l) holds the encoder
    pyramids of the T frames before ``frame`` (oldest first) and ``new_state[l]`` those of the T frames ending
    with ``frame``. ``motion_in`` is what the model's motion target is made of: for ``motion_target="diff"``
    models the frame just before ``frame`` (B, C, H, W); for ``"flow"`` models the optical flow from that frame to
    ``frame`` (B, 2, H, W), computed outside the graph with :func:`m2s2l.data.store.flow_fn` (OpenCV), exactly as
    training and evaluation compute it.

    ``run`` (e.g. :class:`CudaBranches`): a runner for independent work -- the new frame's encoder pass beside the
    prediction from the state, and the model's own branches (``forward_features(feats, run=)``); None runs
    everything in order (what ONNX export traces)."""

    def __init__(self, model, run=None):
        super().__init__()
        self.model = model
        self.flow = getattr(model.config, "motion_target", "diff") == "flow"
        self.run = run

    def encode(self, frame):
        return self.model.encode_frames(frame)

    # Memory order of the state tensors roll() returns: (B, H, W, T, C) under the logical (B, T, C, H, W) shape, so
    # the temporal encoders' (B*H*W, T, C) rows are a view of the state (MultiTemporalMamba reads them so) instead
    # of a layout copy of every level each step; values and shapes are unchanged. H100, m2s2l_paper, 32 streams:
    # those copies were ~0.77 ms of device time a step (docs/BENCHMARKS.md, session 16).
    STATE_ORDER = (0, 3, 4, 1, 2)
    permuted_state = True  # False: roll() concatenates into contiguous (B, T, C, H, W) tensors (bench/fps.py A/B)

    @classmethod
    def state_layout(cls, t):
        """``t`` (B, T, C, H, W) in the state's memory order (a copy unless it already is; unchanged when
        ``permuted_state`` is off)."""
        if t.dim() != 5 or not cls.permuted_state or t.permute(*cls.STATE_ORDER).is_contiguous():
            return t
        return cls._empty_state(t).copy_(t)

    @classmethod
    def _empty_state(cls, like):
        return torch.empty_permuted(like.shape, cls.STATE_ORDER, dtype=like.dtype, device=like.device)

    def roll(self, state, feats):
        """Append one frame's pyramid (list of (B, C_l, H_l, W_l)) to the state, dropping the oldest frame; the new
        state tensors are in ``STATE_ORDER`` (a plain concatenation while tracing or exporting to ONNX, where
        memory order does not exist)."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or not self.permuted_state:
            return [torch.cat([s[:, 1:], f[:, None].to(s.dtype)], dim=1) for s, f in zip(state, feats)]
        out = []
        for s, f in zip(state, feats):
            n = self._empty_state(s)
            n[:, :-1].copy_(s[:, 1:])
            n[:, -1].copy_(f)
            out.append(n)
        return out

    def _score(self, frame, motion_in, state, proj=None):
        kw = {} if self.run is None else {"run": self.run}
        if proj is not None:
            kw["proj"] = proj
        pred = self.model.forward_features(list(state), **kw)
        mt = motion_in if self.flow else (frame - motion_in) * 0.5
        s = scoring.score(self.model.config, pred, frame, mt)
        return s["score"], s["appearance"], s["motion"], s["error_map"]

    def _both(self, score, advance):
        return [score(), advance()] if self.run is None else self.run([score, advance])

    def score_and_encode(self, frame, motion_in, *state):
        """The step without the roll: (score, appearance, motion, error_map, *frame's pyramid) -- what a
        :class:`StateRing` needs from a compiled step (``ring.write`` stores the pyramid)."""
        s, feats = self._both(lambda: self._score(frame, motion_in, state), lambda: self.encode(frame))
        return (*s, *feats)

    def forward(self, frame, motion_in, *state):
        s, new_state = self._both(lambda: self._score(frame, motion_in, state),
                                  lambda: self.roll(list(state), self.encode(frame)))
        return (*s, *new_state)

    def ring_forward(self, frame, motion_in, ring, n):
        """``forward`` with the state in a :class:`StateRing` (no state copies): scores ``frame`` as frame ``n``
        (a Python int: the frames before it are the ring's ``window(n)``) and writes its pyramid into the ring as
        frame n (with its projections, where the ring keeps them: ``StateRing``, read back through
        ``proj_window(n)``). Returns (score, appearance, motion, error_map)."""
        return self._both(lambda: self._score(frame, motion_in, ring.window(n), ring.proj_window(n)),
                          lambda: ring.write(self.encode(frame), n))[0]
