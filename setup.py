"""Build script: the CUDA extension in csrc/ is built only where it can be.

The extension is compiled when a CUDA toolkit (nvcc) and a CUDA build of torch
are both present at build time (use ``pip install --no-build-isolation .`` so the
build sees your torch). Everywhere else fusedrl installs as pure Python and the
CUDA kernels are JIT-built on first use on a GPU, or replaced by Triton/torch.
"""
import glob
import os

from setuptools import setup


def cuda_extensions():
    """Return the list of CUDA extensions to build, empty when no toolkit or CUDA torch."""
    sources = sorted(glob.glob(os.path.join("csrc", "*.cu")) + glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources or os.environ.get("FUSEDRL_NO_CUDA_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    if CUDA_HOME is None or torch.version.cuda is None:
        return [], {}
    ext = CUDAExtension(
        name="fusedrl._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
