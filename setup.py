"""m2s2l: Triton Mamba kernels (selective scan, causal conv1d) and the M2S2L video anomaly model.

The CUDA extension in csrc/ is optional and built only where it can be:
  M2S2L_BUILD_CUDA=1  force the build (fails loudly if torch has no CUDA or nvcc is missing)
  M2S2L_BUILD_CUDA=0  never build it
  unset               build when torch with CUDA and nvcc are both found
Because pip builds in an isolated environment without torch, GPU users install with
`pip install -e . --no-build-isolation` to get the extension; a plain install never fails because of it.
"""
import glob
import os
import shutil

from setuptools import setup

KERNEL_PKGS = ["selective_scan", "causal_conv1d", "layer_norm", "mamba_block", "upsample", "frame_errors"]


def _set_cuda_home():
    """torch guesses CUDA_HOME as the parent of the folder holding `nvcc`; where `nvcc` is a wrapper script
    (e.g. /usr/local/bin/nvcc -> /usr/local/cuda-13.0) that gives /usr/local, which has no CUDA headers or
    libraries. Point CUDA_HOME at a real toolkit before torch.utils.cpp_extension is imported."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if all(os.path.exists(os.path.join(home, p)) for p in ("bin/nvcc", "include/cuda_runtime.h")):
            os.environ["CUDA_HOME"] = home
            return


def _cuda_extension():
    flag = os.environ.get("M2S2L_BUILD_CUDA", "").strip()
    if flag == "0":
        return [], {}
    force = flag == "1"
    _set_cuda_home()
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception as e:  # torch absent from the (isolated) build environment
        if force:
            raise RuntimeError(f"M2S2L_BUILD_CUDA=1 but torch cannot be imported: {e}")
        return [], {}
    has_nvcc = CUDA_HOME is not None or shutil.which("nvcc") is not None
    if torch.version.cuda is None or not has_nvcc:
        if force:
            raise RuntimeError("M2S2L_BUILD_CUDA=1 but torch has no CUDA or nvcc was not found "
                               f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})")
        return [], {}
    # csrc/tools/ holds diagnostics (e.g. a CPU emulation driver), not extension sources
    sources = sorted(f for f in glob.glob("csrc/**/*.cpp", recursive=True) + glob.glob("csrc/**/*.cu", recursive=True)
                     if not f.replace(os.sep, "/").startswith("csrc/tools/"))
    if not sources:
        return [], {}
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    # no -std flag: torch's BuildExtension adds the standard its headers need (c++17 or c++20 by version)
    nvcc = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
    nvcc += [f"-U__CUDA_NO_{k}__" for k in ("HALF_OPERATORS", "HALF_CONVERSIONS", "BFLOAT16_OPERATORS",
                                           "BFLOAT16_CONVERSIONS", "BFLOAT162_OPERATORS", "BFLOAT162_CONVERSIONS")]
    ext = CUDAExtension("m2s2l._C", sources, include_dirs=[os.path.abspath("csrc")],
                        extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc})
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extension()

packages = ["m2s2l"] + [f"m2s2l.{p}" for p in ("ops", "modules", "models", "data", "engine")]
packages += ["m2s2l.triton_kernels"] + [f"m2s2l.triton_kernels.{p}" for p in KERNEL_PKGS]

setup(
    name="m2s2l",
    version="0.1.0",
    description="Triton selective scan and causal conv1d for Mamba, and the M2S2L video anomaly detector",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=packages,
    package_dir={"m2s2l.triton_kernels": "triton_kernels"},
    install_requires=[
        "torch>=2.1",
        "numpy",
        "triton>=3.0; platform_system=='Linux' and (platform_machine=='x86_64' or platform_machine=='aarch64')",
        "pillow",
        "scipy",
        "scikit-learn",
        "matplotlib",
    ],
    extras_require={
        "video": ["opencv-python-headless"],
        "onnx": ["onnx", "onnxruntime"],
        "flops": ["fvcore"],
        "test": ["pytest", "pytest-timeout", "opencv-python-headless", "onnx", "onnxruntime", "fvcore", "ninja"],
    },
    entry_points={"console_scripts": ["m2s2l=m2s2l.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
