"""Backend selection: which implementation runs an op.

    "auto"    Triton for CUDA tensors of a dtype the kernels take (float16, bfloat16, float32),
              ATen for everything else (CPU tensors, float64)
    "triton"  Triton always; CPU tensors need Triton's interpreter (TRITON_INTERPRET=1)
    "aten"    ATen always

The name in force is the innermost `fusedgrad.backend(name)` block, else the environment
variable FUSEDGRAD_BACKEND (read at each call), else "auto". Nothing here imports triton or
touches CUDA: `fusedgrad.kernels` is imported on the first Triton launch.

fp32 matmul precision of the Triton kernels, chosen the same way (`fusedgrad.fp32_precision`
blocks, else FUSEDGRAD_FP32_PRECISION, else "torch"):
    "torch"   torch's own setting, as cuBLAS follows it: IEEE fp32, or tf32 where
              `torch.backends.cuda.matmul.fp32_precision` (allow_tf32) asks for it
    "tf32x3"  three tf32 tensor-core products per fp32 product (the operands split into a tf32
              head and a tf32 tail; tail x tail dropped): close to IEEE accuracy, tensor-core
              speed. An opt-in: ATen has no such mode, so the ATen backend keeps torch's setting.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator

import torch

BACKENDS = ("auto", "triton", "aten")
ENV_VAR = "FUSEDGRAD_BACKEND"
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

FP32_PRECISIONS = ("torch", "tf32x3")
PRECISION_ENV_VAR = "FUSEDGRAD_FP32_PRECISION"

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("fusedgrad_backend", default=None)
_precision_override: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fusedgrad_fp32_precision", default=None)


def _check_name(name: object, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name  # type: ignore[return-value]


def current_backend() -> str:
    """The backend name in force here: "auto", "triton" or "aten"."""
    name = _override.get()
    if name is not None:
        return name
    return _check_name(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto",
                       f"environment variable {ENV_VAR}")


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """Run the fusedgrad ops inside the block with backend `name` ("auto", "triton", "aten")."""
    token = _override.set(_check_name(name, "fusedgrad.backend"))
    try:
        yield name
    finally:
        _override.reset(token)


def _check_precision(name: object, where: str) -> str:
    if name not in FP32_PRECISIONS:
        raise ValueError(f"{where}: unknown fp32 precision {name!r}; choose one of {', '.join(FP32_PRECISIONS)}")
    return name  # type: ignore[return-value]


def current_fp32_precision() -> str:
    """The fp32 precision in force here for the Triton kernels: "torch" or "tf32x3"."""
    name = _precision_override.get()
    if name is not None:
        return name
    return _check_precision(os.environ.get(PRECISION_ENV_VAR, "torch").strip().lower() or "torch",
                            f"environment variable {PRECISION_ENV_VAR}")


@contextlib.contextmanager
def fp32_precision(name: str) -> Iterator[str]:
    """Run the Triton kernels' fp32 products inside the block at precision `name`
    ("torch" or "tf32x3"); 16-bit inputs and the ATen backend are unaffected."""
    token = _precision_override.set(_check_precision(name, "fusedgrad.fp32_precision"))
    try:
        yield name
    finally:
        _precision_override.reset(token)


def kernel_fp32_precision() -> str | None:
    """What the kernel launchers take: None (follow torch) or "tf32x3"."""
    name = current_fp32_precision()
    return None if name == "torch" else name


def load_kernels():
    """Import `fusedgrad.kernels` (and so triton) on first use."""
    try:
        from . import kernels
    except ImportError as error:
        raise RuntimeError(f"backend 'triton' needs the triton package, which failed to import "
                           f"({error}); use backend 'aten' or 'auto'") from error
    return kernels


def resolve(tensor: torch.Tensor) -> str:
    """The concrete implementation, "triton" or "aten", for an op on `tensor`."""
    name = current_backend()
    if name == "aten":
        return "aten"
    if name == "auto":
        return "triton" if tensor.is_cuda and tensor.dtype in TRITON_DTYPES else "aten"
    if tensor.dtype not in TRITON_DTYPES:
        raise TypeError(f"backend 'triton': the Triton kernels take float16, bfloat16 and float32, "
                        f"got {tensor.dtype}; use backend 'aten' or 'auto' for it")
    if not tensor.is_cuda and not load_kernels().INTERPRETED:
        raise RuntimeError(f"backend 'triton' needs CUDA tensors, or Triton's interpreter for "
                           f"tensors on {tensor.device}: set TRITON_INTERPRET=1 before triton is "
                           f"first imported, or use backend 'auto' or 'aten'")
    return "triton"
