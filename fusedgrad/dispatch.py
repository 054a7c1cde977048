"""Backend selection: which implementation runs an op on a tensor.

    "auto"    Triton for CUDA tensors of float16, bfloat16 and float32 (`kernels.precision.AUTO_DTYPES`),
              ATen for everything else (CPU tensors, float64); and ATen (cuBLAS) for `mm` and
              `mm_relu` where ATen computes the same product (see `resolve`)
    "triton"  Triton always, float64 included; CPU tensors need Triton's interpreter (TRITON_INTERPRET=1)
    "aten"    ATen always

The name in force is `settings.current_backend()`. Nothing here imports triton or touches
CUDA: `fusedgrad.kernels`' launchers load on the first Triton launch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import settings
from .kernels.precision import AUTO_DTYPES, KERNEL_DTYPES


def load_kernels():
    """`fusedgrad.kernels` with its launchers loaded (and so triton imported). Every Triton
    launch asks, so after the first success it is a global's read, not an import statement."""
    global _loaded
    if _loaded is not None:
        return _loaded
    try:
        from . import kernels
        kernels.gemm  # the launchers import triton on first access
    except ImportError as error:
        raise RuntimeError(f"backend 'triton' needs the triton package, which failed to import "
                           f"({error}); use backend 'aten' or 'auto'") from error
    _loaded = kernels
    return kernels


_loaded = None  # fusedgrad.kernels, once its launchers have loaded


def resolve(tensor: torch.Tensor, *, gemm: bool = False) -> str:
    """The concrete implementation, "triton" or "aten", for an op on `tensor`.

    `gemm=True` for the autograd matrix products (`mm`, `mm_relu`). There "auto" chooses ATen
    where ATen computes the same product, a float32 product at IEEE precision (the Triton
    kernels' fp32 precision "ieee" and torch's own setting "ieee"). The reason: at small sizes
    the autograd loop is host-bound and an ATen call costs less host time than a Triton
    launch; at large ones cuBLAS's SGEMM is expected to beat Triton's FMA dot by more than the
    fused ReLU saves (bench/NOTES.md v5f says what is measured). Under autocast the products'
    inputs are already cast to 16 bits when this runs (`checks.autocast`). tf32, "tf32x3" and
    16-bit products stay on Triton, as do the loss, SGD and the fused `train_step`; backend
    "triton" forces Triton."""
    name = settings.current_backend()
    if name == "aten" or tensor.is_meta:  # meta tensors: ATen's own shape functions, on any backend
        return "aten"
    if name == "auto":
        if not tensor.is_cuda or tensor.dtype not in AUTO_DTYPES:
            return "aten"
        same_as_aten = (gemm and tensor.dtype == torch.float32 and settings.kernel_fp32_precision() == "ieee"
                        and settings.torch_fp32_precision() == "ieee")
        return "aten" if same_as_aten else "triton"
    if tensor.dtype not in KERNEL_DTYPES:
        raise TypeError(f"backend 'triton': the Triton kernels take float16, bfloat16, float32 and float64, "
                        f"got {tensor.dtype}; use backend 'aten' or 'auto' for it")
    if not tensor.is_cuda and not load_kernels().INTERPRETED:
        raise RuntimeError(f"backend 'triton' needs CUDA tensors, or Triton's interpreter for "
                           f"tensors on {tensor.device}: set TRITON_INTERPRET=1 before triton is "
                           f"first imported, or use backend 'auto' or 'aten'")
    return "triton"


class Launch(NamedTuple):
    """What a launch runs at, read from the settings once: the backend, and for Triton the fp32
    precision and the tuner (None for ATen). An autograd Function keeps its forward's, so
    backward runs at the forward's settings wherever it is called (as autocast's dtypes do)."""
    backend: str
    fp32_precision: str | None = None
    tuner: object = None


def launch_settings(tensor: torch.Tensor, *, gemm: bool = False) -> Launch:
    """The `Launch` for an op on `tensor` under the settings in force (`resolve` for `gemm`)."""
    if resolve(tensor, gemm=gemm) == "aten":
        return Launch("aten")
    load_kernels()  # before the tuner, which imports them too: a missing triton's clear error
    return Launch("triton", settings.kernel_fp32_precision(), settings.tuner())
