"""Dtypes and product precisions: the one vocabulary of the kernels, the library and the benchmarks.

This module imports torch only, never triton, so the library can read it at import time.

A float32 product multiplies in one of three ways, named as `tl.dot`'s `input_precision` names
them (and "ieee"/"tf32" as torch's `fp32_precision` setting does):
    "ieee"     IEEE fp32 multiplies (on the FMA units)
    "tf32"     one tf32 tensor-core product (10-bit mantissas in, fp32 accumulate)
    "tf32x3"   three tf32 products (each operand split into a tf32 head and tail, tail x tail
               dropped): close to IEEE accuracy at tensor-core speed
16-bit inputs multiply in their own format and accumulate in fp32. `PRECISIONS` names every
product precision with its input dtype; the benchmarks name their cases by these names.
"""

from __future__ import annotations

import torch

# What fusedgrad's ops take, by the name torch gives the dtype.
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
# What the Triton kernels take (float64 multiplies and accumulates in IEEE float64).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# What backend "auto" runs on Triton: float64 stays on ATen (cuBLAS's DGEMM, which the kernels'
# float64 path is not tuned to match; it exists for exact float64 checks of the Triton ops).
AUTO_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# How a float32 product multiplies (tl.dot's input_precision names; the kernels' fp32_precision).
DOT_PRECISIONS = ("ieee", "tf32", "tf32x3")
# Product precision name -> (input dtype, fp32 precision; None for 16-bit inputs).
PRECISIONS = {
    "ieee": (torch.float32, "ieee"),
    "tf32": (torch.float32, "tf32"),
    "tf32x3": (torch.float32, "tf32x3"),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
}


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and products of `dtype` elements are carried in: float64 for float64,
    float32 for the rest (16-bit inputs accumulate in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_fp32_precision(name: object, where: str) -> str:
    """`name` if it is one of DOT_PRECISIONS, else a ValueError naming `where`."""
    if name not in DOT_PRECISIONS:
        raise ValueError(f"{where}: fp32 precision {name!r} is not one of {', '.join(DOT_PRECISIONS)}")
    return name  # type: ignore[return-value]


def dot_precision(dtype: torch.dtype, fp32_precision: str) -> str | None:
    """tl.dot's input_precision for inputs of `dtype`: `fp32_precision` for float32, None for
    16-bit inputs (they have one way to multiply)."""
    return fp32_precision if dtype == torch.float32 else None


def precision_name(dtype: torch.dtype, fp32_precision: str | None) -> str:
    """The PRECISIONS name of a product of `dtype` inputs at `fp32_precision` (float32 only)."""
    if dtype == torch.float32:
        return check_fp32_precision(fp32_precision, "precision_name")
    if dtype == torch.float64:
        return "fp64"
    for name, (named_dtype, _) in PRECISIONS.items():
        if named_dtype == dtype:
            return name
    raise TypeError(f"precision_name: the kernels take {', '.join(map(str, KERNEL_DTYPES))}, got {dtype}")
