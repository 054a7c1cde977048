"""`fusedgrad.optim.SGD`: `torch.optim.SGD` (momentum, dampening, weight decay, Nesterov,
maximize) whose step is one Triton launch per kind of CUDA parameter (`fusedgrad.sgd`).

Same signature, defaults, checks, `param_groups` keys and `state_dict` layout as torch's (a
`momentum_buffer` per parameter once momentum is used), so either optimizer loads the other's
state. `lr` is a float or a 0-d tensor on the parameters' device (so a captured CUDA graph can
read a new value each replay). `foreach` and `fused` are kept in the groups, as torch keeps
them, but change nothing: the backend decides (`fusedgrad.backend`); `differentiable=True` is
refused. `zero_grad` does what torch.optim.Optimizer's does (set_to_none=True by default)
without its profiler and compiler wrappers, whose host time counts where the step is host-bound.
"""

from __future__ import annotations

import torch
import torch.optim.optimizer as torch_optimizer

from . import library
from .checks import check_lr
from .kernels.config import UpdateRule
from .sgd import check_rule, check_update, update

# A group's keys beside "params", with torch.optim.SGD's defaults (older state dicts lack some).
_GROUP_DEFAULTS = dict(momentum=0, dampening=0, weight_decay=0, nesterov=False, maximize=False, foreach=None,
                       differentiable=False, fused=None)


class SGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float | torch.Tensor = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None):
        check_lr(lr, "SGD")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused)
        check_rule(group_rule(defaults), "SGD")
        if differentiable:
            raise ValueError("SGD: differentiable=True is not supported (the update runs outside autograd); use "
                             "torch.optim.SGD(..., differentiable=True) to differentiate through a step")
        if fused and foreach:
            raise RuntimeError("SGD: `fused` and `foreach` cannot be `True` together.")
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in _GROUP_DEFAULTS.items():
                group.setdefault(key, value)

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
        # Every group's parameters with a gradient, with their rate, rule and momentum buffer.
        params, grads, rates, rules, buffers, names = [], [], [], [], [], []
        any_momentum = False
        for group_index, group in enumerate(self.param_groups):
            rate, rule = group["lr"], check_rule(group_rule(group), "SGD.step")
            with_momentum = rule.momentum != 0
            any_momentum |= with_momentum
            for index, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise ValueError("SGD: sparse gradients are not supported")
                params.append(param)
                grads.append(grad)
                rates.append(rate)
                rules.append(rule)
                names.append((group_index, index))
                state = self.state.get(param) if with_momentum else None
                buffers.append(state.get("momentum_buffer") if state else None)
        grad_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # torch.no_grad(), without its context manager's host time
        try:
            if library.eager(*params, *grads):
                checked_rates = check_update(params, grads, rates, rules, buffers, names)
                buffers, fresh = self._new_buffers(grads, rules, buffers, any_momentum)
                update(params, grads, checked_rates, rules, buffers, fresh)
            elif params:  # a graph is being built: one op for every group, checked as a whole when it runs
                buffers, fresh = self._new_buffers(grads, rules, buffers, any_momentum)
                lr_tensors, lrs = zip(*(library.lr_arguments(rate) for rate in rates))
                momentums, dampenings, weight_decays, nesterovs, maximizes = zip(*rules)
                torch.ops.fusedgrad.sgd_(params, grads, list(lr_tensors), list(lrs),
                                         [buffer for buffer in buffers if buffer is not None],
                                         [float(m) for m in momentums], [float(d) for d in dampenings],
                                         [float(w) for w in weight_decays], list(nesterovs), list(maximizes), fresh)
            if any_momentum:
                self._keep_buffers(params, buffers)
        finally:
            torch._C._set_grad_enabled(grad_enabled)
        return loss

    @staticmethod
    def _new_buffers(grads, rules, buffers, any_momentum: bool) -> tuple[list, list[bool]]:
        """`buffers` with a new (unwritten) one for each parameter with momentum that has none
        yet, laid out as its gradient (torch's first buffer is a copy of it), and which are new."""
        if not any_momentum:
            return buffers, [False] * len(buffers)
        fresh = [rule.momentum != 0 and buffer is None for rule, buffer in zip(rules, buffers)]
        buffers = [torch.empty_like(grad) if first else buffer for grad, buffer, first in zip(grads, buffers, fresh)]
        return buffers, fresh

    def _keep_buffers(self, params, buffers) -> None:
        """Keep each new momentum buffer in the parameter's state, once the update has run."""
        for param, buffer in zip(params, buffers):
            if buffer is not None:
                state = self.state[param]
                if state.get("momentum_buffer") is not buffer:
                    state["momentum_buffer"] = buffer


def group_rule(group: dict) -> UpdateRule:
    """The update rule a param group (or the defaults) names."""
    return UpdateRule(group["momentum"], group["dampening"], group["weight_decay"], group["nesterov"],
                      group["maximize"])


def _observed(optimizer: SGD) -> bool:
    """Whether a step hook or torch's profiler would see a step."""
    return bool(_GLOBAL_PRE_HOOKS or _GLOBAL_POST_HOOKS or optimizer._optimizer_step_pre_hooks
                or optimizer._optimizer_step_post_hooks or torch.autograd.profiler._is_profiler_enabled
                or torch._C._autograd._profiler_enabled() or torch.compiler.is_compiling())


_observed_step = torch.optim.Optimizer.profile_hook_step(SGD._step)
_GLOBAL_PRE_HOOKS = torch_optimizer._global_optimizer_pre_hooks
_GLOBAL_POST_HOOKS = torch_optimizer._global_optimizer_post_hooks
