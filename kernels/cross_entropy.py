"""Cross-entropy over class indices with its gradient, in place on the logits, one program per row.

    loss_r = logsumexp(z_r) - z_r[t_r]          grad_r = scale * (softmax(z_r) - onehot(t_r))

Each program reads its row twice: once for the running maximum and the sum of exponentials
(rescaled whenever the maximum grows, so no exponential overflows), then to write the gradient
over the logits, which nothing else reads. Row losses go to one slot per row in the
accumulator's dtype, added up in index order by a later launch (its `reduce` tensors): no
atomics, so the loss is deterministic. A class index outside [0, C) makes its row's loss and
gradient NaN: the kernel cannot raise, and a NaN cannot go unnoticed.
The ATen reference is `fusedgrad.mlp_step.mlp_step_reference` (F.cross_entropy's math).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import Launcher
from .reduce import accumulator

MAX_BLOCK = 1024  # classes per block of a row


@triton.jit
def _cross_entropy_kernel(
    logits_ptr,    # (M, C) logits, overwritten with the gradient
    target_ptr,    # (M,) int64 class indices
    losses_ptr,    # (M,) row losses, in ACC_DTYPE
    C,
    stride_m, stride_c, stride_target,
    scale,         # the gradient's factor: 1 / M for "mean", 1 for "sum"
    BLOCK_C: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_m
    target = tl.load(target_ptr + row * stride_target)
    valid = (target >= 0) & (target < C)
    offs = tl.arange(0, BLOCK_C)
    running_max = tl.full((), float("-inf"), ACC_DTYPE)
    total = tl.zeros((), ACC_DTYPE)
    for start in range(0, C, BLOCK_C):
        cols = start + offs
        z = tl.load(base + cols.to(tl.int64) * stride_c, mask=cols < C, other=float("-inf")).to(ACC_DTYPE)
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        total = total * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
        running_max = new_max
    log_total = running_max + tl.log(total)
    target_logit = tl.load(base + tl.where(valid, target, 0) * stride_c).to(ACC_DTYPE)
    tl.store(losses_ptr + row, tl.where(valid, log_total - target_logit, float("nan")))
    for start in range(0, C, BLOCK_C):
        cols = start + offs
        inside = cols < C
        pointers = base + cols.to(tl.int64) * stride_c
        z = tl.load(pointers, mask=inside, other=0.0).to(ACC_DTYPE)
        grad = tl.exp(z - log_total) - tl.where(cols == target, 1.0, 0.0)
        grad = tl.where(valid, grad * scale, float("nan"))
        tl.store(pointers, grad.to(logits_ptr.dtype.element_ty), mask=inside)


def _meta(block_c: int, dtype: torch.dtype) -> dict:
    return dict(BLOCK_C=block_c, ACC_DTYPE=accumulator(dtype))


_LAUNCHER = Launcher(_cross_entropy_kernel, _meta, layout=(3, 4))  # 3 pointers, C and 3 strides, 1 float


def cross_entropy_and_grad_(logits: torch.Tensor, target: torch.Tensor, losses: torch.Tensor, scale: float) -> None:
    """Write each row's loss into `losses` (M,) and overwrite `logits` (M, C) with the
    gradient scale * (softmax - onehot(target)); target (M,) int64. Checked by the caller."""
    rows, classes = logits.shape
    if rows == 0:
        return
    block_c = min(MAX_BLOCK, triton.next_power_of_2(max(classes, 1)))
    _LAUNCHER((rows,), (logits, target, losses, classes, *logits.stride(), target.stride(0), float(scale)),
              (block_c, logits.dtype))
