"""Selective scan (S6): naive.py (PyTorch reference, CPU path), scan.py (chunked Triton fwd/bwd kernels and
launchers), step.py (one-token step). Nothing here imports Triton until scan.py/step.py is imported."""
