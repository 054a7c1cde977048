"""`fusedgrad.optim.SGD`: plain SGD (no momentum) whose step is one Triton launch on CUDA.

    p -= lr * p.grad        for every parameter with a gradient

`lr` is a float or a 0-d tensor on the parameters' device (so a captured CUDA graph can read a
new value each replay). `zero_grad` does what torch.optim.Optimizer's does (set_to_none=True by
default) without its profiler and compiler wrappers, whose host time counts where the step is
host-bound.
Elsewhere (CPU, float64, the "aten" backend) the step is `torch._foreach_add_`, what
`torch.optim.SGD` itself runs.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import dispatch
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
            lr = group["lr"]
            buckets: dict = defaultdict(lambda: ([], []))  # (device, dtype, backend) -> params, grads
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise ValueError("SGD: sparse gradients are not supported")
                fast = param.is_contiguous() and param.grad.is_contiguous()
                backend = dispatch.resolve(param) if fast else "aten"
                params, grads = buckets[(param.device, param.dtype, backend)]
                params.append(param)
                grads.append(param.grad)
            for (device, dtype, backend), (params, grads) in buckets.items():
                check_lr(lr, "SGD.step", device)  # a group's lr may have been set since
                if backend == "triton":
                    dispatch.load_kernels().sgd_step(params, grads, lr)
                elif isinstance(lr, torch.Tensor):
                    torch._foreach_sub_(params, torch._foreach_mul(grads, lr))
                else:
                    torch._foreach_add_(params, grads, alpha=-lr)
        return loss
