"""The SGD update as an op: `fusedgrad::sgd_`, its checks, and its ATen reference.

    g = -grad if maximize else grad;    g += weight_decay * p          (when weight_decay != 0)
    b = g on the first step, else momentum * b + (1 - dampening) * g   (when momentum != 0)
    p -= lr * (g + momentum * b if nesterov else b)                    (p -= lr * g without momentum)

is `torch.optim.SGD`'s step (`kernels.UpdateRule` names its settings). On CUDA it is one Triton
launch per kind of parameter (`kernels.sgd`); elsewhere (CPU, float64, the "aten" backend)
`sgd_reference`, torch's own foreach ops in torch.optim.SGD's order. The op is
`fusedgrad::sgd_(params, grads, lr_tensors, lrs, momentum_buffers, momentums, ...)`, declared as
writing the parameters and the buffers, with a rate and a rule per parameter: a step is one call
for all its groups, checked as a whole (rates, rules, gradients and buffers that do not match,
parameters that cannot be written in place or that share memory with each other, a gradient or a
buffer) before anything is written, so a refused step changes nothing, compiled or not.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import dispatch, library
from .checks import check_lr, check_writable, memory_span, same_view, share_memory
from .kernels.config import PLAIN_SGD, UpdateRule


def sgd_reference(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float | torch.Tensor,
                  rule: UpdateRule = PLAIN_SGD, buffers: list[torch.Tensor] | None = None,
                  fresh: bool = False) -> None:
    """ATen twin of `fusedgrad.kernels.sgd_step`, kept on purpose: the same arguments and math,
    in the order torch.optim.SGD's foreach step runs it, except that the gradients are never
    written (torch's foreach Nesterov step adds the buffers into them). The CPU path and the
    test oracle of the Triton launcher."""
    momentum, dampening, weight_decay, nesterov, maximize = rule
    directions = torch._foreach_neg(grads) if maximize else grads
    if weight_decay != 0:
        if maximize:  # directions are already copies
            torch._foreach_add_(directions, params, alpha=weight_decay)
        else:
            directions = torch._foreach_add(directions, params, alpha=weight_decay)
    if momentum != 0:
        if fresh:
            torch._foreach_copy_(buffers, directions)
        else:
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, directions, alpha=1 - dampening)
        directions = torch._foreach_add(directions, buffers, alpha=momentum) if nesterov else buffers
    if isinstance(lr, torch.Tensor):
        torch._foreach_sub_(params, torch._foreach_mul(directions, lr))
    else:
        torch._foreach_add_(params, directions, alpha=-lr)


def check_rule(rule: UpdateRule, where: str) -> UpdateRule:
    """`rule`, checked as torch.optim.SGD checks its settings and more: momentum and
    weight_decay finite and >= 0, dampening finite (real numbers, not bools), nesterov and
    maximize bools, and Nesterov only with momentum and no dampening. One check per distinct
    rule: every step reads every group's."""
    key = (rule, tuple(map(type, rule)))
    if key in _CHECKED_RULES:
        return rule
    for name, value in zip(("momentum", "dampening", "weight_decay"), rule):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where}: {name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or (name != "dampening" and value < 0):
            raise ValueError(f"{where}: {name} must be finite{'' if name == 'dampening' else ' and >= 0'}, "
                             f"got {value}")
        if abs(value) > _FLOAT32_MAX:
            raise ValueError(f"{where}: {name} must be finite in float32, got {value}")
    for name, value in zip(("nesterov", "maximize"), rule[3:]):
        if not isinstance(value, bool):
            raise TypeError(f"{where}: {name} must be a bool, got {type(value).__name__}")
    if rule.nesterov and (rule.momentum <= 0 or rule.dampening != 0):
        raise ValueError(f"{where}: Nesterov momentum requires a momentum and zero dampening, got momentum "
                         f"{rule.momentum} and dampening {rule.dampening}")
    if len(_CHECKED_RULES) < 1024:
        _CHECKED_RULES.add(key)
    return rule


_CHECKED_RULES: set = set()
_FLOAT32_MAX = torch.finfo(torch.float32).max


def check_update(params: list[torch.Tensor], grads: list[torch.Tensor], rates: list, rules: list[UpdateRule],
                 buffers: list[torch.Tensor | None], names: list) -> list:
    """Raise, before anything is written, unless `rules[i]` can update `params[i]` at `rates[i]`
    for all of them: each rate follows the learning-rate rule for its parameter, each gradient
    and momentum buffer (buffers[i]: None for a fresh one, or without momentum) matches its
    parameter, each parameter and buffer can be written in place (`check_writable`), and none
    shares memory with another, or with a gradient other than its own (`_check_apart`).
    `names[i]` names parameter i in errors: a string, or (group, index) in `param_groups`.
    (The rules themselves are checked where they are read: `check_rule`.)
    Returns the rates as the update reads them: numbers as floats, and a tensor rate that
    shares memory with a parameter or a buffer as a copy, since the update may change it first."""
    if not len(params) == len(grads) == len(rules) == len(buffers):
        raise ValueError(f"SGD.step: {len(params)} parameters but {len(grads)} gradients, {len(rules)} update "
                         f"rules and {len(buffers)} momentum buffers")
    checked = set()  # (rate, device, dtype) already checked: one check per group and kind of parameter
    for param, grad, rate, buffer, name in zip(params, grads, rates, buffers, names):
        key = (id(rate), param.device, param.dtype)
        if key not in checked:
            check_lr(rate, "SGD.step", param.device, param.dtype)
            checked.add(key)
        if param.is_inference() or not param.is_contiguous():  # else writable: formatting a name costs
            check_writable("SGD.step", _name(name), param)
        if grad.shape != param.shape or grad.dtype != param.dtype or grad.device != param.device:
            _refuse_unlike("gradient", grad, param, name)
        if buffer is not None:
            if buffer.shape != param.shape or buffer.dtype != param.dtype or buffer.device != param.device:
                _refuse_unlike("momentum buffer", buffer, param, name)
            if buffer.is_inference() or not buffer.is_contiguous():
                check_writable("SGD.step", f"the momentum buffer of {_name(name)}", buffer)
    _check_apart(params, grads, buffers, names)
    copies: dict = {}  # id of a tensor rate that shares memory with what is written -> its copy
    written = params + [buffer for buffer in buffers if buffer is not None]
    for rate in rates:
        if isinstance(rate, torch.Tensor) and id(rate) not in copies and any(share_memory(rate, t) for t in written):
            copies[id(rate)] = rate.clone()
    # Numbers as floats (a Fraction or a numpy scalar, as the kernels take them).
    return [copies.get(id(rate), rate) if isinstance(rate, torch.Tensor) else float(rate) for rate in rates]


def _refuse_unlike(what: str, t: torch.Tensor, param: torch.Tensor, name) -> None:
    raise ValueError(f"SGD.step: the {what} of {_name(name)} is {tuple(t.shape)} {t.dtype} on {t.device}, its "
                     f"parameter {tuple(param.shape)} {param.dtype} on {param.device}")


def _name(name) -> str:
    return name if isinstance(name, str) else f"param_groups[{name[0]}]['params'][{name[1]}]"


_PARAM, _GRAD, _BUFFER = 0, 1, 2


def _check_apart(params: list[torch.Tensor], grads: list[torch.Tensor], buffers: list, names: list) -> None:
    """Raise if a parameter or a buffer shares an element with another parameter, buffer or
    gradient (but a parameter with its own gradient in the same places): the update of one
    would change what another reads or writes (one launch updates them all at once; a loop
    would make the result depend on the order). Address ranges first, by a sweep: only tensors
    whose ranges meet are compared."""
    tensors = (params, grads, buffers)
    entries = []
    for kind, group in enumerate(tensors):
        for index, t in enumerate(group):
            if t is not None and t.numel() and not t.is_meta:
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
            t, other = tensors[kind][index], tensors[other_kind][other_index]
            if kind == other_kind == _GRAD or ({kind, other_kind} == {_PARAM, _GRAD} and index == other_index
                                              and same_view(t, other)):
                continue  # gradients may share; a parameter may be its own gradient, element by element
            if share_memory(t, other):
                what = [_described(k, i, names) for k, i in ((other_kind, other_index), (kind, index))]
                raise ValueError(f"SGD.step: {what[0]} and {what[1]} share memory; each parameter and momentum "
                                 f"buffer must have memory of its own, apart from every other gradient")
        open_entries.append(entry)
        reach = max(reach, end)


def _described(kind: int, index: int, names: list) -> str:
    return (_name(names[index]), f"the gradient of {_name(names[index])}",
            f"the momentum buffer of {_name(names[index])}")[kind]


def update(params: list[torch.Tensor], grads: list[torch.Tensor], rates: list, rules: list[UpdateRule],
           buffers: list[torch.Tensor | None], fresh: list[bool]) -> None:
    """The update on checked arguments; `buffers[i]` is parameter i's momentum buffer (None
    without momentum) and `fresh[i]` whether this is its first step. Parameters are taken by
    device, dtype, backend, rate, rule and freshness: contiguous ones of a Triton dtype in one
    Triton launch, the rest by `sgd_reference`. Every backend is chosen (which may raise)
    before any write."""
    buckets: dict = {}  # (device, dtype, backend, rate key, rule, fresh) -> (params, grads, buffers, rate)
    backends: dict = {}  # (device, dtype) -> the backend for contiguous ones: resolved once
    for param, grad, rate, rule, buffer, first in zip(params, grads, rates, rules, buffers, fresh):
        kind = (param.device, param.dtype)
        if param.is_contiguous() and grad.is_contiguous() and (buffer is None or buffer.is_contiguous()):
            backend = backends.get(kind)
            if backend is None:
                backend = backends[kind] = dispatch.resolve(param)
        else:
            backend = "aten"
        key = (*kind, backend, id(rate) if isinstance(rate, torch.Tensor) else rate, rule, first)
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = ([], [], [], rate)
        bucket[0].append(param)
        bucket[1].append(grad)
        if buffer is not None:
            bucket[2].append(buffer)
    # under no_grad: SGD.step's, the op's
    for (*_, backend, _, rule, first), (bucket_params, bucket_grads, bucket_buffers, rate) in buckets.items():
        bucket_buffers = bucket_buffers or None  # none without momentum
        if backend == "triton":
            dispatch.load_kernels().sgd_step_unchecked(bucket_params, bucket_grads, rate, rule, bucket_buffers,
                                                       first)  # checked above
            library.bump_versions(*bucket_params, *(bucket_buffers or ()))
        else:
            sgd_reference(bucket_params, bucket_grads, rate, rule, bucket_buffers, first)


def _op_arguments(params, lr_tensors, lrs, momentum_buffers, momentums, dampenings, weight_decays, nesterovs,
                  maximizes, fresh) -> tuple[list, list, list, list]:
    """The op's lists as rates, rules, buffers and freshness per parameter (an empty list: the
    default for every parameter; buffers: one per parameter whose momentum is not 0)."""
    count = len(params)
    per_parameter = {"lr_tensors": lr_tensors, "lrs": lrs, "momentums": momentums, "dampenings": dampenings,
                     "weight_decays": weight_decays, "nesterovs": nesterovs, "maximizes": maximizes, "fresh": fresh}
    for name, values in per_parameter.items():
        if len(values) != count and (name.startswith("lr") or len(values)):
            raise ValueError(f"sgd_: {count} parameters but {len(values)} {name}")
    rates = [lr if tensor is None else tensor for tensor, lr in zip(lr_tensors, lrs)]
    settings = [values or [default] * count for values, default in (
        (momentums, 0.0), (dampenings, 0.0), (weight_decays, 0.0), (nesterovs, False), (maximizes, False))]
    rules = [check_rule(UpdateRule(*values), "sgd_") for values in zip(*settings)]
    with_momentum = sum(rule.momentum != 0 for rule in rules)
    if len(momentum_buffers) != with_momentum:
        raise ValueError(f"sgd_: {with_momentum} parameters with momentum but {len(momentum_buffers)} "
                         f"momentum_buffers")
    remaining = iter(momentum_buffers)
    buffers = [next(remaining) if rule.momentum != 0 else None for rule in rules]
    return rates, rules, buffers, list(fresh) or [False] * count


def _sgd_kernel(params, grads, lr_tensors, lrs, momentum_buffers, momentums=(), dampenings=(), weight_decays=(),
                nesterovs=(), maximizes=(), fresh=()) -> None:
    """The CPU and CUDA kernel of `fusedgrad::sgd_`: the rule's update of every parameter, after
    `check_update`."""
    rates, rules, buffers, fresh = _op_arguments(params, lr_tensors, lrs, momentum_buffers, momentums, dampenings,
                                                 weight_decays, nesterovs, maximizes, fresh)
    names = [f"params[{i}]" for i in range(len(params))]
    rates = check_update(params, grads, rates, rules, buffers, names)
    update(params, grads, rates, rules, buffers, fresh)


def _sgd_fake(params, grads, lr_tensors, lrs, momentum_buffers, momentums=(), dampenings=(), weight_decays=(),
              nesterovs=(), maximizes=(), fresh=()) -> None:
    """What can be checked without data: everything `check_update` checks but memory."""
    rates, rules, buffers, _ = _op_arguments(params, lr_tensors, lrs, momentum_buffers, momentums, dampenings,
                                             weight_decays, nesterovs, maximizes, fresh)
    if len(params) != len(grads):
        raise ValueError(f"SGD.step: {len(params)} parameters but {len(grads)} gradients")
    for index, (param, rate, buffer) in enumerate(zip(params, rates, buffers)):
        check_lr(rate, "SGD.step", param.device, param.dtype)
        check_writable("SGD.step", f"params[{index}]", param)
        if buffer is not None:
            check_writable("SGD.step", f"the momentum buffer of params[{index}]", buffer)


library.define("sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor?[] lr_tensors, float[] lrs, "
               "Tensor(b!)[] momentum_buffers, float[] momentums=[], float[] dampenings=[], "
               "float[] weight_decays=[], bool[] nesterovs=[], bool[] maximizes=[], bool[] fresh=[]) -> ()",
               _sgd_kernel, _sgd_fake, mutating=True)
