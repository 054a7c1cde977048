"""`mse_loss`: squared-error loss whose forward also produces the gradient (one Triton pass).

    loss = mean((input - target)**2)  (or its sum),   grad_input = 2 (input - target) / n * grad_loss
                                                        (n = 1 for the sum)

The ops are `fusedgrad::mse_loss(input, target, reduction="mean")` and
`fusedgrad::mse_loss_and_grad(input, target, mean) -> (loss, grad)`, which autograd uses. On the
Triton backend one kernel reads input and target once and writes the loss and 2 (input - target);
backward only scales that by the upstream gradient (a device tensor: no host sync). On ATen it
is `torch.nn.functional.mse_loss`, which is also the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn import _reduction as _Reduction

from . import dispatch, library
from .checks import autocast
from .function import Function, by_slices, forward_mode_active

REDUCTIONS = ("mean", "sum", "none")


def _check_loss(input, target, reduction: str) -> None:
    for name, t in (("input", input), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"mse_loss: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"mse_loss: {name} has dtype {t.dtype}; a floating-point dtype is needed")
    if reduction not in REDUCTIONS:
        raise ValueError(f"mse_loss: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: shapes differ: input {tuple(input.shape)}, target {tuple(target.shape)}")
    if input.device != target.device:
        raise ValueError(f"mse_loss: devices differ: input on {input.device}, target on {target.device}")


def _promoted(input: torch.Tensor, target: torch.Tensor):
    """input and target in their common dtype, as torch promotes (differentiably)."""
    if input.dtype == target.dtype:
        return input, target
    dtype = torch.promote_types(input.dtype, target.dtype)
    return input.to(dtype), target.to(dtype)


def _scale(input: torch.Tensor, mean: bool) -> float:
    """d loss / d input = scale (input - target)."""
    return 2.0 / input.numel() if mean and input.numel() else 2.0


def loss_and_grad_kernel(input, target, mean: bool, *, backend: str | None = None):
    """The CPU and CUDA kernel of `mse_loss_and_grad`: (loss, grad), grad = scale (input - target).
    With `backend`, from a caller that has checked and promoted, on that backend."""
    if backend is None:
        _check_loss(input, target, "mean")
        input, target = _promoted(input, target)
        backend = dispatch.resolve(input)
    if backend == "triton":
        return dispatch.load_kernels().mse_loss_and_grad(input, target, mean)
    grad = torch.sub(input, target).contiguous()  # contiguous whatever the layouts, as the Triton kernel's
    return F.mse_loss(input, target, reduction="mean" if mean else "sum"), grad.mul_(_scale(input, mean))


def _loss_and_grad_fake(input, target, mean: bool):
    _check_loss(input, target, "mean")
    dtype = torch.promote_types(input.dtype, target.dtype)
    return input.new_empty((), dtype=dtype), input.new_empty(input.shape, dtype=dtype)


def loss_kernel(input, target, reduction: str = "mean"):
    """The CPU and CUDA kernel of `mse_loss`."""
    _check_loss(input, target, reduction)
    input, target = _promoted(input, target)
    if reduction != "none" and dispatch.resolve(input) == "triton":
        return dispatch.load_kernels().mse_loss_and_grad(input, target, reduction == "mean")[0]
    return F.mse_loss(input, target, reduction=reduction).contiguous()  # "none": contiguous, as the fake says


def _loss_fake(input, target, reduction: str = "mean"):
    _check_loss(input, target, reduction)
    dtype = torch.promote_types(input.dtype, target.dtype)
    return input.new_empty(input.shape if reduction == "none" else (), dtype=dtype)


class MSELossFunction(Function):
    """(loss, grad) with grad = d loss / d input = scale (input - target), scale = 2 or 2/n.

    `mse_loss` hands out only the loss; grad is an output too so that backward, which returns
    grad_loss * grad, stays differentiable: under create_graph that product is recorded through
    grad, whose own gradient is scale times the identity. So second derivatives through the
    loss are exact, at no cost to a first-order backward (grad is saved either way)."""

    @staticmethod
    def forward(input: torch.Tensor, target: torch.Tensor, mean: bool, backend: str | None):
        if backend is None:  # a graph is being built: the op, whose kernel chooses when it runs
            with torch._C._AutoDispatchBelowAutograd():
                return torch.ops.fusedgrad.mse_loss_and_grad(input, target, mean)
        return loss_and_grad_kernel(input, target, mean, backend=backend)

    @staticmethod
    def setup_context(ctx, inputs, outputs):
        input, _, mean, _ = inputs
        ctx.scale = _scale(input, mean)
        ctx.set_materialize_grads(False)  # grad's own gradient is None in a first-order backward
        ctx.save_for_backward(outputs[1])
        if forward_mode_active():
            ctx.save_for_forward(outputs[1])

    @staticmethod
    def jvp(ctx, input_tangent, target_tangent, _mean, _backend):
        """loss' = sum(grad * (input' - target')), grad' = scale (input' - target')."""
        (grad,) = ctx.saved_tensors
        if input_tangent is None:
            difference = -target_tangent
        else:
            difference = input_tangent if target_tangent is None else input_tangent - target_tangent
        return (grad * difference).sum(), ctx.scale * difference

    @staticmethod
    def vmap(info, in_dims, input, target, mean, backend):
        return by_slices(MSELossFunction, info.batch_size, in_dims, input, target, mean, backend)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor | None, grad_of_grad: torch.Tensor | None):
        (grad,) = ctx.saved_tensors
        total = None if grad_loss is None else grad * grad_loss
        if grad_of_grad is not None:
            total = ctx.scale * grad_of_grad if total is None else total + ctx.scale * grad_of_grad
        grad_input = total if ctx.needs_input_grad[0] else None
        grad_target = -total if ctx.needs_input_grad[1] and total is not None else None
        return grad_input, grad_target, None, None


def _loss_autograd(input, target, reduction: str = "mean"):
    library.refuse_transforms("mse_loss")
    _check_loss(input, target, reduction)
    if reduction == "none":  # torch's own: there is no reduction to fuse
        return F.mse_loss(input, target, reduction="none")
    return _apply(*_promoted(input, target), reduction == "mean")[0]


def _loss_and_grad_autograd(input, target, mean: bool):
    library.refuse_transforms("mse_loss_and_grad")
    _check_loss(input, target, "mean")
    return _apply(*_promoted(input, target), mean)


def _apply(input, target, mean: bool):
    """MSELossFunction on checked, promoted tensors: its backend chosen now in plain eager mode,
    by the kernel when it runs where a graph is being built."""
    return MSELossFunction.apply(input, target, mean, dispatch.resolve(input) if library.eager(input, target) else None)


library.define("mse_loss(Tensor input, Tensor target, str reduction=\"mean\") -> Tensor", loss_kernel, _loss_fake,
               _loss_autograd, autocast_dtype=torch.float32)
library.define("mse_loss_and_grad(Tensor input, Tensor target, bool mean) -> (Tensor, Tensor)", loss_and_grad_kernel,
               _loss_and_grad_fake, _loss_and_grad_autograd, autocast_dtype=torch.float32)


def mse_loss(input: torch.Tensor, target: torch.Tensor, size_average: bool | None = None, reduce: bool | None = None,
             reduction: str = "mean", weight: torch.Tensor | None = None) -> torch.Tensor:
    """`torch.nn.functional.mse_loss`, with its signature and default (`reduction="mean"`; the
    tutorial's loss is `reduction="sum"`). "sum" and "mean" run the one-pass Triton kernel on
    the Triton backend; "none" and a `weight` run `F.mse_loss` itself on every backend (there
    is no reduction to fuse). As torch: under `torch.autocast` the loss computes in float32,
    mixed dtypes promote, and the deprecated `size_average`/`reduce` still pick the reduction.
    Shapes must match (where torch would broadcast with a warning, this raises)."""
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)  # warns, as torch does
    _check_loss(input, target, reduction)
    if weight is not None:  # torch's own, autocast and promotion included
        return F.mse_loss(input, target, reduction=reduction, weight=weight)
    if not library.eager(input, target):
        return torch.ops.fusedgrad.mse_loss(input, target, reduction)
    if reduction == "none":
        return F.mse_loss(input, target, reduction=reduction)
    input, target = _promoted(*autocast(torch.float32, input, target))  # F.mse_loss is on autocast's float32 list
    if dispatch.resolve(input) == "triton":
        return MSELossFunction.apply(input, target, reduction == "mean", "triton")[0]
    return F.mse_loss(input, target, reduction=reduction)
