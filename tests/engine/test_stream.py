"""Streaming scores == offline clip scores; alerts with hysteresis; ``m2s2l score`` on a generated video."""
import copy
import csv
import os

import numpy as np
import pytest
import torch

from m2s2l.cli import main
from m2s2l.data.frames import Clip, read_clip
from m2s2l.engine.calibrate import calibrate
from m2s2l.engine.checkpoint import make_checkpoint, save_checkpoint
from m2s2l.engine.stream import CudaBranches, StreamScorer, StreamStep
from m2s2l.models import create_model
from m2s2l.ops import triton_available

cv2 = pytest.importorskip("cv2")
# fp32 on CPU: the encoder runs per frame in streaming but per clip offline (same math, different batching),
# scores are in dB (~ -10 .. +10): they agree to ~1e-5; the test allows 1e-4 dB.
ATOL = 1e-4


def tiny(channels=1, seed=0):
    """A small model with non-trivial BatchNorm statistics (the scorer folds them into its convolutions)."""
    torch.manual_seed(seed)
    model = create_model("m2s2l_lite", image_size=32, in_channels=channels, backend="torch").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.1)
    return model


def moving_frames(n, h=48, w=80, seed=0):
    """n RGB uint8 frames (h, w, 3) of a bright square moving over noise (not the model's size or aspect)."""
    g = np.random.default_rng(seed)
    base = g.integers(0, 60, (h, w, 3), dtype=np.uint8)
    out = []
    for t in range(n):
        f = base.copy()
        x = (3 * t) % (w - 12)
        f[10:22, x:x + 12] = (220, 200, 180)
        out.append(f)
    return out


def offline_scores(model, frames_u8):
    """model.score on the clip of the T frames before every target t >= T (the evaluate.py protocol)."""
    x = torch.from_numpy(frames_u8).float() / 127.5 - 1
    T = model.config.clip_len
    idx = torch.arange(T, len(x))
    clip = x[idx[:, None] + torch.arange(-T, 0)]
    return model.score({"clip": clip, "target": x[idx]})["score"].double().numpy()


@pytest.mark.parametrize("channels", [1, 3])
def test_stream_equals_offline(channels):
    model = tiny(channels)
    frames = moving_frames(16)  # T = 4: 12 scored frames, every phase of the state ring (T + 1) twice
    T = model.config.clip_len
    from m2s2l.data.frames import to_model_frame
    u8 = np.stack([to_model_frame(f, 32, channels) for f in frames])
    ref = offline_scores(model, u8)
    scorer = StreamScorer(model)
    got = [scorer.push(f) for f in frames]
    assert all(r is None for r in got[:T]) and all(r is not None for r in got[T:])
    s = np.array([r["score"] for r in got[T:]])
    np.testing.assert_allclose(s, ref, rtol=0, atol=ATOL)
    assert got[-1]["error_map"].shape == (32, 32) and np.isnan(got[-1]["normalised"])
    assert len(scorer.state) == 4 and all(st.shape[1] == T for st in scorer.state)  # constant state size
    # error_maps=False (m2s2l score without --overlay): the same results without the maps
    lean = StreamScorer(model, error_maps=False)
    res = [lean.push(f) for f in frames][T:]
    assert all("error_map" not in r for r in res)
    np.testing.assert_array_equal([r["score"] for r in res], s)


def test_scorer_folds_batchnorm_in_its_own_copy():
    """fuse_bn (default): the scorer's copy has no BatchNorm, the caller's model keeps its own, and the scores equal
    those of the unfolded model (fuse_bn=False) to float32 rounding."""
    model = tiny(3)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    fused, plain = StreamScorer(model), StreamScorer(model, fuse_bn=False)
    assert n_bn > 0 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.model.modules()) and plain.model is model
    frames = moving_frames(7)
    a = [fused.push(f) for f in frames][model.config.clip_len:]
    b = [plain.push(f) for f in frames][model.config.clip_len:]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], rtol=0, atol=ATOL)


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device"):
        StreamScorer(tiny(), device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="branches needs a CUDA device"):
        StreamScorer(tiny(), device="cpu", branches=True)
    with pytest.raises(ValueError, match="CudaBranches needs a CUDA device"):
        CudaBranches("cpu")
    assert StreamScorer(tiny(), device="cpu").step.run is None  # auto: no branches off CUDA


@pytest.mark.gpu
def test_branches_default_and_compile_gpu():
    """branches=None: on exactly with cuda_graphs and without compile; branches with compile is refused."""
    model = tiny(3).cuda()
    assert isinstance(StreamScorer(model, device="cuda", cuda_graphs=True).step.run, CudaBranches)
    assert StreamScorer(model, device="cuda").step.run is None
    assert StreamScorer(model, device="cuda", cuda_graphs=True, compile=True).step.run is None
    with pytest.raises(ValueError, match="branches cannot be combined with compile"):
        StreamScorer(model, device="cuda", compile=True, branches=True)


def test_stream_step_runner_runs_encoder_beside_prediction():
    """StreamStep(model, run=R): R gets [prediction + score, the new frame's encoder pass + roll] and the model's
    branches; executing every group in reverse order gives exactly the serial step."""
    model = tiny(3)
    c = model.config
    g = torch.Generator().manual_seed(0)
    frame, prev = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    state = [torch.randn(2, c.clip_len, *s, generator=g) for s in model.feature_shapes()]
    calls = []

    def backwards(thunks):
        calls.append(len(thunks))
        return [f() for f in thunks[::-1]][::-1]
    with torch.no_grad():
        ref = StreamStep(model)(frame, prev, *state)
        got = StreamStep(model, run=backwards)(frame, prev, *state)
    assert calls[0] == 2 and len(calls) == 3 + len(c.widths) and len(got) == len(ref) == 4 + len(c.widths)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_roll_state_layout_and_values(monkeypatch):
    """roll() returns the concatenation's values exactly, in (B, H, W, T, C) memory order (STATE_ORDER), from a
    contiguous or an already permuted state; the temporal encoders' (B*H*W, T, C) rows are then a view of it; the
    whole step gives the same outputs from either layout; while tracing it is the plain concatenation."""
    model = tiny(3)
    c = model.config
    g = torch.Generator().manual_seed(0)
    state = [torch.randn(2, c.clip_len, *s, generator=g) for s in model.feature_shapes()]
    feats = [torch.randn(2, *s, generator=g).contiguous(memory_format=torch.channels_last)
             for s in model.feature_shapes()]
    step = StreamStep(model)
    ref = [torch.cat([s[:, 1:], f[:, None]], 1) for s, f in zip(state, feats)]
    for src in (state, [StreamStep.state_layout(s) for s in state]):
        new = step.roll(src, feats)
        for n, r in zip(new, ref):
            assert torch.equal(n, r)
            assert n.permute(*StreamStep.STATE_ORDER).is_contiguous() and not n.is_contiguous()
            B, T, C, H, W = n.shape
            rows = n.permute(0, 3, 4, 1, 2).reshape(B * H * W, T, C)
            assert rows.data_ptr() == n.data_ptr() and rows._base is not None  # a view, no copy
    perm = [StreamStep.state_layout(s) for s in state]
    assert all(torch.equal(p, s) for p, s in zip(perm, state))
    assert StreamStep.state_layout(perm[0]) is perm[0]
    frame, prev = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        a, b = step(frame, prev, *state), step(frame, prev, *perm)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)
    traced = torch.jit.trace(lambda *s: tuple(step.roll(list(s), feats)), tuple(state), check_trace=False)
    assert "aten::cat" in str(traced.graph)
    monkeypatch.setattr(StreamStep, "permuted_state", False)  # the A/B switch: contiguous concatenation
    assert all(n.is_contiguous() and torch.equal(n, r) for n, r in zip(step.roll(state, feats), ref))
    assert StreamStep.state_layout(state[0]) is state[0]


def test_state_ring_windows_equal_the_rolled_state():
    """StateRing: after every frame n (over three turns of the ring) window(n) equals the state roll() builds, is a
    view of the ring (the temporal encoders' (B*H*W, T, C) rows too), and writing frame n leaves window(n) -- what
    frame n is scored from -- unchanged; ring_forward equals forward on that state; zero_ clears it."""
    from m2s2l.engine.stream import StateRing
    model = tiny(3)
    c = model.config
    T = c.clip_len
    g = torch.Generator().manual_seed(0)
    frames = [[torch.randn(2, *s, generator=g).contiguous(memory_format=torch.channels_last)
               for s in model.feature_shapes()] for _ in range(3 * (T + 1) + 2)]
    ring = StateRing(frames[0], T)
    state = [torch.zeros(2, T, *s) for s in model.feature_shapes()]
    step = StreamStep(model)
    for n, feats in enumerate(frames):
        win = ring.window(n)
        assert all(torch.equal(w, s) for w, s in zip(win, state)), n
        before = [w.clone() for w in win]
        ring.write(feats, n)
        assert all(torch.equal(w, b) for w, b in zip(ring.window(n), before)), n
        state = step.roll(state, feats)
    w = ring.window(len(frames))[0]
    B, T_, C, H, W = w.shape
    rows = w.permute(0, 3, 4, 1, 2).reshape(B * H * W, T_, C)
    assert rows._base is not None and rows.data_ptr() == w.data_ptr()       # a view of the ring, no copy
    frame, prev = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    n = len(frames)
    with torch.no_grad():
        ref = step(frame, prev, *ring.window(n))
        got = step.ring_forward(frame, prev, ring, n)
    assert all(torch.equal(a, b) for a, b in zip(got, ref[:4]))
    assert all(torch.equal(a, b) for a, b in zip(ring.window(n + 1), ref[4:]))  # the new frame, written
    assert all(not b.any() for b in ring.zero_().bufs)
    with pytest.raises(ValueError, match="clip_len must be >= 1"):
        StateRing(frames[0], 0)


@pytest.mark.parametrize("scales", [(1, 2), (1, 2, 4)])
def test_projection_rings_equal_projecting_every_step(scales, monkeypatch):
    """StateRing with the model: each frame's LayerNorm + in_proj of every level and scale is computed once, on
    write; proj_window(n) holds exactly in_proj(norm(pooled window)) of the T / s pooled steps (x half) and the
    newest one's gate; ring_forward with it equals ring_forward without it over three turns of the ring (every
    phase), from the first frame on (zero history = the projection of zero rows) and after zero_."""
    from m2s2l.engine.stream import StateRing
    torch.manual_seed(0)
    model = create_model("m2s2l_lite", image_size=32, in_channels=3, backend="torch", temporal_scales=scales).eval()
    c, T = model.config, model.config.clip_len
    g = torch.Generator().manual_seed(1)
    frames = [(torch.rand(2, 3, 32, 32, generator=g) * 2 - 1) for _ in range(3 * (T + 1) + 2)]
    step = StreamStep(model)
    monkeypatch.setattr(StateRing, "project", True)  # (the default leaves them off on CPU)
    with torch.no_grad():
        feats0 = model.encode_frames(frames[0])
        plain, proj = StateRing(feats0, T), StateRing(feats0, T, model=model)
        assert plain.proj_window(0) is None and proj.proj_window(0) is not None
        for turn in range(2):
            for n, f in enumerate(frames):
                if n:  # (frame 0 has no previous frame; the history before it is zeros in both rings)
                    ref = step.ring_forward(f, frames[n - 1], plain, n)
                    got = step.ring_forward(f, frames[n - 1], proj, n)
                    for a, b in zip(got, ref):
                        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
                else:
                    feats = model.encode_frames(f)
                    plain.write(feats, n)
                    proj.write(feats, n)
                # what the rings hold: the projections of the pooled window after frame n
                win, pw = proj.window(n + 1), proj.proj_window(n + 1)
                for tm, w, lvl in zip(model.temporal, win, pw):
                    B, _, C, H, W = w.shape
                    rows = w.permute(0, 3, 4, 1, 2).reshape(B * H * W, T, C)
                    for s, br, (x, z, res) in zip(tm.scales, tm.branches, lvl):
                        pooled = rows.reshape(B * H * W, T // s, s, C).mean(2)
                        torch.testing.assert_close(res.reshape(B * H * W, C), pooled[:, -1])
                        xz = br[0].mixer.in_proj(br[0].norm(pooled))
                        d = br[0].mixer.d_inner
                        torch.testing.assert_close(x.reshape(B * H * W, T // s, d), xz[..., :d])
                        torch.testing.assert_close(z.reshape(B * H * W, d), xz[:, -1, d:])
            plain.zero_()
            proj.zero_()
    # StateRing.project: None = by device and size (never on CPU), False = never, True = always
    for flag, want in ((None, False), (False, False), (True, True)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(StateRing, "project", flag)
            assert (StateRing(feats0, T, model=model).proj_window(T) is not None) == want
    # StreamScorer with them (CPU) scores as without
    monkeypatch.setattr(StateRing, "project", False)
    plain_sc = StreamScorer(model)
    ref = [plain_sc.push_batch(f) for f in frames][T:]
    assert plain_sc.ring.xbufs is None
    monkeypatch.setattr(StateRing, "project", True)
    proj_sc = StreamScorer(model)
    got = [proj_sc.push_batch(f) for f in frames][T:]
    assert proj_sc.ring.xbufs is not None
    np.testing.assert_allclose(np.stack([r["score"] for r in got]), np.stack([r["score"] for r in ref]), rtol=0,
                               atol=ATOL)
    # deeper temporal branches see their own outputs, not the frames: no projection rings
    deep = create_model("m2s2l_lite", image_size=32, backend="torch", temporal_depth=2).eval()
    assert not deep.projectable() and StateRing(deep.encode_frames(frames[0][:, :3]), T, model=deep).xbufs is None
    with pytest.raises(ValueError, match="one entry per pyramid level"):
        model.forward_features([w for w in proj.window(3)], proj=proj.proj_window(3)[:1])


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_ring_step_copies_only_the_new_frame(device):
    """What "no state copies" means, counted at the dispatcher: with the Triton kernels a ring step's copy_ writes
    the new frame's pyramid twice beyond the model's own copies (the pure step's roll writes the whole state: T
    frames), and the ring step adds no clone or concatenation to the model's own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from m2s2l.engine.stream import StateRing

    class Copied(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = str(func.overloadpacket)
            if name in ("aten.copy_", "aten.clone", "aten.cat", "aten._to_copy") and isinstance(out, torch.Tensor):
                self.n[name] = self.n.get(name, 0) + out.numel()
            return out
    model = tiny(3).to(device).set_backend("triton")
    step, T = StreamStep(model), model.config.clip_len
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, *s, generator=g).to(device) for s in model.feature_shapes()]
    ring = StateRing(feats, T)
    frame, prev = ((torch.rand(1, 3, 32, 32, generator=g) * 2 - 1).to(device) for _ in range(2))
    per_frame = sum(f.numel() for f in feats)
    with torch.no_grad():
        with Copied() as model_c:                               # the scoring alone (the model's own copies)
            step._score(frame, prev, ring.window(7))
            step.encode(frame)
        with Copied() as ring_c:
            step.ring_forward(frame, prev, ring, 7)
        with Copied() as pure_c:
            step(frame, prev, *ring.window(7))
    own = model_c.n.pop("aten.copy_", 0)
    assert ring_c.n.pop("aten.copy_") - own == 2 * per_frame and pure_c.n.pop("aten.copy_") - own == T * per_frame
    assert ring_c.n == pure_c.n == model_c.n, (ring_c.n, pure_c.n, model_c.n)


@pytest.mark.parametrize("scales", [(1, 2), (2, 4)])
def test_out_fold_equals_the_unfolded_projected_step(scales, monkeypatch):
    """fold_out_projs (the temporal encoders' out_proj and residuals folded into fuse: GEMMs accumulating into one
    output) gives the projected step's scores and maps of the unfolded model, float32 and under bf16 autocast, with
    and without a scale-1 branch (whose block input is the module's own residual); a weight changed in place, or a
    call that needs gradients, falls back to the unfolded ops; fold_out_proj(False) removes the fold."""
    from m2s2l.engine.stream import StateRing
    from m2s2l.models.fuse import fold_out_projs
    torch.manual_seed(0)
    model = create_model("m2s2l_lite", image_size=32, in_channels=3, backend="torch", temporal_scales=scales).eval()
    for p in model.parameters():  # (non-trivial biases and out_proj weights: the fold must carry them)
        p.data.add_(torch.randn_like(p) * 0.05)
    folded = copy.deepcopy(model)
    assert fold_out_projs(folded) == len(model.temporal)
    T = model.config.clip_len
    g = torch.Generator().manual_seed(1)
    frames = [(torch.rand(2, 3, 32, 32, generator=g) * 2 - 1) for _ in range(2 * T + 3)]
    monkeypatch.setattr(StateRing, "project", True)
    calls = {"n": 0}
    orig = type(folded.temporal[0])._fold_weights

    def counted(fold, dtype):  # (the first level's encoder: the one changed below)
        calls["n"] += fold is folded.temporal[0]._out_fold
        return orig(fold, dtype)
    monkeypatch.setattr(type(folded.temporal[0]), "_fold_weights", staticmethod(counted))

    def run(m, amp):
        step = StreamStep(m)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            ring = StateRing(m.encode_frames(frames[0]), T, model=m)
            out = [step.ring_forward(f, frames[n], ring, n + 1) for n, f in enumerate(frames[1:])]
        return [torch.stack([o[k].float() for o in out]) for k in range(4)]
    for amp, tol in ((False, 1e-5), (True, 3e-2)):
        ref, got = run(model, amp), run(folded, amp)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert calls["n"] > 0
    # a weight changed in place: the fold is stale and not used (the result follows the new weight)
    n0 = calls["n"]
    with torch.no_grad():
        for m in (model, folded):
            m.temporal[0].fuse.weight.mul_(1.5)
    for a, b in zip(run(folded, False), run(model, False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert calls["n"] == n0
    folded.temporal[0].fold_out_proj()  # fold again: used again
    run(folded, False)
    assert calls["n"] > n0
    # gradients wanted: the unfolded ops
    feats = [torch.randn(2, T, *s, requires_grad=True) for s in folded.feature_shapes()]
    tm = folded.temporal[0]
    assert tm._folded_out(feats[0]) is None
    with torch.no_grad():
        assert tm._folded_out(feats[0]) is not None
        assert tm.fold_out_proj(False)._folded_out(feats[0]) is None


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True])
def test_projection_rings_on_cuda_equal_the_plain_ring_gpu(amp, monkeypatch):
    """On CUDA (Triton kernels, CUDA graphs with branches): scores with the projection rings forced on equal those
    with them off, and the eager step's without them, over every ring phase and 3 streams in one batch."""
    from m2s2l.engine.stream import StateRing
    model = tiny(3).cuda().set_backend("auto")
    frames = moving_frames(11)
    T = model.config.clip_len
    res = {}
    for flag in (False, True):
        monkeypatch.setattr(StateRing, "project", flag)
        sc = StreamScorer(model, device="cuda", amp=amp, cuda_graphs=True, branches=True)
        x = torch.stack([sc.preprocess(f) for f in frames])
        batch = torch.stack([x, x.flip(0), x.roll(3, 0)], 1)                   # (N, 3, C, H, W)
        res[flag] = np.stack([r["score"] for r in [sc.push_batch(b) for b in batch][T:]])
        assert (sc.ring.xbufs is not None) == flag
    tol = 1e-4 if not amp else 2e-2
    np.testing.assert_allclose(res[True], res[False], rtol=0, atol=tol)
    # and the eager step without them (no graphs, no branches), stream 0 alone
    monkeypatch.setattr(StateRing, "project", False)
    eager = StreamScorer(model, device="cuda", amp=amp)
    ref = np.array([r["score"] for r in [eager.push(f) for f in frames][T:]])
    np.testing.assert_allclose(res[True][:, 0], ref, rtol=0, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("amp,branches", [(False, False), (True, False), (False, True), (True, True)])
def test_cuda_graph_stream_equals_eager_stream_gpu(amp, branches):
    """The replayed graphs (with ``branches``: parallel CUDA streams inside them) score exactly what the eager step
    scores: single stream, then 3 streams in one batch (re-capture), then a reset (same batch: the graphs are
    reused); 9 frames run every phase of the state ring."""
    model = tiny(3).cuda().set_backend("auto")  # the Triton kernels on CUDA, as m2s2l score runs them
    frames = moving_frames(9)
    T = model.config.clip_len
    eager = StreamScorer(model, device="cuda", amp=amp)
    graph = StreamScorer(model, device="cuda", amp=amp, cuda_graphs=True, branches=branches)
    if branches:  # eager on parallel streams, too
        par = StreamScorer(model, device="cuda", amp=amp, branches=True)
        np.testing.assert_allclose([r["score"] for r in [par.push(f) for f in frames][T:]],
                                   [r["score"] for r in [eager.push(f) for f in frames][T:]], rtol=0,
                                   atol=1e-4 if not amp else 2e-2)
        eager.reset()
    a = [eager.push(f) for f in frames][T:]
    b = [graph.push(f) for f in frames][T:]
    tol = 1e-4 if not amp else 2e-2
    np.testing.assert_allclose([r["score"] for r in b], [r["score"] for r in a], rtol=0, atol=tol)
    np.testing.assert_allclose(b[-1]["error_map"], a[-1]["error_map"], rtol=1e-3, atol=1e-5 if not amp else 1e-2)
    clip = torch.stack([graph.preprocess(f) for f in frames])                  # (N, C, H, W)
    batch = torch.stack([clip, clip.flip(0), clip.roll(2, 0)], 1)              # (N, 3, C, H, W)
    for sc in (eager, graph):
        sc.reset()
    ra = [eager.push_batch(x) for x in batch][T:]
    rb = [graph.push_batch(x) for x in batch][T:]
    np.testing.assert_allclose(np.stack([r["score"] for r in rb]), np.stack([r["score"] for r in ra]), rtol=0, atol=tol)
    first = graph._graphs
    assert sorted(first["phase"]) == list(range(T + 1))  # one graph per ring phase
    graph.reset()
    rc = [graph.push_batch(x) for x in batch][T:]
    assert graph._graphs is first
    np.testing.assert_allclose(np.stack([r["score"] for r in rc]), np.stack([r["score"] for r in rb]), rtol=0, atol=0)


def test_capture_graph_turns_the_autocast_cache_off_only_inside_a_region(monkeypatch):
    """capture_graph's autocast rule (CUDA's graph calls stubbed out, so it runs on CPU): inside an enclosing
    autocast region the weight-cast cache is off for the warm-ups and the capture (StreamScorer's case: the cache
    would outlive the graph) and restored after; outside one it is left on, so an fn that enters autocast itself
    casts each weight once a call (bench/fps.py's case)."""
    from contextlib import nullcontext

    from m2s2l.engine import step as step_mod

    class _Stub:
        def __init__(self, *a, **k):
            pass

        def wait_stream(self, other):
            pass

        def pool(self):
            return None
    monkeypatch.setattr(step_mod.torch.cuda, "current_stream", lambda device=None: _Stub())
    monkeypatch.setattr(step_mod.torch.cuda, "Stream", _Stub)
    monkeypatch.setattr(step_mod.torch.cuda, "stream", lambda s: nullcontext())
    monkeypatch.setattr(step_mod.torch.cuda, "CUDAGraph", _Stub)
    monkeypatch.setattr(step_mod.torch.cuda, "graph", lambda g, pool=None: nullcontext())
    seen = []

    def fn():
        seen.append(torch.is_autocast_cache_enabled())
        return torch.ones(1)
    assert torch.is_autocast_cache_enabled()
    graph, out = step_mod.capture_graph(fn, warmups=2)
    assert seen == [True] * 3 and torch.equal(out, torch.ones(1))
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step_mod.capture_graph(fn, warmups=1)
        assert torch.is_autocast_cache_enabled()  # restored for the rest of the region
    assert seen == [False] * 2 and torch.is_autocast_cache_enabled()


def test_scorer_captures_its_graphs_outside_autocast(monkeypatch):
    """StreamScorer with amp and cuda_graphs captures each phase's graph from outside any autocast region, with a
    step that enters its own (so capture_graph keeps the weight-cast cache on for the call: one cast a weight a
    call inside the graph, not one a use); the scores equal the eager amp scorer's. CPU, bf16 autocast, the
    capture stubbed (the graph is the step's eager call)."""
    from m2s2l.engine import stream as stream_mod
    seen = []

    class _Graph:
        def __init__(self, fn):
            self.fn = fn

        def replay(self):
            self.fn()

        def pool(self):
            return None

    def fake_capture(fn, pool=None, device=None):
        seen.append(torch.is_autocast_enabled("cpu"))
        holder = {}

        def run():
            holder["out"] = fn()
        run()
        return _Graph(run), holder["out"]
    inside = []
    monkeypatch.setattr(stream_mod, "capture_graph", fake_capture)
    model = tiny(1)
    frames = moving_frames(model.config.clip_len + 3)
    eager = StreamScorer(model, device="cpu")
    graph = StreamScorer(model, device="cpu")
    eager.amp = graph.amp = True        # (amp is CUDA-only in the constructor; bf16 autocast runs on CPU too)
    graph._cuda_graphs = True
    ring_forward = graph.step.ring_forward

    def spy(*args):
        inside.append(torch.is_autocast_enabled("cpu"))
        return ring_forward(*args)
    graph.step.ring_forward = spy
    a = [eager.push(f) for f in frames][model.config.clip_len:]
    b = [graph.push(f) for f in frames][model.config.clip_len:]
    assert seen and not any(seen)       # every capture outside any region ...
    assert inside and all(inside)       # ... of a step inside its own
    # (the fake graph re-runs the eager step, so its outputs are the captured call's tensors, refilled)
    np.testing.assert_allclose([r["score"] for r in b], [r["score"] for r in a], rtol=0, atol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_stream_equals_offline_flow_model(channels):
    """A motion_target="flow" model: the stream computes each new frame's optical flow from the previous one
    (same grey uint8 images, same OpenCV call) and scores exactly as offline scoring with FrameStore's flow."""
    from m2s2l.data.frames import to_model_frame
    from m2s2l.data.store import FrameStore
    torch.manual_seed(3)
    model = create_model("m2s2l_lite", image_size=32, in_channels=channels, backend="torch",
                         motion_target="flow").eval()
    frames = moving_frames(9, seed=2)
    T = model.config.clip_len
    u8 = np.stack([to_model_frame(f, 32, channels) for f in frames])           # (N, C, H, W)
    store = FrameStore(torch.from_numpy(np.ascontiguousarray(u8)), ["v"], [len(u8)]).compute_flow("dis")
    assert float(store.flow[T:].abs().max()) > 0.5               # the moving square gives a real flow target
    idx = store.target_indices(T)
    with torch.no_grad():
        ref = model.score(store.batch(idx, T, "cpu"))["score"].double().numpy()
    scorer = StreamScorer(model, flow_method="dis")
    got = [scorer.push(f) for f in frames]
    assert all(r is None for r in got[:T]) and all(r is not None for r in got[T:])
    np.testing.assert_allclose(np.array([r["score"] for r in got[T:]]), ref, rtol=0, atol=ATOL)


def test_encoder_runs_once_per_frame(monkeypatch):
    model = tiny()
    calls = []
    orig = model.encode_frames
    monkeypatch.setattr(model, "encode_frames", lambda x: calls.append(x.shape[0]) or orig(x))
    scorer = StreamScorer(model)
    for f in moving_frames(6):
        scorer.push(f)
    assert calls == [1] * 6


def test_batched_streams_equal_single_streams():
    model = tiny()
    T = model.config.clip_len
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, T + 2, 1, 32, 32, generator=g) * 2 - 1
    batched = StreamScorer(model)
    out_b = [batched.push_batch(x[:, t]) for t in range(T + 2)]
    for b in range(2):
        single = StreamScorer(model)
        out_s = [single.push(x[b, t]) for t in range(T + 2)]
        np.testing.assert_allclose([o["score"][b] for o in out_b[T:]], [o["score"] for o in out_s[T:]],
                                   rtol=0, atol=ATOL)


def test_batched_flow_streams_equal_single_streams():
    """A flow model with 3 streams in lock-step: the per-stream flows run in a thread pool (one OpenCV object per
    thread) and every stream scores as it does alone."""
    from m2s2l.data.frames import to_model_frame
    torch.manual_seed(2)
    model = create_model("m2s2l_lite", image_size=32, in_channels=1, backend="torch", motion_target="flow").eval()
    T = model.config.clip_len
    vids = [np.stack([to_model_frame(f, 32, 1) for f in moving_frames(T + 3, seed=s)]) for s in range(3)]
    x = torch.from_numpy(np.stack(vids)).float() / 127.5 - 1                        # (3, T + 3, 1, 32, 32)
    batched = StreamScorer(model)
    out_b = [batched.push_batch(x[:, t]) for t in range(T + 3)]
    assert batched._flow_pool is not None
    for b in range(3):
        single = StreamScorer(model)
        out_s = [single.push(x[b, t]) for t in range(T + 3)]
        np.testing.assert_allclose([o["score"][b] for o in out_b[T:]], [o["score"] for o in out_s[T:]],
                                   rtol=0, atol=ATOL)


def test_alert_hysteresis():
    model = tiny()
    cal = {"mean": 0.0, "std": 2.0, "threshold": 1.0}
    scorer = StreamScorer(model, cal, hysteresis=3)
    raw = [0, 2, 2, 2, 2, 0, 2, 0, 0, 0, 2]
    want = [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]   # on after 3 above, one-frame dips ignored, off after 3 below
    got = [bool(scorer._alerts(np.array([float(r)]))["alert"][0]) for r in raw]
    assert got == [bool(w) for w in want]
    assert scorer._alerts(np.array([3.0]))["normalised"][0] == pytest.approx(1.5)


def write_video(path, frames, fps=10):
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        vw.write(f[..., ::-1].copy())
    vw.release()


def test_cli_score_video_matches_offline_loader(tmp_path, capsys):
    model = tiny(channels=3)
    T = model.config.clip_len
    frames = moving_frames(10)
    video = tmp_path / "v.avi"
    write_video(video, frames)
    ref = offline_scores(model, read_clip(Clip("v", str(video), "video"), 32, 3))
    cal = calibrate(ref, quantile=0.5, source="train")
    ck = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint("m2s2l_lite", model, calibration=cal), str(ck))
    out = tmp_path / "out"
    rc = main(["score", str(video), "--ckpt", str(ck), "--out", str(out), "--overlay", "--device", "cpu",
               "--hysteresis", "1"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [int(r["frame"]) for r in rows] == list(range(T, 10))
    np.testing.assert_allclose([float(r["score"]) for r in rows], ref, rtol=1e-5, atol=ATOL)
    assert [int(r["alert"]) for r in rows] == [int(s > cal["threshold"]) for s in ref]
    assert (out / "score_curve.png").stat().st_size > 0
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10 - T
    # --max-frames, and a frames folder with one unreadable frame: skipped, warned, counted
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames[:8]):
        cv2.imwrite(str(folder / f"{i:03d}.png"), f[..., ::-1])
    (folder / "003.png").write_bytes(b"not a png")
    capsys.readouterr()
    assert main(["score", str(folder), "--ckpt", str(ck), "--out", str(tmp_path / "o2"), "--device", "cpu",
                 "--max-frames", "7"]) == 0
    err = capsys.readouterr()
    assert "skipped frame 3" in err.err and "1 skipped" in err.out
    rows = list(csv.DictReader(open(tmp_path / "o2" / "scores.csv")))
    assert [int(r["frame"]) for r in rows] == [5, 6, 7]   # read: 0 1 2 (3 dropped) 4 5 6 7; T=4 history


def test_cli_not_a_video_is_a_clean_error(tmp_path, capsys):
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is not a video\n")
    rc = main(["score", str(bogus), "--ckpt", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0 and "cannot open" in err and "Traceback" not in err


def test_memory_is_constant_over_a_long_stream():
    """Nothing accumulates: the number and total size of live tensors after 6 and after 12 more pushed frames is the same."""
    import gc
    torch.manual_seed(0)
    model = create_model("m2s2l_lite", image_size=16, in_channels=1, backend="torch").eval()
    scorer = StreamScorer(model, {"mean": 0.0, "std": 1.0, "threshold": 0.0})
    x = torch.rand(1, 16, 16) * 2 - 1

    def live_tensors():
        gc.collect()
        ts = [o for o in gc.get_objects() if type(o) is torch.Tensor or type(o) is torch.nn.Parameter]
        return len(ts), sum(t.numel() for t in ts)
    counts = []
    for n in (6, 12):
        for _ in range(n):
            scorer.push(x)
        counts.append(live_tensors())
    assert counts[0] == counts[1] and scorer.n_seen == 18


# ---- issue 7: constant memory over a 100k-frame stream ----------------------------------------------------------
class StreamProbe(torch.nn.Module):
    """The streaming contract of M2S2L (``config``, ``encode_frames``, ``forward_features``) with a two-op network:
    the real M2S2L costs ~2-5 ms per frame on a 2-core CPU even at its smallest config (100k frames = minutes),
    while StreamScorer, StreamStep (state roll, real ``scoring.score``), alerts and the CSV loop are what keeps
    or leaks per-frame memory -- those all run for real here."""

    def __init__(self):
        super().__init__()
        from m2s2l.models.config import M2S2LConfig
        self.config = M2S2LConfig(image_size=16, in_channels=1, clip_len=2, widths=(4,), enc_depths=(0,),
                                  dec_depths=(0,), temporal_scales=(1,), spatial_depth=0, score_patch=8)
        self.gain = torch.nn.Parameter(torch.tensor(0.9))

    def encode_frames(self, frames):
        return [torch.nn.functional.avg_pool2d(frames, 2)]

    def forward_features(self, feats):
        app = torch.nn.functional.interpolate(feats[0][:, -1], scale_factor=2.0) * self.gain
        return {"appearance": app, "motion": app}


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def test_memory_is_constant_over_100k_frames_with_csv(tmp_path):
    """100,000 frames through StreamScorer + the ``m2s2l score`` CSV loop + the score-curve PNG: Python-level
    allocated blocks and process RSS do not grow between frame 10k and frame 100k (a leak of one float per
    frame would be +90k blocks, of one 16x16 error map +92 MB), and the PNG's data stays bounded."""
    import gc
    import sys
    from m2s2l.engine.stream import score_frames
    from m2s2l.engine.video_io import plot_scores
    n, warm = 100_000, 10_000
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 16x16 tensors: threads only add overhead
    torch.manual_seed(0)
    pool = [torch.rand(1, 16, 16) * 2 - 1 for _ in range(37)]
    scorer = StreamScorer(StreamProbe().eval(), {"mean": -20.0, "std": 3.0, "threshold": -18.0}, hysteresis=2)
    marks = {}

    def mark(at):
        gc.collect()
        marks[at] = (sys.getallocatedblocks(), _rss_bytes())

    def frames():  # generated on the fly: nothing of the stream is held by the source
        for i in range(n):
            if i == warm:
                mark("warm")
            yield i, pool[i % len(pool)]
        mark("end")
    try:
        with open(tmp_path / "scores.csv", "w", newline="") as f:
            n_read, n_scored, n_alert = score_frames(scorer, frames(), f)
    finally:
        torch.set_num_threads(threads)
    T = scorer.cfg.clip_len
    assert (n_read, n_scored) == (n, n - T) and 0 < n_alert < n_scored
    blocks = marks["end"][0] - marks["warm"][0]
    assert blocks < 2_000, f"{blocks} Python memory blocks more after {n - warm} frames"
    if marks["warm"][1] is not None:
        grown = (marks["end"][1] - marks["warm"][1]) / 2 ** 20
        assert grown < 4.0, f"RSS grew {grown:.1f} MiB between frame {warm} and {n}"
    with open(tmp_path / "scores.csv") as f:
        assert sum(1 for _ in f) == 1 + n - T
    plot_scores(str(tmp_path / "scores.csv"), str(tmp_path / "curve.png"), threshold=-18.0, bins=500)
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_score_envelope_is_bounded_and_exact_when_short():
    from m2s2l.engine.video_io import ScoreEnvelope
    env = ScoreEnvelope(bins=4)
    for i in range(8):
        env.add(i, float(i % 3), i == 5)
    frame, lo, hi, alert = env.arrays()
    assert env.step == 1 and list(frame) == list(range(8)) and list(hi) == [0, 1, 2, 0, 1, 2, 0, 1]
    for i in range(8, 1000):
        env.add(i, float(i % 3), i == 5)
    frame, lo, hi, alert = env.arrays()
    assert len(env.rows) <= 8 and env.step == 128 and frame[1] == 128
    assert lo.min() == 0 and hi.max() == 2 and alert[0] and not alert[1:].any()


def test_fps_bench_runs_flow_model_stream_and_flow_modes():
    """bench/fps.py on CPU: a motion_target=flow model streams (flow as the step's second input) and the
    host-side optical-flow cost is timed as its own mode; the scorer mode runs StreamScorer.push_batch."""
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "fps.py")
    spec = importlib.util.spec_from_file_location("fps_bench", path)
    fps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fps)
    res = fps.main(["--device", "cpu", "--preset", "m2s2l_lite", "--set", "image_size=32", "--set",
                    "motion_target=flow", "--seconds", "0.05", "--modes", "stream,flow,scorer", "--streams", "2",
                    "--threads", "1"])
    for mode in ("stream", "flow", "scorer"):
        assert "error" not in res["modes"][mode], res["modes"][mode]
        assert res["modes"][mode]["fps"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True])
def test_out_fold_on_cuda_equals_the_unfolded_step_gpu(amp, monkeypatch):
    """On CUDA (Triton kernels, projection rings, CUDA graphs with branches): scores with the temporal encoders'
    out_proj and residuals folded into fuse (fold_out_projs) equal the unfolded model's, 3 streams in one batch."""
    from m2s2l.engine.stream import StateRing
    from m2s2l.models.fuse import fold_out_projs
    model = tiny(3).cuda().set_backend("auto")
    folded = copy.deepcopy(model)
    assert fold_out_projs(folded) == len(model.temporal)
    frames = moving_frames(11)
    T = model.config.clip_len
    monkeypatch.setattr(StateRing, "project", True)
    res = {}
    for name, m in (("plain", model), ("folded", folded)):
        sc = StreamScorer(m, device="cuda", amp=amp, cuda_graphs=True, branches=True)
        with torch.no_grad():  # the scorer's own (BatchNorm-folded) copy kept the fold, valid
            assert (sc.model.temporal[0]._folded_out(torch.zeros(1, device="cuda")) is not None) == (m is folded)
        x = torch.stack([sc.preprocess(f) for f in frames])
        batch = torch.stack([x, x.flip(0), x.roll(3, 0)], 1)                   # (N, 3, C, H, W)
        res[name] = np.stack([r["score"] for r in [sc.push_batch(b) for b in batch][T:]])
    np.testing.assert_allclose(res["folded"], res["plain"], rtol=0, atol=1e-4 if not amp else 2e-2)
