"""Triton kernels for the vocab-sized ops (imported lazily by ``dispatch``)."""
