"""Plain SGD, `p -= lr * p.grad`, for a list of parameters in one launch per MAX_TENSORS.

Design trade-off: the parameters' and gradients' addresses reach the kernel as launch arguments
(tuples of pointers, Triton >= 3.2), not through a pointer table in device memory. A table has
to be copied to the GPU whenever an address changes, and gradients do change address from step
to step: autograd allocates them anew after `zero_grad`, and the caching allocator hands back
different blocks. (The table version copied its five tables host to device on every step of
the tutorial's autograd loop on an H200: `bench/results/2026-11-26-h200-fused-step/
launch_count.json`.) The price: a compiled variant per number of tensors in a launch, and
ceil(n / MAX_TENSORS) launches for n parameters. Nothing is copied and no step waits for the
GPU. Each program updates BLOCK elements of one parameter: tensor i owns programs
[block_starts[i], block_starts[i + 1]).
The ATen reference (CPU fallback and test oracle) is `torch._foreach_add_(params, grads,
alpha=-lr)`, what `torch.optim.SGD` runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import Launcher
from .reduce import accumulator
from .tuning import cdiv

BLOCK = 4096
MAX_TENSORS = 16  # per launch: 16 parameters and 16 gradients stay well inside the argument space


@triton.jit
def learning_rate(lr_ptr, lr, ACC_DTYPE: tl.constexpr):
    """The rate of an update, in ACC_DTYPE: read from the 0-d tensor at lr_ptr (a value a
    captured CUDA graph sees change between replays), or the fp32 scalar `lr` when lr_ptr is None."""
    if lr_ptr is not None:
        rate = tl.load(lr_ptr).to(ACC_DTYPE)
    else:
        rate = lr
    return rate


@triton.jit
def _sgd_kernel(
    # pointers (tuples: one per tensor). Not named `params`: Triton 3.9's generated argument
    # binder has a local of that name, which an argument `params` would overwrite.
    param_ptrs, grad_ptrs,
    lr_ptr,        # the learning rate as a 0-d tensor; None: the scalar lr
    # sizes (tuples)
    block_starts,  # len(params) + 1 program indices
    numels,
    # scalars
    lr,
    # meta-parameters
    BLOCK: tl.constexpr,
    ACC_DTYPE: tl.constexpr,  # `reduce.accumulator` of the parameters' dtype
):
    pid = tl.program_id(0)
    step = learning_rate(lr_ptr, lr, ACC_DTYPE)
    for i in tl.static_range(len(param_ptrs)):  # unrolled: the branch of this program's tensor runs
        if (pid >= block_starts[i]) & (pid < block_starts[i + 1]):
            offs = (pid - block_starts[i]).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
            inside = offs < numels[i]
            param = tl.load(param_ptrs[i] + offs, mask=inside)
            grad = tl.load(grad_ptrs[i] + offs, mask=inside).to(ACC_DTYPE)
            tl.store(param_ptrs[i] + offs, (param.to(ACC_DTYPE) - step * grad).to(param.dtype), mask=inside)


# 3 pointer arguments (two tuples), 2 tuples of integers, the float rate
_LAUNCHER = Launcher(_sgd_kernel, lambda dtype: dict(BLOCK=BLOCK, ACC_DTYPE=accumulator(dtype)), layout=(3, 2))


def rate_argument(lr: float | torch.Tensor, dtype: torch.dtype, device: torch.device) -> float | torch.Tensor:
    """`lr` as a launch passes it: a float travels as an fp32 kernel scalar, which would round
    a float64 update's rate, so for float64 parameters it becomes a 0-d float64 tensor (filled
    on the device: no host-to-device copy, which a CUDA-graph capture would refuse)."""
    if dtype == torch.float64 and not isinstance(lr, torch.Tensor):
        return torch.full((), lr, dtype=torch.float64, device=device)
    return lr


def sgd_step(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float | torch.Tensor) -> None:
    """params[i] -= lr * grads[i]: contiguous tensors of one dtype and device. `lr` is a float
    or a 0-d tensor on that device (read on the GPU: no sync, and capturable in a CUDA graph)."""
    # check
    for param, grad in zip(params, grads, strict=True):
        if not (param.is_contiguous() and grad.is_contiguous()) or param.shape != grad.shape \
                or param.dtype != grad.dtype or param.dtype != params[0].dtype:
            raise ValueError(f"sgd: parameter {tuple(param.shape)} {param.dtype} and gradient "
                             f"{tuple(grad.shape)} {grad.dtype} must be contiguous and alike")
    sgd_step_unchecked(params, grads, lr)


def sgd_step_unchecked(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float | torch.Tensor) -> None:
    """`sgd_step` for a caller that has checked its arguments as `sgd_step` does (fusedgrad's
    optimizer, which checks more)."""
    # launch (nothing to allocate, but an exact float64 rate)
    dtype = params[0].dtype if params else None
    if dtype == torch.float64:
        lr = rate_argument(lr, dtype, params[0].device)
    lr_ptr = lr if isinstance(lr, torch.Tensor) else None
    rate = 0.0 if lr_ptr is not None else float(lr)
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
            lr_ptr,
            tuple(block_starts), numels,
            rate,
        ), (dtype,))
