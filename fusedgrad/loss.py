"""`mse_loss`: squared-error loss whose forward also produces the gradient (one Triton pass).

    loss = mean((input - target)**2)  (or its sum),   grad_input = 2 (input - target) / n * grad_loss
                                                        (n = 1 for the sum)

On CUDA one kernel reads input and target once and writes the loss and 2 (input - target);
backward only scales that by the upstream gradient (a device tensor: no host sync). Elsewhere
it is `torch.nn.functional.mse_loss`, which is also the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn import _reduction as _Reduction

from . import dispatch
from .checks import autocast
from .function import Function, by_slices, forward_mode_active

REDUCTIONS = ("mean", "sum", "none")


class TritonMSELossFunction(Function):
    """(loss, grad) with grad = d loss / d input = scale (input - target), scale = 2 or 2/n.

    `mse_loss` hands out only the loss; grad is an output too so that backward, which returns
    grad_loss * grad, stays differentiable: under create_graph that product is recorded through
    grad, whose own gradient is scale times the identity. So second derivatives through the
    loss are exact, at no cost to a first-order backward (grad is saved either way)."""

    @staticmethod
    def forward(input: torch.Tensor, target: torch.Tensor, mean: bool):
        return dispatch.load_kernels().mse_loss_and_grad(input, target, mean)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, _, mean = inputs
        ctx.scale = 2.0 / input.numel() if mean and input.numel() else 2.0
        ctx.set_materialize_grads(False)  # grad's own gradient is None in a first-order backward
        ctx.save_for_backward(outputs[1])
        if forward_mode_active():
            ctx.save_for_forward(outputs[1])

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, _mean):
        """loss' = sum(grad * (input' - target')), grad' = scale (input' - target')."""
        (grad,) = ctx.saved_tensors
        if input_tangent is None:
            difference = -target_tangent
        else:
            difference = input_tangent if target_tangent is None else input_tangent - target_tangent
        return (grad * difference).sum(), ctx.scale * difference

    @staticmethod
    def vmap(info, in_dims, input, target, mean):
        return by_slices(TritonMSELossFunction, info.batch_size, in_dims, input, target, mean)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor | None, grad_of_grad: torch.Tensor | None):
        (grad,) = ctx.saved_tensors
        total = None if grad_loss is None else grad * grad_loss
        if grad_of_grad is not None:
            total = ctx.scale * grad_of_grad if total is None else total + ctx.scale * grad_of_grad
        grad_input = total if ctx.needs_input_grad[0] else None
        grad_target = -total if ctx.needs_input_grad[1] and total is not None else None
        return grad_input, grad_target, None


def mse_loss(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None, reduce: bool | None = None,
             reduction: str = "mean", weight: torch.Tensor | None = None) -> torch.Tensor:
    """`torch.nn.functional.mse_loss`, with its signature and default (`reduction="mean"`; the
    tutorial's loss is `reduction="sum"`). "sum" and "mean" run the one-pass Triton kernel on
    the Triton backend; "none" and a `weight` run `F.mse_loss` itself on every backend (there
    is no reduction to fuse). As torch: under `torch.autocast` the loss computes in float32,
    mixed dtypes promote, and the deprecated `size_average`/`reduce` still pick the reduction.
    Shapes must match (where torch would broadcast with a warning, this raises)."""
    for name, t in (("input", input), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"mse_loss: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"mse_loss: {name} has dtype {t.dtype}; a floating-point dtype is needed")
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)  # warns, as torch does
    if reduction not in REDUCTIONS:
        raise ValueError(f"mse_loss: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: shapes differ: input {tuple(input.shape)}, target {tuple(target.shape)}")
    if input.device != target.device:
        raise ValueError(f"mse_loss: devices differ: input on {input.device}, target on {target.device}")
    if reduction == "none" or weight is not None:  # torch's own, autocast and promotion included
        return F.mse_loss(input, target, reduction=reduction, **({} if weight is None else {"weight": weight}))
    input, target = autocast(torch.float32, input, target)  # F.mse_loss is on autocast's float32 list
    if input.dtype != target.dtype:  # promote as torch does
        dtype = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(dtype), target.to(dtype)
    if dispatch.resolve(input) == "triton":
        return TritonMSELossFunction.apply(input, target, reduction == "mean")[0]
    return F.mse_loss(input, target, reduction=reduction)
