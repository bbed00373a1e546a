"""m2s2l: Triton Mamba kernels and the M2S2L video anomaly detector."""
import importlib.util as _ilu
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _map_source_kernels():
    """In a source checkout used without the install's mapping (``PYTHONPATH=.``, or an old setuptools
    ``develop`` install that ignores ``package_dir``), resolve ``m2s2l.triton_kernels`` to the top-level
    ``triton_kernels/`` folder, as the installed package does. An installed mapping is kept, unless this
    ``m2s2l`` was imported from a source checkout (``setup.py`` beside it) and the mapping points at another
    folder: an editable install of one checkout (e.g. the main git worktree) would otherwise serve its kernels
    to every other worktree's ``m2s2l``."""
    root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    src = _os.path.join(root, "triton_kernels")
    init = _os.path.join(src, "__init__.py")
    if "m2s2l.triton_kernels" in _sys.modules or not _os.path.isfile(init):
        return
    found = _ilu.find_spec("m2s2l.triton_kernels")
    if found is not None and not (_os.path.isfile(_os.path.join(root, "setup.py"))
                                  and _os.path.realpath(found.origin or "") != _os.path.realpath(init)):
        return
    spec = _ilu.spec_from_file_location("m2s2l.triton_kernels", init, submodule_search_locations=[src])
    mod = _ilu.module_from_spec(spec)
    _sys.modules["m2s2l.triton_kernels"] = mod
    spec.loader.exec_module(mod)


_map_source_kernels()
