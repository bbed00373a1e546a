"""Issue 4 crash triage: does *any* C++ exception thrown from a torch extension kill the process on this machine,
or only ours? Builds a minimal CPU-only extension with ``torch.utils.cpp_extension.load_inline`` (same compiler,
same torch headers as setup.py's build) and calls each throwing function in its own subprocess:
    python csrc/tools/probe_throw_inline.py            # prints one line per case: ok / raised ... / CRASH rc
Cases: torch_check (TORCH_CHECK -> c10::Error -> RuntimeError), std_runtime (std::runtime_error), value_error
(TORCH_CHECK_VALUE -> ValueError), the same TORCH_CHECK from a function taking an at::Tensor, and own_check: the
extension's M2S2L_CHECK (csrc/ops.h); fmt_only formats with std::ostringstream and returns (no throw);
concat_throw throws a message built by string concatenation. On H200 machines (torch 2.11+cu130, g++ 13.3,
pybind11 3.1) torch_check, value_error, tensor_check and an ostringstream-formatted own_check died with SIGSEGV
while std_runtime raised RuntimeError; here (CPU, torch 2.13) all raise.
"""
import os
import subprocess
import sys
import tempfile

SRC = r"""
#include "ops.h"
#include <sstream>
#include <stdexcept>
int64_t torch_check(int64_t n) { TORCH_CHECK(n < 3, "probe: n must be < 3, got ", n); return n; }
int64_t std_runtime(int64_t n) { if (n >= 3) throw std::runtime_error("probe: plain std::runtime_error"); return n; }
int64_t value_error(int64_t n) { TORCH_CHECK_VALUE(n < 3, "probe: n must be < 3, got ", n); return n; }
at::Tensor tensor_check(const at::Tensor& t) { TORCH_CHECK(t.dim() == 3, "probe: t must be 3-D, got ", t.sizes()); return t; }
int64_t fmt_only(int64_t n) { std::ostringstream ss; ss << "n=" << n; return (int64_t)ss.str().size(); }
int64_t concat_throw(int64_t n) { throw std::runtime_error(std::string("probe: concat n=") + std::to_string(n)); }
at::Tensor own_check(const at::Tensor& t) { M2S2L_CHECK(t.dim() == 3, "probe: t must be 3-D, got ", t.sizes(), " ", t.scalar_type()); return t; }
"""
FUNCS = ["torch_check", "std_runtime", "value_error", "tensor_check", "fmt_only", "concat_throw", "own_check"]
BUILD = os.path.join(tempfile.gettempdir(), "m2s2l_probe_throw_inline")


def load():
    from torch.utils.cpp_extension import load_inline
    os.makedirs(BUILD, exist_ok=True)
    return load_inline("m2s2l_probe_throw", cpp_sources=SRC, functions=FUNCS, build_directory=BUILD,
                       extra_cflags=["-O3"], verbose=False,
                       extra_include_paths=[os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")])


def call(name):
    import torch
    mod = load()
    arg = torch.zeros(2) if name.endswith("_check") and name != "torch_check" else 5
    try:
        getattr(mod, name)(arg)
        print(f"{name}: returned normally (no throw?)", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"{name}: raised {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)


def main():
    if len(sys.argv) > 1:
        return call(sys.argv[1])
    load()  # build once, outside the per-case processes
    for name in FUNCS:
        r = subprocess.run([sys.executable, "-X", "faulthandler", __file__, name], capture_output=True, text=True)
        line = (r.stdout.strip().splitlines() or [""])[-1]
        print(line if r.returncode == 0 else f"{name}: CRASH rc={r.returncode} {r.stderr.strip()[-300:]}", flush=True)


if __name__ == "__main__":
    main()
