"""Models: configs are dataclasses with named presets; ``create_model(name, **overrides)`` builds one."""
from .registry import create_model, get_config, list_models, register_model  # noqa: F401
from .config import M2S2LConfig  # noqa: F401
from .m2s2l import M2S2L  # noqa: F401  (registers the presets m2s2l_paper, m2s2l_lite)
