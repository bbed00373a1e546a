"""Models: configs are dataclasses with named presets; ``create_model(name, **overrides)`` builds one."""
from .registry import create_model, get_config, list_models, register_model  # noqa: F401
