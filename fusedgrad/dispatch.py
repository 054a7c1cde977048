"""Backend selection: which implementation runs an op.

    "auto"    Triton for CUDA tensors of a dtype the kernels take (float16, bfloat16, float32),
              ATen for everything else (CPU tensors, float64); and ATen (cuBLAS) for the matrix
              products of `mm` and `mm_relu` in float32 at IEEE precision (see `resolve`)
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


class _Setting:
    """A named choice: the innermost `block(name)` in this context, else an environment
    variable (read at each call), else the default (the first choice)."""

    def __init__(self, what: str, choices: tuple[str, ...], env_var: str, api: str):
        self.what, self.choices, self.env_var, self.api = what, choices, env_var, api
        self.override: contextvars.ContextVar[str | None] = contextvars.ContextVar(api, default=None)

    def check(self, name: object, where: str) -> str:
        if name not in self.choices:
            raise ValueError(f"{where}: unknown {self.what} {name!r}; choose one of {', '.join(self.choices)}")
        return name  # type: ignore[return-value]

    def current(self) -> str:
        name = self.override.get()
        if name is not None:
            return name
        return self.check(os.environ.get(self.env_var, "").strip().lower() or self.choices[0],
                          f"environment variable {self.env_var}")

    @contextlib.contextmanager
    def block(self, name: str) -> Iterator[str]:
        token = self.override.set(self.check(name, self.api))
        try:
            yield name
        finally:
            self.override.reset(token)


_BACKEND = _Setting("backend", BACKENDS, ENV_VAR, "fusedgrad.backend")
_FP32_PRECISION = _Setting("fp32 precision", FP32_PRECISIONS, PRECISION_ENV_VAR, "fusedgrad.fp32_precision")


def current_backend() -> str:
    """The backend name in force here: "auto", "triton" or "aten"."""
    return _BACKEND.current()


def backend(name: str) -> contextlib.AbstractContextManager[str]:
    """Run the fusedgrad ops inside the block with backend `name` ("auto", "triton", "aten")."""
    return _BACKEND.block(name)


def current_fp32_precision() -> str:
    """The fp32 precision in force here for the Triton kernels: "torch" or "tf32x3"."""
    return _FP32_PRECISION.current()


def fp32_precision(name: str) -> contextlib.AbstractContextManager[str]:
    """Run the Triton kernels' fp32 products inside the block at precision `name`
    ("torch" or "tf32x3"); 16-bit inputs and the ATen backend are unaffected."""
    return _FP32_PRECISION.block(name)


def kernel_fp32_precision() -> str | None:
    """What the kernel launchers take: None (follow torch) or "tf32x3"."""
    name = current_fp32_precision()
    return None if name == "torch" else name


def torch_fp32_precision() -> str:
    """torch's fp32 matmul setting as cuBLAS follows it: "ieee" or "tf32"."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch without the fp32_precision API
        return "tf32" if matmul.allow_tf32 else "ieee"
    if precision == "none":  # "none" inherits the global setting
        precision = torch.backends.fp32_precision
    return "tf32" if precision == "tf32" else "ieee"


def load_kernels():
    """Import `fusedgrad.kernels` (and so triton) on first use."""
    try:
        from . import kernels
    except ImportError as error:
        raise RuntimeError(f"backend 'triton' needs the triton package, which failed to import "
                           f"({error}); use backend 'aten' or 'auto'") from error
    return kernels


def resolve(tensor: torch.Tensor, *, gemm: bool = False) -> str:
    """The concrete implementation, "triton" or "aten", for an op on `tensor`.

    `gemm=True` for the autograd matrix products (`mm`, `mm_relu`): there "auto" also leaves a
    float32 product at IEEE precision (torch's setting "ieee", fusedgrad's fp32 precision
    "torch") to ATen, outside autocast. Evidence, one H200 run (bench/NOTES.md v5f): at the
    tutorial's size the autograd loop is host-bound, and all-ATen ran 2.2x all-Triton, while
    the five GEMMs' GPU time (cuBLAS 31 µs, Triton 40) was a few percent of either step.
    Predicted, not measured: at GEMM-bound sizes cuBLAS's SGEMM beats Triton's FMA dot by more
    than the one elementwise pass fusion saves. tf32, "tf32x3" and 16-bit products stay on
    Triton, as do the loss, SGD and the fused `train_step`; backend "triton" forces Triton."""
    name = current_backend()
    if name == "aten":
        return "aten"
    if name == "auto":
        if not tensor.is_cuda or tensor.dtype not in TRITON_DTYPES:
            return "aten"
        ieee = (gemm and tensor.dtype == torch.float32 and current_fp32_precision() == "torch"
                and torch_fp32_precision() == "ieee")
        # Under autocast torch.mm would compute in 16 bits while Triton computes in the inputs'
        # dtype: there the product stays on Triton, so the output dtype does not hinge on tf32.
        return "aten" if ieee and not torch.is_autocast_enabled("cuda") else "triton"
    if tensor.dtype not in TRITON_DTYPES:
        raise TypeError(f"backend 'triton': the Triton kernels take float16, bfloat16 and float32, "
                        f"got {tensor.dtype}; use backend 'aten' or 'auto' for it")
    if not tensor.is_cuda and not load_kernels().INTERPRETED:
        raise RuntimeError(f"backend 'triton' needs CUDA tensors, or Triton's interpreter for "
                           f"tensors on {tensor.device}: set TRITON_INTERPRET=1 before triton is "
                           f"first imported, or use backend 'auto' or 'aten'")
    return "triton"
