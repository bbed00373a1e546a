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

Sharding: ``save_checkpoint(ckpt, path, shard_mib=15)`` writes a checkpoint larger than 15 MiB as
``path.shard000``, ``path.shard001``, ... plus a small index at ``path`` (``{"m2s2l_shards": [names], "sha1"}``);
``read_checkpoint`` / ``load_checkpoint`` reassemble it transparently (the GPU box returns files <= 16 MiB only;
``m2s2l_paper`` is ~9.5M parameters: ~108 MiB with AdamW state, 18 MiB in float16 weights-only form).
"""
import dataclasses
import hashlib
import io
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


def _atomic_write(path, data):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_checkpoint(ckpt, path, shard_mib=0):
    """Write ``ckpt`` to ``path`` atomically: a reader (or a kill -9) never sees a half-written file.
    With ``shard_mib`` > 0 a larger checkpoint is split into shards (module docstring); the index is written
    last, so an interrupted save leaves the previous index (and its shards) or the new one intact."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    data = buf.getvalue()
    limit = int(shard_mib * 2**20)
    if limit <= 0 or len(data) <= limit:
        _atomic_write(path, data)
        return path
    digest = hashlib.sha1(data).hexdigest()[:12]
    names = []
    for i in range(0, len(data), limit):
        name = f"{os.path.basename(path)}.{digest}.shard{i // limit:03d}"
        _atomic_write(os.path.join(os.path.dirname(os.path.abspath(path)), name), data[i:i + limit])
        names.append(name)
    old = _shard_names(path)
    buf = io.BytesIO()
    torch.save({"m2s2l_shards": names, "sha1": hashlib.sha1(data).hexdigest(), "bytes": len(data)}, buf)
    _atomic_write(path, buf.getvalue())
    for name in set(old) - set(names):  # shards of the checkpoint this one replaced
        try:
            os.remove(os.path.join(os.path.dirname(os.path.abspath(path)), name))
        except OSError:
            pass
    return path


def _shard_names(path):
    try:
        if os.path.getsize(path) > 2**20:
            return []
        idx = torch.load(path, map_location="cpu", weights_only=False)
        return list(idx.get("m2s2l_shards", [])) if isinstance(idx, dict) else []
    except Exception:
        return []


def read_checkpoint(path):
    """``torch.load`` of a checkpoint file, reassembling sharded checkpoints (checked by SHA-1)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(ck, dict) and "m2s2l_shards" in ck:
        folder = os.path.dirname(os.path.abspath(path))
        parts = []
        for name in ck["m2s2l_shards"]:
            p = os.path.join(folder, name)
            if not os.path.isfile(p):
                raise FileNotFoundError(f"checkpoint {path!r} is sharded and its shard {p!r} is missing")
            parts.append(open(p, "rb").read())
        data = b"".join(parts)
        if hashlib.sha1(data).hexdigest() != ck["sha1"]:
            raise ValueError(f"sharded checkpoint {path!r}: shards do not match the index (SHA-1 differs)")
        ck = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    return ck


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
    ckpt = read_checkpoint(path)
    return model_from_checkpoint(ckpt, device, path), ckpt


def check_checkpoint(ckpt, path="checkpoint"):
    """ValueError unless ``ckpt`` (read from ``path``, named in the message) is an m2s2l checkpoint dict."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path!r} is not an m2s2l checkpoint (needs 'model', 'config', 'state_dict')")
    return ckpt


def model_from_checkpoint(ckpt, device="cpu", path="checkpoint"):
    """The model a checkpoint dict (read from ``path``, for the error message) describes: its ``model`` name and
    ``config``, weights loaded as float32, in eval mode on ``device``."""
    check_checkpoint(ckpt, path)
    import m2s2l.models  # noqa: F401  (registers the presets)
    from m2s2l.models import create_model
    model = create_model(ckpt["model"], **_config_kwargs(ckpt["model"], ckpt["config"]))
    sd = model.state_dict()
    model.load_state_dict({k: v.to(sd[k].dtype) if k in sd else v for k, v in ckpt["state_dict"].items()})
    return model.to(device).eval()
