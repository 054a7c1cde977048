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
Backend "auto" takes that path where ATen computes the same product (`dispatch.resolve`).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import dispatch, settings
from .checks import check_operands


def matmul_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    relu: bool = False,
    a_relu_mask: torch.Tensor | None = None,
    b_relu_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ATen twin of `fusedgrad.kernels.matmul`, kept on purpose: same arguments (but the
    launch options `config`, `fp32_precision`, `tuner`), same semantics; the CPU path and the
    test oracle of the Triton launcher."""
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
        # Backward runs at the forward's settings, wherever `backward()` is called.
        kernels = dispatch.load_kernels()  # first: a missing triton gets its clear error
        ctx.launch = dict(fp32_precision=settings.kernel_fp32_precision(), tuner=settings.tuner())
        out = kernels.matmul(a, b, relu=relu, **ctx.launch)
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
            grad_a = matmul(grad_out, b.T, a_relu_mask=out, **ctx.launch)
        if ctx.needs_input_grad[1]:
            grad_b = matmul(a.T, grad_out, b_relu_mask=out, **ctx.launch)
        return grad_a, grad_b, None


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
