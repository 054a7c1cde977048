"""Deterministic summation shared by the loss kernels.

Floating-point sums depend on their order. Every loss in fusedgrad is summed in an order fixed
by the sizes and block shapes alone (no atomics): blocks write partial sums, and one program
adds the partials up in index order. The same inputs give bitwise the same loss every run.
"""

import torch
import triton
import triton.language as tl

from .launch import Launcher
from .precision import KERNEL_DTYPES, accumulator_dtype


def accumulator(dtype: torch.dtype):
    """The Triton type that sums and products of `dtype` elements are carried in: the Triton
    twin of `precision.accumulator_dtype` (float64 for float64, else float32), looked up in a
    table built from it, because every launch asks."""
    return _ACCUMULATORS[dtype]


_ACCUMULATORS = {dtype: tl.float64 if accumulator_dtype(dtype) == torch.float64 else tl.float32
                 for dtype in KERNEL_DTYPES}


@triton.jit
def sum_in_fixed_order(ptr, n, BLOCK: tl.constexpr):
    """Sum of ptr[0:n] (partial sums, in their accumulator type), read BLOCK at a time in index order."""
    acc = tl.zeros((BLOCK,), dtype=ptr.dtype.element_ty)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(ptr + offs, mask=offs < n, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit(do_not_specialize=["divisor"])
def _sum_partials_kernel(partials_ptr, out_ptr, n, divisor, BLOCK: tl.constexpr):
    """out = sum(partials[0:n]) / divisor, divided in the partials' dtype (an integer divisor:
    a float argument would be an fp32 scalar), stored in the output's dtype; one program."""
    total = sum_in_fixed_order(partials_ptr, n, BLOCK) / divisor.to(partials_ptr.dtype.element_ty)
    tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))


_SUM_LAUNCHER = Launcher(_sum_partials_kernel, lambda: dict(BLOCK=1024), layout=(2, 2))  # 2 pointers, 2 integers


def sum_partials(partials, out, divisor: int) -> None:
    """Launch: out (0-d) = sum(partials) / divisor, deterministically."""
    _SUM_LAUNCHER((1,), (partials, out, partials.numel(), divisor), ())
