"""Model registry: ``create_model(name, **overrides)`` builds a registered preset (timm-style).

A preset is a function returning a config dataclass; the registered model class is built from it.
Overrides replace config fields by name (unknown names raise a ValueError listing the valid ones)."""
import dataclasses

_PRESETS = {}


def register_model(name, model_cls):
    """Decorator for a function returning a config dataclass: ``@register_model("m2s2l_lite", M2S2L)``."""
    def deco(fn):
        if name in _PRESETS:
            raise ValueError(f"model {name!r} is already registered")
        _PRESETS[name] = (model_cls, fn)
        return fn
    return deco


def list_models():
    return sorted(_PRESETS)


def get_config(name, **overrides):
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    cfg = _PRESETS[name][1]()
    fields = {f.name for f in dataclasses.fields(cfg)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown config field(s) {bad} for {name!r}; valid fields: {sorted(fields)}")
    return dataclasses.replace(cfg, **overrides)


def create_model(name, **overrides):
    """Build the registered model ``name`` with config fields replaced by ``overrides``."""
    model_cls = _PRESETS[name][0] if name in _PRESETS else None
    cfg = get_config(name, **overrides)
    return model_cls(cfg)
