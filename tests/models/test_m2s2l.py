"""M2S2L model: shapes, losses, gradients, streaming split, determinism, score formula, input errors."""
import math

import pytest
import torch

from m2s2l.models import M2S2L, M2S2LConfig, create_model, get_config, list_models
from m2s2l.models.scoring import neg_psnr, patch_max_db
from temporal_ref import full_temporal_forward

TINY = dict(image_size=32, widths=(8, 12, 16), enc_depths=(1, 0, 1), dec_depths=(1, 1, 1), d_state=4,
            temporal_scales=(1, 2), spatial_depth=1)


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("m2s2l_paper", **{**TINY, "backend": "torch", **kw})


def make_batch(model, batch=2, seed=1):
    c = model.config
    g = torch.Generator().manual_seed(seed)
    clip = torch.rand(batch, c.clip_len, c.in_channels, c.image_size, c.image_size, generator=g) * 2 - 1
    target = (clip[:, -1] + 0.1 * torch.randn(clip[:, -1].shape, generator=g)).clamp(-1, 1)
    out = {"clip": clip, "target": target}
    if c.motion_target == "flow":
        out["flow"] = torch.randn(batch, 2, c.image_size, c.image_size, generator=g)
    return out


def test_presets_registered_and_valid():
    assert {"m2s2l_paper", "m2s2l_lite"} <= set(list_models())
    paper, lite = get_config("m2s2l_paper"), get_config("m2s2l_lite")
    assert (paper.image_size, paper.clip_len, paper.in_channels) == (256, 4, 3)
    assert lite.image_size < paper.image_size
    with pytest.raises(ValueError, match="unknown config field"):
        create_model("m2s2l_paper", widht=3)


@pytest.mark.parametrize("motion_target,in_channels", [("diff", 3), ("diff", 1), ("flow", 1)])
def test_shapes_losses_and_score(motion_target, in_channels):
    model = tiny(motion_target=motion_target, in_channels=in_channels)
    batch = make_batch(model)
    (clip,) = model.example_inputs(2)
    assert clip.shape == (2, 4, in_channels, 32, 32) and clip.abs().max() <= 1
    pred = model(clip)
    assert pred["appearance"].shape == (2, in_channels, 32, 32)
    assert pred["motion"].shape == (2, 2 if motion_target == "flow" else in_channels, 32, 32)
    losses = model.compute_losses(batch)
    assert {"loss", "intensity", "gradient", "motion", "decorrelation"} <= set(losses)
    assert losses["loss"].dim() == 0 and all(torch.isfinite(v) for v in losses.values())
    c = model.config
    manual = (c.w_intensity * losses["intensity"] + c.w_gradient * losses["gradient"]
              + c.w_motion * losses["motion"] + c.w_decorrelation * losses["decorrelation"])
    torch.testing.assert_close(losses["loss"].detach(), manual)
    s = model.eval().score(batch)
    assert s["score"].shape == s["appearance"].shape == s["motion"].shape == (2,)
    assert s["error_map"].shape == (2, 1, 32, 32) and (s["error_map"] >= 0).all()
    torch.testing.assert_close(s["score"], c.score_w_appearance * s["appearance"] + c.score_w_motion * s["motion"])


def test_gradient_reaches_every_parameter():
    model = tiny()
    model.compute_losses(make_batch(model))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, f"no (or zero/non-finite) gradient for {missing}"


def test_streaming_split_equals_clip_forward_and_is_deterministic():
    model = tiny().eval()
    (clip,) = model.example_inputs(2)
    B, T = clip.shape[:2]
    with torch.no_grad():
        ref = model(clip)
        per_frame = [model.encode_frames(clip[:, t]) for t in range(T)]      # each frame encoded on its own
        feats = [torch.stack([f[l] for f in per_frame], dim=1) for l in range(len(per_frame[0]))]
        assert [tuple(f.shape[2:]) for f in feats] == model.feature_shapes()
        split = model.forward_features(feats)
        again = model(clip)
    for k in ref:
        torch.testing.assert_close(split[k], ref[k], rtol=1e-5, atol=1e-5)
        assert torch.equal(again[k], ref[k]), f"eval forward is not deterministic for {k!r}"


def test_forward_features_branches_are_independent():
    """``run`` receives the independent branches (4 pyramid levels, 2 temporal scales per level, 2 decoders); a
    runner that executes every group in reverse order gives exactly the serial result."""
    model = tiny().eval()
    (clip,) = model.example_inputs(2)
    feats = model._encode_clip(clip)
    groups = []

    def backwards(thunks):
        groups.append(len(thunks))
        return [f() for f in thunks[::-1]][::-1]
    with torch.no_grad():
        ref = model.forward_features(feats)
        got = model.forward_features(feats, run=backwards)
    L, S = len(model.config.widths), len(model.config.temporal_scales)
    assert sorted(groups) == sorted([L, 2] + [S] * L)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_score_formula_by_hand():
    pred, target = torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.2)        # MSE 0.04
    torch.testing.assert_close(neg_psnr(pred, target), torch.tensor([10 * math.log10(0.04 / 4)]))
    err = torch.zeros(1, 1, 16, 16)
    err[0, 0, :4, :4] = 1.0                                                      # one hot 4x4 corner
    torch.testing.assert_close(patch_max_db(err, 4), torch.tensor([0.0]))        # mean 1 -> 0 dB
    torch.testing.assert_close(patch_max_db(err, 8), torch.tensor([10 * math.log10(0.25)]))
    model = tiny().eval()
    batch = make_batch(model, batch=1)
    with torch.no_grad():
        pred = model(batch["clip"])
    worse = dict(batch, target=(batch["target"] + 0.5).clamp(-1, 1))             # a frame far from prediction
    assert model.score(worse, pred)["score"] > model.score(dict(batch, target=pred["appearance"]), pred)["score"]


def test_set_backend_and_bad_backend():
    from m2s2l.modules import BiMamba, LayerNorm, Mamba
    model = tiny()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(type(m) is LayerNorm and m.backend == "torch" for m in norms)
    model.set_backend("auto")
    assert all(m.backend == "auto" for m in model.modules() if isinstance(m, (Mamba, BiMamba, LayerNorm)))
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("cudnn")
    with pytest.raises(ValueError, match="backend"):
        tiny(backend="gpu")


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    (clip,) = model.example_inputs(1)
    with pytest.raises(ValueError, match=r"clip must have shape \(B, T, C, H, W\) = \(B, 4, 3, 32, 32\)"):
        model(clip[:, :3])
    with pytest.raises(ValueError, match=r"\(B, 4, 3, 32, 32\).*got \(1, 4, 1, 32, 32\)"):
        model(clip[:, :, :1])
    with pytest.raises(ValueError, match="clip must have shape"):
        model(clip[0])
    with pytest.raises(ValueError, match="clip must have shape"):
        model(torch.nn.functional.interpolate(clip[0], size=48)[None])
    with pytest.raises(TypeError, match="clip must be a torch.Tensor"):
        model(clip.numpy())
    with pytest.raises(ValueError, match=r"frames must have shape \(N, C, H, W\)"):
        model.encode_frames(clip)
    with pytest.raises(ValueError, match="feats must be a list of 3"):
        model.forward_features(model.encode_frames(clip[:, 0])[:2])
    with pytest.raises(ValueError, match=r"feats\[0\]"):
        model.forward_features([f.unsqueeze(1) for f in model.encode_frames(clip[:, 0])])   # T=1, not 4
    batch = make_batch(model, batch=1)
    with pytest.raises(ValueError, match=r"batch\['target'\]"):
        model.compute_losses(dict(batch, target=batch["target"][:, :1]))
    with pytest.raises(ValueError, match="'clip'"):
        model.compute_losses({"target": batch["target"]})
    flow_model = tiny(motion_target="flow")
    with pytest.raises(ValueError, match=r"batch\['flow'\]"):
        flow_model.compute_losses(batch)


@pytest.mark.parametrize("field,value", [("image_size", 36), ("temporal_scales", (3,)), ("in_channels", 2),
                                          ("motion_target", "optical"), ("enc_depths", (1, 1))])
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=field):
        M2S2LConfig(**{**TINY, field: value})


def test_triton_path_equals_torch_path():
    """Forward outputs and parameter gradients agree between the Triton kernels (interpreted on CPU under
    TRITON_INTERPRET=1, set by conftest) and the PyTorch reference ops."""
    pytest.importorskip("triton")
    from m2s2l.ops._backend import interpret_mode
    if not torch.cuda.is_available() and not interpret_mode():
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny(image_size=8, widths=(8,), enc_depths=(1,), dec_depths=(1,), score_patch=4).to(dev).eval()
    batch = {k: v.to(dev) for k, v in make_batch(model, batch=1).items()}
    results = {}
    for backend in ("torch", "triton"):
        model.set_backend(backend)
        model.zero_grad()
        pred = model(batch["clip"])
        model.compute_losses(batch)["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[backend] = (pred, grads)
    (p_ref, g_ref), (p_tri, g_tri) = results["torch"], results["triton"]
    for k in p_ref:
        torch.testing.assert_close(p_tri[k], p_ref[k], rtol=1e-4, atol=1e-4)
    for n in g_ref:
        torch.testing.assert_close(g_tri[n], g_ref[n], rtol=2e-3, atol=1e-4, msg=lambda m: f"grad of {n}: {m}")


def test_bf16_autocast_channels_last_and_config_roundtrip():
    model = tiny().to(memory_format=torch.channels_last)
    batch = make_batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.compute_losses(batch)
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.to_dict().items()}   # as JSON
    rebuilt = create_model("m2s2l_paper", **cfg)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_temporal_last_only_equals_full_branches(backend):
    """Only the last step of each branch is computed through out_proj/residual; the result equals running every
    block on every step (depth 2: a full block, then a last-only block). torch backend: forward and parameter
    gradients; triton (interpreted on CPU: its scan backward takes minutes here): the forward, on 16 sequences."""
    from m2s2l.ops._backend import interpret_mode
    if backend == "triton" and not torch.cuda.is_available() and not interpret_mode():
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1")
    dev = "cuda" if backend == "triton" and not interpret_mode() else "cpu"  # the GPU suite: no interpreter
    model = tiny(temporal_depth=2, temporal_scales=(1, 2, 4)).to(dev)
    model.set_backend(backend)
    level = 1 if backend == "torch" else 2
    tm = model.temporal[level]
    g = torch.Generator().manual_seed(3)
    B = 2 if backend == "torch" else 1
    feats = torch.randn(B, 4, *model.feature_shapes()[level], generator=g).to(dev)
    out = tm(feats)
    ref = full_temporal_forward(tm, feats)
    assert out.shape == ref.shape == (B, *model.feature_shapes()[level])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    tm.last_only = False                       # every block on every step (bench/flops.py --all-steps)
    torch.testing.assert_close(tm(feats), ref, rtol=1e-5, atol=1e-5)
    tm.last_only = True
    if backend != "torch":
        return
    params = [p for p in tm.parameters()]
    g_out = torch.autograd.grad(out.square().sum(), params)
    g_ref = torch.autograd.grad(ref.square().sum(), params)
    for (n, _), a, b in zip(tm.named_parameters(), g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"grad of {n}: {m}")
