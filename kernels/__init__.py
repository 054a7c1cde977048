"""Triton kernels and their launchers (installed as `fusedgrad.kernels`). No autograd here, and
nothing from `fusedgrad`: torch and triton only.

Importing this package does not import triton: `precision` and `config` need only torch, and
the launchers (with triton) load when first named, so the library can read the dtype table and
the precision names without triton.
"""

import importlib

from .config import PLAIN_SGD, GemmConfig, UpdateRule, Variant
from .precision import DTYPES, DOT_PRECISIONS, KERNEL_DTYPES, PRECISIONS

# Public name -> the submodule (which imports triton) that defines it.
_LAUNCHERS = {"INTERPRETED": "gemm", "matmul": "gemm", "matmul_unchecked": "gemm", "mse_loss_and_grad": "mse_loss",
              "sgd_step": "sgd", "sgd_step_unchecked": "sgd", "two_layer_sgd_step": "train_step",
              "linear_unchecked": "linear", "weight_and_bias_grad_unchecked": "linear",
              "mlp_sgd_step": "mlp_step", "mlp_gradients": "mlp_step"}
_SUBMODULES = ("cross_entropy", "gemm", "linear", "mlp_step", "mse_loss", "reduce", "sgd", "train_step", "tuning")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAUNCHERS:
        value = getattr(importlib.import_module(f".{_LAUNCHERS[name]}", __name__), name)
        globals()[name] = value  # once loaded, a plain attribute: launches are host-bound
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DTYPES", "DOT_PRECISIONS", "GemmConfig", "INTERPRETED", "KERNEL_DTYPES", "PLAIN_SGD", "PRECISIONS",
           "UpdateRule", "Variant", "matmul", "mse_loss_and_grad", "sgd_step", "two_layer_sgd_step"]
