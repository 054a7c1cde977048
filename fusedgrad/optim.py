"""`fusedgrad.optim.SGD`: plain SGD (no momentum) whose step is one Triton launch on CUDA.

    p -= lr * p.grad        for every parameter with a gradient

`lr` is a float or a 0-d tensor on the parameters' device (so a captured CUDA graph can read a
new value each replay). `zero_grad` does what torch.optim.Optimizer's does (set_to_none=True by
default) without its profiler and compiler wrappers, whose host time counts where the step is
host-bound.
Elsewhere (CPU, float64, the "aten" backend) the step is `torch._foreach_add_`, what
`torch.optim.SGD` itself runs. The op is `fusedgrad::sgd_(params, grads, lr_tensors, lrs)`,
declared as writing the parameters, with a rate per parameter: a step is one call for all its
groups, checked as a whole (rates, gradients, parameters that cannot be written in place or
that share memory with each other or with gradients) before anything is written, so a refused
step changes nothing, compiled or not.
"""

from __future__ import annotations

import torch
import torch.optim.optimizer as torch_optimizer

from . import dispatch, library
from .checks import check_lr, check_writable, memory_span, same_view, share_memory


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

    def step(self, closure=None):
        """One update of every parameter with a gradient. Optimizer step hooks (global or this
        optimizer's) and torch's profiler are served as torch.optim serves them (its wrapper
        runs them around the update); without them the update runs bare, since the wrapper's
        profiler scope costs more host time than the rest of a small step."""
        if _observed(self):
            return _observed_step(self, closure)
        return self._step(closure)

    step.hooked = True  # Optimizer.__init__ wraps only a step not marked so: `_observed` decides instead

    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params, grads, rates, names = [], [], [], []  # every group's parameters with a gradient
        for group_index, group in enumerate(self.param_groups):
            rate = group["lr"]
            for index, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise ValueError("SGD: sparse gradients are not supported")
                params.append(param)
                grads.append(grad)
                rates.append(rate)
                names.append((group_index, index))
        grad_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # torch.no_grad(), without its context manager's host time
        try:
            if library.eager(*params, *grads):
                _update(params, grads, check_update(params, grads, rates, names))
            elif params:  # a graph is being built: one op for every group, checked as a whole when it runs
                lr_tensors, lrs = zip(*(library.lr_arguments(rate) for rate in rates))
                torch.ops.fusedgrad.sgd_(params, grads, list(lr_tensors), list(lrs))
        finally:
            torch._C._set_grad_enabled(grad_enabled)
        return loss


def _observed(optimizer: SGD) -> bool:
    """Whether a step hook or torch's profiler would see a step."""
    return bool(_GLOBAL_PRE_HOOKS or _GLOBAL_POST_HOOKS or optimizer._optimizer_step_pre_hooks
                or optimizer._optimizer_step_post_hooks or torch.autograd.profiler._is_profiler_enabled
                or torch._C._autograd._profiler_enabled() or torch.compiler.is_compiling())


_observed_step = torch.optim.Optimizer.profile_hook_step(SGD._step)
_GLOBAL_PRE_HOOKS = torch_optimizer._global_optimizer_pre_hooks
_GLOBAL_POST_HOOKS = torch_optimizer._global_optimizer_post_hooks


def check_update(params: list[torch.Tensor], grads: list[torch.Tensor], rates: list, names: list) -> list:
    """Raise, before anything is written, unless `params[i] -= rates[i] * grads[i]` can be
    applied to all of them: each rate follows the learning-rate rule for its parameter, each
    gradient matches its parameter, each parameter can be written in place (`check_writable`),
    and no parameter shares memory with another parameter or with a gradient (`_check_apart`).
    `names[i]` names parameter i in errors: a string, or (group, index) in `param_groups`.
    Returns the rates as the update reads them: numbers as floats, and a tensor rate that
    shares memory with a parameter as a copy, since the update may change it first."""
    if len(params) != len(grads):
        raise ValueError(f"SGD.step: {len(params)} parameters but {len(grads)} gradients")
    checked = set()  # (rate, device, dtype) already checked: one check per group and kind of parameter
    for param, grad, rate, name in zip(params, grads, rates, names):
        key = (id(rate), param.device, param.dtype)
        if key not in checked:
            check_lr(rate, "SGD.step", param.device, param.dtype)
            checked.add(key)
        if param.is_inference() or not param.is_contiguous():  # else writable: formatting a name costs
            check_writable("SGD.step", _name(name), param)
        if grad.shape != param.shape or grad.dtype != param.dtype or grad.device != param.device:
            raise ValueError(f"SGD.step: the gradient of {_name(name)} is {tuple(grad.shape)} {grad.dtype} on "
                             f"{grad.device}, its parameter {tuple(param.shape)} {param.dtype} on {param.device}")
    _check_apart(params, grads, names)
    copies: dict = {}  # id of a tensor rate that shares memory with a parameter -> its copy
    for rate in rates:
        if isinstance(rate, torch.Tensor) and id(rate) not in copies and any(share_memory(rate, p) for p in params):
            copies[id(rate)] = rate.clone()
    # Numbers as floats (a Fraction or a numpy scalar, as the kernels take them).
    return [copies.get(id(rate), rate) if isinstance(rate, torch.Tensor) else float(rate) for rate in rates]


def _name(name) -> str:
    return name if isinstance(name, str) else f"param_groups[{name[0]}]['params'][{name[1]}]"


def _check_apart(params: list[torch.Tensor], grads: list[torch.Tensor], names: list) -> None:
    """Raise if a parameter shares an element with another parameter or with a gradient other
    than its own in the same places: the update of one would change what another reads or
    writes (one launch updates them all at once; a loop would make the result depend on the
    order). Address ranges first, by a sweep: only tensors whose ranges meet are compared."""
    entries = []
    for kind, tensors in ((0, params), (1, grads)):
        for index, t in enumerate(tensors):
            if t.numel() and not t.is_meta:
                entries.append((*memory_span(t), kind, index))
    entries.sort()
    open_entries: list = []  # entries whose range reaches past the current start
    reach = 0  # the farthest end of the open entries: most steps start past it and meet nothing
    for entry in entries:
        start, end, kind, index = entry
        if start >= reach:
            open_entries.clear()
        else:
            open_entries = [other for other in open_entries if other[1] > start]
        for _, _, other_kind, other_index in open_entries:
            t, other = (params, grads)[kind][index], (params, grads)[other_kind][other_index]
            if kind == other_kind == 1 or (kind != other_kind and index == other_index and same_view(t, other)):
                continue  # gradients may share; a parameter may be its own gradient, element by element
            if share_memory(t, other):
                what = [_name(names[i]) if k == 0 else f"the gradient of {_name(names[i])}"
                        for k, i in ((other_kind, other_index), (kind, index))]
                raise ValueError(f"SGD.step: {what[0]} and {what[1]} share memory; each parameter must have "
                                 f"memory of its own, apart from every other gradient")
        open_entries.append(entry)
        reach = max(reach, end)


def sgd_kernel(params: list[torch.Tensor], grads: list[torch.Tensor], lr_tensors: list[torch.Tensor | None],
               lrs: list[float]) -> None:
    """The CPU and CUDA kernel of `fusedgrad::sgd_`: params[i] -= rate[i] * grads[i], where
    rate[i] is lr_tensors[i] when given, else lrs[i], after `check_update`."""
    rates = _rates(params, lr_tensors, lrs)
    _update(params, grads, check_update(params, grads, rates, [f"params[{i}]" for i in range(len(params))]))


def _rates(params, lr_tensors, lrs) -> list:
    if not len(params) == len(lr_tensors) == len(lrs):
        raise ValueError(f"sgd_: {len(params)} parameters but {len(lr_tensors)} lr_tensors and {len(lrs)} lrs")
    return [lr if tensor is None else tensor for tensor, lr in zip(lr_tensors, lrs)]


def _update(params: list[torch.Tensor], grads: list[torch.Tensor], rates: list) -> None:
    """params[i] -= rates[i] * grads[i] on checked arguments. Parameters are taken by device,
    dtype, backend and rate: contiguous ones of a Triton dtype in one Triton launch, the rest
    by torch's own foreach ops. Every backend is chosen (which may raise) before any write."""
    buckets: dict = {}  # (device, dtype, backend, rate key) -> (params, grads, rate)
    backends: dict = {}  # (device, dtype) -> the backend for contiguous ones: resolved once
    for param, grad, rate in zip(params, grads, rates):
        kind = (param.device, param.dtype)
        if param.is_contiguous() and grad.is_contiguous():
            backend = backends.get(kind)
            if backend is None:
                backend = backends[kind] = dispatch.resolve(param)
        else:
            backend = "aten"
        key = (*kind, backend, id(rate) if isinstance(rate, torch.Tensor) else rate)
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = ([], [], rate)
        bucket[0].append(param)
        bucket[1].append(grad)
    for key, (bucket_params, bucket_grads, rate) in buckets.items():  # under no_grad: SGD.step's, the op's
        if key[2] == "triton":
            dispatch.load_kernels().sgd_step_unchecked(bucket_params, bucket_grads, rate)  # checked above
            library.bump_versions(*bucket_params)
        elif isinstance(rate, torch.Tensor):
            torch._foreach_sub_(bucket_params, torch._foreach_mul(bucket_grads, rate))
        else:
            torch._foreach_add_(bucket_params, bucket_grads, alpha=-rate)


def _sgd_fake(params, grads, lr_tensors, lrs) -> None:
    """What can be checked without data: everything `check_update` checks but memory."""
    rates = _rates(params, lr_tensors, lrs)
    if len(params) != len(grads):
        raise ValueError(f"SGD.step: {len(params)} parameters but {len(grads)} gradients")
    for index, (param, grad, rate) in enumerate(zip(params, grads, rates)):
        check_lr(rate, "SGD.step", param.device, param.dtype)
        check_writable("SGD.step", f"params[{index}]", param)


library.define("sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor?[] lr_tensors, float[] lrs) -> ()", sgd_kernel,
               _sgd_fake, mutating=True)
