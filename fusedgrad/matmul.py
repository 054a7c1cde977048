"""`mm` and `mm_relu`: matrix products with autograd, backed by one Triton GEMM kernel.

    out    = relu(a @ b)                     (or a @ b for `mm`)
    grad_a = (grad_out * relu'(out)) @ b.T     relu'(out) = 0 where out <= 0, else 1
    grad_b = a.T @ (grad_out * relu'(out))

On the Triton backend, forward saves out (never the pre-activation), and a and b where
backward needs them (b for grad_a, a for grad_b, as torch.mm), and backward applies
relu'(out) inside the two backward GEMMs as they load grad_out. `matmul_reference` is the same
computation in ATen: the test oracle, and the ATen backend itself. There it runs under torch's
own autograd (mm, then an in-place relu that saves only its output: the same tensors saved),
because a Python autograd.Function would only add overhead around the same ATen calls.
Backend "auto" takes that path for float32 products at IEEE precision (`dispatch.resolve`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import dispatch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def matmul_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    relu: bool = False,
    a_relu_mask: torch.Tensor | None = None,
    b_relu_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ATen twin of `fusedgrad.kernels.matmul`: same arguments (but `config`), same semantics."""
    if a_relu_mask is not None:
        a = a.masked_fill(a_relu_mask <= 0, 0)  # torch's threshold_backward: NaN passes
    if b_relu_mask is not None:
        b = b.masked_fill(b_relu_mask <= 0, 0)
    out = torch.mm(a, b)
    return out.relu_() if relu else out


class TritonMatmulFunction(torch.autograd.Function):
    """relu(a @ b) or a @ b with Triton kernels for forward and backward."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, relu: bool) -> torch.Tensor:
        # Backward runs at the forward's fp32 precision, wherever `backward()` is called.
        ctx.fp32_precision = dispatch.kernel_fp32_precision()
        out = dispatch.load_kernels().matmul(a, b, relu=relu, fp32_precision=ctx.fp32_precision)
        # As torch.mm does: grad_a needs b, grad_b needs a, so a frozen b keeps no activation
        # a alive. out doubles as the ReLU mask.
        needs_a, needs_b = ctx.needs_input_grad[:2]
        ctx.save_for_backward(a if needs_b else None, b if needs_a else None, out if relu else None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        a, b, out = ctx.saved_tensors
        matmul = dispatch.load_kernels().matmul
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = matmul(grad_out, b.T, a_relu_mask=out, fp32_precision=ctx.fp32_precision)
        if ctx.needs_input_grad[1]:
            grad_b = matmul(a.T, grad_out, b_relu_mask=out, fp32_precision=ctx.fp32_precision)
        return grad_a, grad_b, None


def check_operands(op: str, a: object, b: object, names: tuple[str, str] = ("a", "b")) -> None:
    """Raise TypeError/ValueError naming shapes and dtypes unless `a @ b` is well formed."""
    for name, t in zip(names, (a, b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; supported dtypes are float16, "
                            f"bfloat16, float32 and float64")
        if t.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-D, got shape {tuple(t.shape)}")
    (name_a, name_b) = names
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: dtypes differ: {name_a} is {a.dtype}, {name_b} is {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{op}: devices differ: {name_a} is on {a.device}, {name_b} is on {b.device}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"{op}: inner dimensions differ: {name_a} is {tuple(a.shape)}, "
                         f"{name_b} is {tuple(b.shape)} ({a.shape[1]} != {b.shape[0]})")


def _matmul(op: str, a: torch.Tensor, b: torch.Tensor, relu: bool) -> torch.Tensor:
    check_operands(op, a, b)
    if dispatch.resolve(a, gemm=True) == "triton":
        return TritonMatmulFunction.apply(a, b, relu)
    return matmul_reference(a, b, relu=relu)


def mm_relu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`torch.relu(a @ b)` for a (M, K) and b (K, N), with the ReLU fused into the GEMM."""
    return _matmul("mm_relu", a, b, relu=True)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` for a (M, K) and b (K, N)."""
    return _matmul("mm", a, b, relu=False)
