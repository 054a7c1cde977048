"""`fusedgrad.optim.SGD`: plain SGD (no momentum) whose step is one Triton launch on CUDA.

    p -= lr * p.grad        for every parameter with a gradient

`lr` is a float or a 0-d tensor on the parameters' device (so a captured CUDA graph can read a
new value each replay). `zero_grad` does what torch.optim.Optimizer's does (set_to_none=True by
default) without its profiler and compiler wrappers, whose host time counts where the step is
host-bound.
Elsewhere (CPU, float64, the "aten" backend) the step is `torch._foreach_add_`, what
`torch.optim.SGD` itself runs. The op is `fusedgrad::sgd_`, declared as writing the parameters.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import dispatch, library
from .checks import check_lr


class SGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float | torch.Tensor = 1e-3):
        check_lr(lr, "SGD")
        super().__init__(params, dict(lr=lr))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if set_to_none:
                    param.grad = None
                else:  # as torch does: detach the gradient from any graph, then zero it in place
                    if param.grad.grad_fn is not None:
                        param.grad.detach_()
                    else:
                        param.grad.requires_grad_(False)
                    param.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = [], []
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise ValueError("SGD: sparse gradients are not supported")
                params.append(param)
                grads.append(grad)
            lr_tensor, lr_number = library.lr_arguments(group["lr"])
            if library.eager(*params, *grads):
                sgd_kernel(params, grads, lr_tensor, lr_number)
            elif params:
                torch.ops.fusedgrad.sgd_(params, grads, lr_tensor, lr_number)
        return loss


def sgd_kernel(params: list[torch.Tensor], grads: list[torch.Tensor], lr_tensor: torch.Tensor | None,
               lr: float) -> None:
    """The CPU and CUDA kernel of `fusedgrad::sgd_`: params[i] -= lr * grads[i], where lr is
    lr_tensor when given. Parameters are taken by device, dtype and backend: contiguous ones
    of a Triton dtype in one Triton launch, the rest by torch's own foreach ops."""
    rate = lr if lr_tensor is None else lr_tensor
    buckets: dict = defaultdict(lambda: ([], []))  # (device, dtype, backend) -> params, grads
    backends: dict = {}  # (device, dtype) -> the backend for contiguous ones: resolved once
    for param, grad in zip(params, grads):
        if param.is_contiguous() and grad.is_contiguous():
            backend = backends.get((param.device, param.dtype))
            if backend is None:
                backend = backends[(param.device, param.dtype)] = dispatch.resolve(param)
        else:
            backend = "aten"
        bucket_params, bucket_grads = buckets[(param.device, param.dtype, backend)]
        bucket_params.append(param)
        bucket_grads.append(grad)
    for device, _, _ in buckets:
        check_lr(rate, "SGD.step", device)  # before any write: a group's lr may have been set since
    for (device, dtype, backend), (bucket_params, bucket_grads) in buckets.items():  # under no_grad: SGD.step's, the op's
        if backend == "triton":
            dispatch.load_kernels().sgd_step(bucket_params, bucket_grads, rate)
            library.bump_versions(*bucket_params)
        elif lr_tensor is not None:
            torch._foreach_sub_(bucket_params, torch._foreach_mul(bucket_grads, rate))
        else:
            torch._foreach_add_(bucket_params, bucket_grads, alpha=-rate)


def _sgd_fake(params, grads, lr_tensor, lr) -> None:
    if len(params) != len(grads):
        raise ValueError(f"sgd_: {len(params)} parameters but {len(grads)} gradients")


library.define("sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor? lr_tensor, float lr) -> ()", sgd_kernel, _sgd_fake,
               mutating=True)
