"""fusedgrad: fused Triton autograd ops that make a small model's training step fast.

Importing fusedgrad touches neither CUDA nor triton: the kernels load on first use.
"""

from .dispatch import BACKENDS, backend, current_backend
from .matmul import matmul_reference, mm, mm_relu

__version__ = "0.1.0"

__all__ = ["BACKENDS", "backend", "current_backend", "matmul_reference", "mm", "mm_relu", "__version__"]
