"""GPU probe for issue 4's crash: argument errors raised inside m2s2l._C (TORCH_CHECK -> RuntimeError).
On the first GPU run `pytest tests/test_cuda_ext.py` died with a segfault in test_scan_bad_input_raises, the first
test whose C++ call throws. Each case prints its name first (flushed), so a crash names the case:
    python -X faulthandler csrc/tools/probe_throw.py [case ...]
"""
import sys

import torch

import m2s2l._C as C  # noqa: N812


def scan_args(N=4, L=10, **over):
    d = dict(u=torch.randn(2, 8, L, device="cuda"), delta=torch.rand(2, 8, L, device="cuda"),
             A=-torch.rand(8, N, device="cuda"), B=torch.randn(2, 1, N, L, device="cuda"),
             C=torch.randn(2, 1, N, L, device="cuda"), D=None, z=None, delta_bias=None, initial_state=None)
    d.update(over)
    return [d[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")] + [False, True]


CASES = {
    "scan_ok": lambda: C.selective_scan_fwd(*scan_args()),
    "scan_dstate_300": lambda: C.selective_scan_fwd(*scan_args(A=torch.zeros(8, 300, device="cuda"))),
    "scan_delta_shape": lambda: C.selective_scan_fwd(*scan_args(delta=torch.rand(2, 8, 5, device="cuda"))),
    "scan_cpu_u": lambda: C.selective_scan_fwd(*scan_args(u=torch.randn(2, 8, 10))),
    "conv_weight_shape": lambda: C.causal_conv1d_fwd(torch.randn(2, 8, 10, device="cuda"),
                                                     torch.randn(7, 4, device="cuda"), None, None, False, False),
}


def main(names):
    for name in names or list(CASES):
        print(f"-- {name}", flush=True)
        try:
            CASES[name]()
            torch.cuda.synchronize()
            print("   returned normally", flush=True)
        except Exception as e:  # noqa: BLE001 - the point is to see what comes back
            print(f"   raised {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
    print("probe done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
