"""Selective scan (S6): naive.py (PyTorch reference, CPU path), scan.py (chunked Triton fwd/bwd kernels and
launchers), scan_config.py (which kernels, tiles and grids run), step.py (one-token step). Nothing here imports
Triton until scan.py/step.py is imported."""
