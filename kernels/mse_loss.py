"""Squared-error loss and its gradient in one pass over the data.

    loss = scale_loss * sum((input - target)**2)      scale_loss = 1 ("sum") or 1/n ("mean")
    grad = scale_grad * (input - target)               scale_grad = 2 or 2/n

Design trade-off: forward writes the gradient (the size of the input) while it reads the data
for the loss, so backward is one multiplication by the upstream gradient instead of a second
pass over input and target. Small inputs (the tutorial's 64 x 10) take one program and one
launch; large ones write a partial sum per program and a second one-program launch adds them in
index order. No atomics: the loss is bitwise reproducible. The ATen reference (CPU fallback and
test oracle) is `torch.nn.functional.mse_loss`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import Launcher
from .precision import accumulator_dtype
from .reduce import accumulator, sum_partials
from .tuning import cdiv

SINGLE_PROGRAM_MAX = 1 << 16  # up to this many elements, one program does everything
BLOCK = 1024
CHUNK = 16 * BLOCK  # elements per program on the multi-program path


@triton.jit(do_not_specialize=["grad_divisor", "loss_divisor"])
def _squared_error_kernel(
    # pointers
    input_ptr, target_ptr, grad_ptr, out_ptr,  # out: the loss (one program) or per-program partials
    # sizes
    n, chunk,
    # divisors, integers divided in ACC_DTYPE here (a float argument would be an fp32 scalar)
    grad_divisor,  # grad = 2 (input - target) / grad_divisor: n for "mean", 1 for "sum"
    loss_divisor,  # out = sum of squares / loss_divisor: 1 for partials
    # meta-parameters
    BLOCK: tl.constexpr,
    ACC_DTYPE: tl.constexpr,  # `reduce.accumulator` of the inputs' dtype
):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * chunk
    scale_grad = 2.0 / grad_divisor.to(ACC_DTYPE)
    acc = tl.zeros((BLOCK,), dtype=ACC_DTYPE)
    for offset in range(0, chunk, BLOCK):
        offs = start + offset + tl.arange(0, BLOCK)
        inside = offs < n
        diff = (tl.load(input_ptr + offs, mask=inside, other=0.0).to(ACC_DTYPE)
                - tl.load(target_ptr + offs, mask=inside, other=0.0).to(ACC_DTYPE))
        acc += diff * diff
        tl.store(grad_ptr + offs, (scale_grad * diff).to(grad_ptr.dtype.element_ty), mask=inside)
    tl.store(out_ptr + pid, (tl.sum(acc, axis=0) / loss_divisor.to(ACC_DTYPE)).to(out_ptr.dtype.element_ty))


_LAUNCHER = Launcher(_squared_error_kernel, lambda dtype: dict(BLOCK=BLOCK, ACC_DTYPE=accumulator(dtype)),
                     layout=(4, 4))  # 4 pointers, 4 integers


def mse_loss_and_grad(input: torch.Tensor, target: torch.Tensor, mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, grad): loss a 0-d tensor of input's dtype, grad shaped like input (contiguous)."""
    # check
    if input.shape != target.shape or input.dtype != target.dtype or input.device != target.device:
        raise ValueError(f"mse_loss: input {tuple(input.shape)} {input.dtype} on {input.device} does not "
                         f"match target {tuple(target.shape)} {target.dtype} on {target.device}")
    # allocate
    # The kernel reads unit-stride rows. Not reshape(-1): it returns a strided view where one
    # exists (a single sliced row, an expanded one), which the kernel would misread.
    flat_input, flat_target = input.contiguous().view(-1), target.contiguous().view(-1)  # copies only if strided
    n = flat_input.numel()
    grad = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    loss = torch.empty((), dtype=input.dtype, device=input.device)
    divisor = n if mean and n else 1
    # launch
    if n <= SINGLE_PROGRAM_MAX:
        _LAUNCHER((1,), (flat_input, flat_target, grad, loss, n, max(n, 1), divisor, divisor), (input.dtype,))
        if mean and n == 0:
            loss.fill_(float("nan"))  # torch: the mean of nothing is NaN
        return loss, grad
    programs = cdiv(n, CHUNK)
    partials = torch.empty(programs, dtype=accumulator_dtype(input.dtype), device=input.device)
    _LAUNCHER((programs,), (flat_input, flat_target, grad, partials, n, CHUNK, divisor, 1), (input.dtype,))
    sum_partials(partials, loss, divisor)
    return loss, grad
