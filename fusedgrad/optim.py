"""`fusedgrad.optim.SGD`: plain SGD (no momentum) whose step is one Triton launch on CUDA.

    p -= lr * p.grad        for every parameter with a gradient

`lr` is a float or a 0-d tensor on the parameters' device (so a captured CUDA graph can read a
new value each replay). `zero_grad` does what torch.optim.Optimizer's does (set_to_none=True by
default) without its profiler and compiler wrappers, whose host time counts where the step is
host-bound.
Elsewhere (CPU, float64, the "aten" backend) the step is `torch._foreach_add_`, what
`torch.optim.SGD` itself runs. The op is `fusedgrad::sgd_`, declared as writing the parameters.
A step checks every group (rates, parameters that cannot be written in place, parameters sharing
memory with each other or with gradients) before it updates any: a refused step changes nothing.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import dispatch, library
from .checks import check_lr, check_writable, memory_span


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
        groups = []  # (params, grads, names, lr) per parameter group, parameters with a gradient only
        for group_index, group in enumerate(self.param_groups):
            params, grads, names = [], [], []
            for index, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise ValueError("SGD: sparse gradients are not supported")
                params.append(param)
                grads.append(grad)
                names.append(f"param_groups[{group_index}]['params'][{index}]")
            groups.append((params, grads, names, group["lr"]))
        every_param = [param for params, _, _, _ in groups for param in params]
        every_grad = [grad for _, grads, _, _ in groups for grad in grads]
        if library.eager(*every_param, *every_grad):
            # Every group checked before any is updated: a refused step changes nothing.
            check_update(every_param, every_grad, [lr for params, _, _, lr in groups for _ in params],
                         [name for _, _, names, _ in groups for name in names])
            for params, grads, _, lr in groups:
                _update(params, grads, lr)
        else:  # a graph is being built: the op's kernel checks its group when the graph runs
            for params, grads, _, lr in groups:
                if params:
                    torch.ops.fusedgrad.sgd_(params, grads, *library.lr_arguments(lr))
        return loss


def check_update(params: list[torch.Tensor], grads: list[torch.Tensor], rates: list, names: list[str]) -> None:
    """Raise, before anything is written, unless `params[i] -= rates[i] * grads[i]` can be
    applied to all of them: each rate follows the learning-rate rule on its parameter's device,
    each parameter can be written in place (`check_writable`), and no parameter shares memory
    with another parameter or with a gradient (`_check_apart`). `names` name them in errors."""
    for param, rate, name in zip(params, rates, names):
        check_lr(rate, "SGD.step", param.device)
        check_writable("SGD.step", name, param)
    _check_apart(params, grads, names)


def _check_apart(params: list[torch.Tensor], grads: list[torch.Tensor], names: list[str]) -> None:
    """Raise unless no parameter shares memory with another parameter or with any gradient:
    the update of one would change what another reads or writes (one launch updates them all
    at once; torch's one-by-one loop would instead make the result depend on their order)."""
    spans = sorted((memory_span(t), kind, index) for kind, tensors in ((0, params), (1, grads))
                   for index, t in enumerate(tensors) if not t.is_meta and t.numel())
    farthest = farthest_param = None  # (end, kind, index) of the spans seen so far that reach farthest
    for (start, end), kind, index in spans:  # by start: an earlier span overlaps this one iff it ends past start
        other = farthest if kind == 0 else farthest_param
        if other is not None and other[0] > start:
            what = [f"{names[i]}" if k == 0 else f"the gradient of {names[i]}" for _, k, i in (other, (end, kind, index))]
            raise ValueError(f"SGD.step: {what[0]} and {what[1]} share memory; each parameter must have memory "
                             f"of its own, apart from every gradient")
        if farthest is None or end > farthest[0]:
            farthest = (end, kind, index)
        if kind == 0 and (farthest_param is None or end > farthest_param[0]):
            farthest_param = (end, kind, index)


def sgd_kernel(params: list[torch.Tensor], grads: list[torch.Tensor], lr_tensor: torch.Tensor | None,
               lr: float) -> None:
    """The CPU and CUDA kernel of `fusedgrad::sgd_`: params[i] -= lr * grads[i], where lr is
    lr_tensor when given, after `check_update`."""
    rate = lr if lr_tensor is None else lr_tensor
    check_update(params, grads, [rate] * len(params), [f"params[{index}]" for index in range(len(params))])
    _update(params, grads, rate)


def _update(params: list[torch.Tensor], grads: list[torch.Tensor], rate: float | torch.Tensor) -> None:
    """params[i] -= rate * grads[i] on checked arguments. Parameters are taken by device, dtype
    and backend: contiguous ones of a Triton dtype in one Triton launch, the rest by torch's
    own foreach ops."""
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
    for (device, dtype, backend), (bucket_params, bucket_grads) in buckets.items():  # under no_grad: SGD.step's, the op's
        if backend == "triton":
            dispatch.load_kernels().sgd_step(bucket_params, bucket_grads, rate)
            library.bump_versions(*bucket_params)
        elif isinstance(rate, torch.Tensor):
            torch._foreach_sub_(bucket_params, torch._foreach_mul(bucket_grads, rate))
        else:
            torch._foreach_add_(bucket_params, bucket_grads, alpha=-rate)


def _sgd_fake(params, grads, lr_tensor, lr) -> None:
    if len(params) != len(grads):
        raise ValueError(f"sgd_: {len(params)} parameters but {len(grads)} gradients")


library.define("sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor? lr_tensor, float lr) -> ()", sgd_kernel, _sgd_fake,
               mutating=True)
