"""Launch-config overrides from the environment, shared by the kernel launchers (``M2S2L_SCAN_CFG``,
``M2S2L_CONV_CFG``). Imports nothing but ``os``, so the launchers can use it at import time."""
import os


def env_int_config(name):
    """The integer settings in environment variable ``name``, written "key=int,key=int,..." (e.g.
    M2S2L_SCAN_CFG="chunk=16,fwd_warps=4"), as a dict {key: int}; {} when unset. Items without "=" are skipped;
    a value that is not an integer raises ValueError naming the variable and the item."""
    cfg = {}
    for item in os.environ.get(name, "").split(","):
        if "=" in item:
            k, v = item.split("=", 1)
            try:
                cfg[k.strip()] = int(v)
            except ValueError:
                raise ValueError(f"{name}: {item.strip()!r} is not key=int") from None
    return cfg
