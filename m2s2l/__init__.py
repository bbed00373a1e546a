"""m2s2l: Triton Mamba kernels and the M2S2L video anomaly detector."""
__version__ = "0.1.0"
