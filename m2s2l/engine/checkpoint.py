"""Checkpoints: one ``torch.save`` dict, written atomically (temporary file + ``os.replace``).

Format (all keys always present; values None where not applicable)::

    model        registered model name, e.g. "m2s2l_paper"
    config       dataclasses.asdict(model.config)  -> the model is rebuilt with create_model(model, **config)
    state_dict   model weights (float16 when saved with save_half=True; loading casts back to float32)
    optimizer    AdamW state_dict (None in weights-only files such as model.pt)
    scheduler    {"kind": "warmup_cosine", "base_lr", "warmup_epochs", "min_lr_ratio", "epochs"}
    scaler       None (bf16 autocast needs no loss scaler)
    epoch        index of the next epoch to run (== epochs completed)
    position     samples already consumed inside that epoch (0 at an epoch boundary)
    step         optimizer steps taken so far
    rng          {"torch", "cuda", "numpy", "python"} generator states of rank 0
    calibration  see m2s2l.engine.calibrate.calibrate (None before training finished)
    train_args   the train command's arguments (dict)
    extra        free-form: val_clips, world_size, best val loss, finished flag, ...
"""
import dataclasses
import os
import random

import numpy as np
import torch

KEYS = ("model", "config", "state_dict", "optimizer", "scheduler", "scaler", "epoch", "position", "step", "rng",
        "calibration", "train_args", "extra")


def rng_state():
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state):
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def unwrap(model):
    """The bare model inside DDP / torch.compile / loss wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def make_checkpoint(name, model, save_half=False, **fields):
    """Assemble a checkpoint dict for ``model`` (registered as ``name``); ``fields`` fill the other KEYS."""
    bad = set(fields) - set(KEYS)
    if bad:
        raise ValueError(f"unknown checkpoint fields {sorted(bad)}; valid: {KEYS}")
    model = unwrap(model)
    sd = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if save_half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    ck = {k: None for k in KEYS}
    ck.update(fields)
    ck.update(model=name, config=dataclasses.asdict(model.config), state_dict=sd)
    return ck


def save_checkpoint(ckpt, path):
    """Write ``ckpt`` to ``path`` atomically: a reader (or a kill -9) never sees a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def _config_kwargs(name, config):
    from m2s2l.models import get_config
    base = dataclasses.asdict(get_config(name))
    kw = {k: (tuple(v) if isinstance(v, list) and isinstance(base.get(k), tuple) else v) for k, v in config.items()}
    unknown = sorted(set(kw) - set(base))
    if unknown:
        raise ValueError(f"checkpoint config has fields {unknown} that model {name!r} no longer knows")
    return kw


def load_checkpoint(path, device="cpu"):
    """Load ``path`` and rebuild its model: returns ``(model, ckpt)``, the model in eval mode on ``device``
    with float32 weights (half-precision checkpoints are cast back)."""
    import m2s2l.models  # noqa: F401  (registers the presets)
    from m2s2l.models import create_model
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path!r} is not an m2s2l checkpoint (needs 'model', 'config', 'state_dict')")
    model = create_model(ckpt["model"], **_config_kwargs(ckpt["model"], ckpt["config"]))
    sd = model.state_dict()
    model.load_state_dict({k: v.to(sd[k].dtype) if k in sd else v for k, v in ckpt["state_dict"].items()})
    return model.to(device).eval(), ckpt
