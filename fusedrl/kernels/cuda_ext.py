"""Loader of fusedrl's CUDA extension (the kernels in ``csrc/``).

``setup.py`` builds every ``csrc/*.cu`` and ``csrc/*.cpp`` into ``fusedrl._C`` when a
CUDA toolkit is present at install time. Otherwise the same sources are built just
in time with ninja through ``torch.utils.cpp_extension.load`` on first use (into
torch's extension cache, so later processes reuse the build). The outcome, module
or error, is cached for the life of the process.
"""
from __future__ import annotations

import glob
import importlib
import os
from types import ModuleType

import torch

CSRC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")
JIT_NAME = "fusedrl_C"
CXX_FLAGS = ["-O3"]
NVCC_FLAGS = ["-O3", "--use_fast_math"]

_loaded: dict[str, ModuleType | Exception] = {}


def extension_sources() -> list[str]:
    """The CUDA and C++ sources of the extension, in the order ``setup.py`` compiles them."""
    return sorted(glob.glob(os.path.join(CSRC_DIR, "*.cu")) + glob.glob(os.path.join(CSRC_DIR, "*.cpp")))


def _load() -> ModuleType:
    try:
        return importlib.import_module("fusedrl._C")
    except ImportError:
        pass
    if not torch.cuda.is_available() or torch.version.cuda is None:
        raise RuntimeError("the fusedrl CUDA extension needs a CUDA build of torch and a visible GPU")
    sources = extension_sources()
    if not sources:
        raise RuntimeError(f"the fusedrl CUDA extension is not installed and its sources are missing from {CSRC_DIR}")
    from torch.utils.cpp_extension import load

    try:
        return load(name=JIT_NAME, sources=sources, extra_cflags=CXX_FLAGS, extra_cuda_cflags=NVCC_FLAGS)
    except Exception as exc:  # the build can fail in many ways (no ninja, no nvcc, compiler errors)
        raise RuntimeError(
            f"building the fusedrl CUDA extension from {CSRC_DIR} failed ({type(exc).__name__}: {exc}); "
            "install ninja and a CUDA toolkit matching torch, or use backend='triton' or 'torch'"
        ) from exc


def load_extension() -> ModuleType:
    """The extension module (``fusedrl._C`` if installed, else the JIT build); raises ``RuntimeError`` if neither."""
    if "ext" not in _loaded:
        try:
            _loaded["ext"] = _load()
        except RuntimeError as exc:
            _loaded["ext"] = exc
    result = _loaded["ext"]
    if isinstance(result, Exception):
        raise result
    return result


def extension_error() -> Exception | None:
    """None when ``load_extension`` succeeds, else the error it raises."""
    try:
        load_extension()
    except RuntimeError as exc:
        return exc
    return None
