"""SGD as `torch.optim.SGD` defines it (momentum, dampening, weight decay, Nesterov, maximize),
for a list of parameters in one launch per MAX_TENSORS.

    g = -grad if maximize else grad;    g += weight_decay * p          (when weight_decay != 0)
    b = g on the first step, else momentum * b + (1 - dampening) * g   (when momentum != 0)
    p -= lr * (g + momentum * b if nesterov else b)                    (p -= lr * g without momentum)

Each element is computed in the accumulator type (fp32; fp64 for fp64) from one read of p, grad
and b, and rounded to the parameter's dtype once for b (which the step then uses, as torch's
step does) and once for p. `sgd_update` is that math for one block of elements.

Design trade-off: the parameters', gradients' and buffers' addresses reach the kernel as launch
arguments (tuples of pointers, Triton >= 3.2), not through a pointer table in device memory. A
table has to be copied to the GPU whenever an address changes, and gradients do change address
from step to step: autograd allocates them anew after `zero_grad`, and the caching allocator
hands back different blocks. (The table version copied its five tables host to device on every
step of the tutorial's autograd loop on an H200: `bench/results/2026-11-26-h200-fused-step/
launch_count.json`.) The price: a compiled variant per number of tensors in a launch, and
ceil(n / MAX_TENSORS) launches for n parameters. Nothing is copied and no step waits for the
GPU. Each program updates BLOCK elements of one parameter: tensor i owns programs
[block_starts[i], block_starts[i + 1]).
Scalars travel as fp32 kernel arguments, which would round a float64 update's, so for float64
parameters each scalar in use is a 0-d float64 tensor filled on the device (no host-to-device
copy, which a CUDA-graph capture would refuse): a few fills more per float64 step.
The ATen reference (CPU fallback and test oracle) is `fusedgrad.sgd.sgd_reference`, torch's
own foreach ops in torch.optim.SGD's order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import PLAIN_SGD, UpdateRule
from .launch import Launcher
from .reduce import accumulator
from .tuning import cdiv

BLOCK = 4096
MAX_TENSORS = 16  # per launch: 16 each of parameters, gradients and buffers stay well inside the argument space


@triton.jit
def scalar(ptr, value, ACC_DTYPE: tl.constexpr):
    """A scalar of an update in ACC_DTYPE: read from the 0-d tensor at `ptr` (exact for float64,
    and a rate a captured CUDA graph sees change between replays), or the fp32 kernel scalar
    `value` when ptr is None."""
    if ptr is not None:
        result = tl.load(ptr).to(ACC_DTYPE)
    else:
        result = value
    return result


@triton.jit
def learning_rate(lr_ptr, lr, ACC_DTYPE: tl.constexpr):
    """The rate of an update: `scalar` of the rate tensor or number."""
    return scalar(lr_ptr, lr, ACC_DTYPE)


@triton.jit
def sgd_update(param, grad, buffer, lr, momentum, keep, weight_decay, ACC_DTYPE: tl.constexpr,
               MOMENTUM: tl.constexpr, FRESH: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
               NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr):
    """(new parameter, new momentum buffer), both in the parameter's dtype, for a block of
    `param` (its dtype), `grad` (any) and `buffer` (the parameter's dtype; ignored without
    MOMENTUM or when FRESH, the buffer's first step). keep = 1 - dampening. Without MOMENTUM
    the buffer returned is `buffer` unchanged."""
    p = param.to(ACC_DTYPE)
    direction = grad.to(ACC_DTYPE)
    if MAXIMIZE:
        direction = -direction
    if WEIGHT_DECAY:  # a flag, not weight_decay * p with 0: that would turn an infinite p into NaN
        direction = direction + weight_decay * p
    new_buffer = buffer
    if MOMENTUM:
        if FRESH:
            new_buffer = direction.to(param.dtype)
        else:
            new_buffer = (momentum * buffer.to(ACC_DTYPE) + keep * direction).to(param.dtype)
        if NESTEROV:
            direction = direction + momentum * new_buffer.to(ACC_DTYPE)
        else:
            direction = new_buffer.to(ACC_DTYPE)
    return (p - lr * direction).to(param.dtype), new_buffer


@triton.jit
def _sgd_kernel(
    # pointers (tuples: one per tensor). Not named `params`: Triton 3.9's generated argument
    # binder has a local of that name, which an argument `params` would overwrite.
    param_ptrs, grad_ptrs,
    buffer_ptrs,   # momentum buffers, like the parameters; None without momentum
    lr_ptr, momentum_ptr, keep_ptr, decay_ptr,  # 0-d tensors of the scalars below; None: the scalar
    # sizes (tuples)
    block_starts,  # len(params) + 1 program indices
    numels,
    # scalars
    lr, momentum,
    keep,          # 1 - dampening
    weight_decay,
    # meta-parameters
    BLOCK: tl.constexpr,
    ACC_DTYPE: tl.constexpr,  # `reduce.accumulator` of the parameters' dtype
    FRESH: tl.constexpr,      # the buffers' first step: written, not read
    WEIGHT_DECAY: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
):
    pid = tl.program_id(0)
    rate = learning_rate(lr_ptr, lr, ACC_DTYPE)
    mu = scalar(momentum_ptr, momentum, ACC_DTYPE)
    kept = scalar(keep_ptr, keep, ACC_DTYPE)
    decay = scalar(decay_ptr, weight_decay, ACC_DTYPE)
    for i in tl.static_range(len(param_ptrs)):  # unrolled: the branch of this program's tensor runs
        if (pid >= block_starts[i]) & (pid < block_starts[i + 1]):
            offs = (pid - block_starts[i]).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            inside = offs < numels[i]
            param = tl.load(param_ptrs[i] + offs, mask=inside)
            grad = tl.load(grad_ptrs[i] + offs, mask=inside)
            buffer = param
            if buffer_ptrs is not None and not FRESH:
                buffer = tl.load(buffer_ptrs[i] + offs, mask=inside)
            new_param, new_buffer = sgd_update(param, grad, buffer, rate, mu, kept, decay, ACC_DTYPE,
                                               buffer_ptrs is not None, FRESH, WEIGHT_DECAY, NESTEROV, MAXIMIZE)
            tl.store(param_ptrs[i] + offs, new_param, mask=inside)
            if buffer_ptrs is not None:
                tl.store(buffer_ptrs[i] + offs, new_buffer, mask=inside)


def _meta(dtype: torch.dtype, fresh: bool, weight_decay: bool, nesterov: bool, maximize: bool) -> dict:
    return dict(BLOCK=BLOCK, ACC_DTYPE=accumulator(dtype), FRESH=fresh, WEIGHT_DECAY=weight_decay,
                NESTEROV=nesterov, MAXIMIZE=maximize)


# 7 pointer arguments (three tuples or None, four 0-d tensors or None), 2 tuples of integers, 4 floats
_LAUNCHER = Launcher(_sgd_kernel, _meta, layout=(7, 2))


_NO_SCALAR_TENSORS = (None, None, None, None)


def rate_argument(lr: float | torch.Tensor, dtype: torch.dtype, device: torch.device) -> float | torch.Tensor:
    """A scalar as a launch passes it: a float travels as an fp32 kernel scalar, which would
    round a float64 update's, so for float64 parameters it becomes a 0-d float64 tensor (filled
    on the device: no host-to-device copy, which a CUDA-graph capture would refuse)."""
    if dtype == torch.float64 and not isinstance(lr, torch.Tensor):
        return torch.full((), lr, dtype=torch.float64, device=device)
    return lr


def scalar_arguments(lr: float | torch.Tensor, rule: UpdateRule, momentum: bool, fresh: bool, dtype: torch.dtype,
                     device: torch.device) -> tuple[tuple, tuple]:
    """(lr_ptr, momentum_ptr, keep_ptr, decay_ptr), (lr, momentum, keep, weight_decay): an
    update's scalars as a kernel takes them, each from a 0-d tensor (a tensor rate; float64
    parameters, `rate_argument`) or as an fp32 scalar, the tensor's slot then None and the
    scalar 0. keep = 1 - dampening; momentum and keep are 0 where they are not read."""
    floats = (lr, float(rule.momentum) if momentum else 0.0,
              1.0 - rule.dampening if momentum and not fresh else 0.0, float(rule.weight_decay))
    if dtype == torch.float64 or isinstance(lr, torch.Tensor):
        if dtype == torch.float64:
            floats = tuple(value if index and value == 0.0 else rate_argument(value, dtype, device)
                           for index, value in enumerate(floats))
        pointers = tuple(value if isinstance(value, torch.Tensor) else None for value in floats)
        return pointers, tuple(0.0 if isinstance(value, torch.Tensor) else float(value) for value in floats)
    return _NO_SCALAR_TENSORS, (float(lr), *floats[1:])


def sgd_step(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float | torch.Tensor,
             rule: UpdateRule = PLAIN_SGD, buffers: list[torch.Tensor] | None = None, fresh: bool = False) -> None:
    """One step of `rule` at rate `lr`: updates params (and with momentum the buffers) in place.
    Contiguous tensors of one dtype and device; `lr` a float or a 0-d tensor on that device
    (read on the GPU: no sync, and capturable in a CUDA graph). `buffers`, one per parameter,
    is required with momentum and refused without; `fresh`: their first step (written, not read)."""
    # check
    if (buffers is not None) != (rule.momentum != 0):
        raise ValueError(f"sgd: momentum buffers are needed with momentum and only then; momentum is "
                         f"{rule.momentum}, buffers {'given' if buffers is not None else 'not given'}")
    for index, (param, grad) in enumerate(zip(params, grads, strict=True)):
        for name, t in (("gradient", grad), ("momentum buffer", None if buffers is None else buffers[index])):
            if t is not None and not (param.is_contiguous() and t.is_contiguous() and t.shape == param.shape
                                      and t.dtype == param.dtype == params[0].dtype):
                raise ValueError(f"sgd: parameter {tuple(param.shape)} {param.dtype} and {name} "
                                 f"{tuple(t.shape)} {t.dtype} must be contiguous and alike")
    if buffers is not None and len(buffers) != len(params):
        raise ValueError(f"sgd: {len(params)} parameters but {len(buffers)} momentum buffers")
    sgd_step_unchecked(params, grads, lr, rule, buffers, fresh)


def sgd_step_unchecked(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float | torch.Tensor,
                       rule: UpdateRule = PLAIN_SGD, buffers: list[torch.Tensor] | None = None,
                       fresh: bool = False) -> None:
    """`sgd_step` for a caller that has checked its arguments as `sgd_step` does (fusedgrad's
    optimizer, which checks more)."""
    if not params:
        return
    # allocate (nothing, but exact float64 scalars)
    dtype = params[0].dtype
    pointers, floats = scalar_arguments(lr, rule, buffers is not None, fresh, dtype, params[0].device)
    variant = (dtype, fresh, rule.weight_decay != 0, rule.nesterov, rule.maximize)
    # launch
    for first in range(0, len(params), MAX_TENSORS):
        chunk = tuple(params[first:first + MAX_TENSORS])
        numels = tuple([param.numel() for param in chunk])
        block_starts = [0]
        for numel in numels:
            block_starts.append(block_starts[-1] + cdiv(numel, BLOCK))
        if block_starts[-1] == 0:
            continue
        _LAUNCHER((block_starts[-1],), (
            chunk, tuple(grads[first:first + MAX_TENSORS]),
            None if buffers is None else tuple(buffers[first:first + MAX_TENSORS]),
            *pointers,
            tuple(block_starts), numels,
            *floats,
        ), variant)
