"""Engine: training (train.py, DDP via distributed.py), checkpoints (checkpoint.py), evaluation protocol and
plots (evaluate.py), calibration for online alerts (calibrate.py) and the embedded demo (demo.py).
Modules are imported lazily by the CLI; import what you need, e.g. ``from m2s2l.engine.checkpoint import
load_checkpoint``."""
