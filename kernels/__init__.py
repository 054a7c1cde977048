"""Triton kernels and their launchers (installed as `fusedgrad.kernels`). No autograd here.

Importing this package imports triton; `fusedgrad` imports it only when a Triton backend runs.
"""

from .gemm import INTERPRETED, SUPPORTED_DTYPES, matmul
from .mse_loss import mse_loss_and_grad
from .sgd import sgd_step
from .train_step import two_layer_sgd_step

__all__ = ["INTERPRETED", "SUPPORTED_DTYPES", "matmul", "mse_loss_and_grad", "sgd_step", "two_layer_sgd_step"]
