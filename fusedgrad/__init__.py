"""fusedgrad: fused Triton autograd ops that make a small model's training step fast.

Importing fusedgrad touches neither CUDA nor triton: the kernels load on first use.
"""

from . import distributed, nn, optim
from .linear import linear, linear_reference
from .loss import mse_loss
from .matmul import matmul_reference, mm, mm_relu
from .nn import TwoLayerNet
from .settings import (BACKENDS, FP32_PRECISIONS, autotune, autotune_enabled, backend, cache_dir, current_backend,
                       current_cache_dir, current_fp32_precision, fp32_precision)
from .step import CUDAGraphStep, train_step, train_step_reference

__version__ = "0.1.0"

__all__ = ["BACKENDS", "CUDAGraphStep", "FP32_PRECISIONS", "TwoLayerNet", "autotune", "autotune_enabled", "backend",
           "cache_dir", "current_backend", "current_cache_dir", "current_fp32_precision", "distributed", "fp32_precision",
           "linear", "linear_reference", "matmul_reference", "mm", "mm_relu", "mse_loss", "nn", "optim", "train_step",
           "train_step_reference", "__version__"]
