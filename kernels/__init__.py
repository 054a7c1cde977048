"""Triton kernels and their launchers (installed as `fusedgrad.kernels`). No autograd here.

Importing this package imports triton; `fusedgrad` imports it only when a Triton backend runs.
"""

from .matmul_relu import INTERPRETED, SUPPORTED_DTYPES, matmul

__all__ = ["INTERPRETED", "SUPPORTED_DTYPES", "matmul"]
