"""Plain SGD, `p -= lr * p.grad`, for a list of parameters in one launch.

Design trade-off: a multi-tensor launch needs the parameters' addresses on the device. They go
in a pointer table (parameter, gradient, block start per work item) that is built once and
reused while the addresses stay the same, which they do step after step under PyTorch's caching
allocator (a few tables are kept for gradients that cycle through addresses); when an address
changes, the new table is copied from pinned memory asynchronously.
Either way no step waits for the GPU. Each program updates BLOCK elements of one parameter.
The ATen reference (CPU fallback and test oracle) is `torch._foreach_add_(params, grads,
alpha=-lr)`, what `torch.optim.SGD` runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _sgd_kernel(
    # pointers
    params_table, grads_table,  # int64 addresses, one per parameter
    work_tensor, work_start,    # per program: which parameter, first element
    numel_table,
    lr_ptr,
    like_ptr,                   # any parameter: gives the element type of the table's pointers
    # scalars
    lr,
    # meta-parameters
    LR_FROM_PTR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    tensor = tl.load(work_tensor + pid)
    offs = tl.load(work_start + pid) + tl.arange(0, BLOCK)
    inside = offs < tl.load(numel_table + tensor)
    param_ptr = tl.load(params_table + tensor).to(like_ptr.dtype)
    grad_ptr = tl.load(grads_table + tensor).to(like_ptr.dtype)
    if LR_FROM_PTR:
        step = tl.load(lr_ptr).to(tl.float32)
    else:
        step = lr
    param = tl.load(param_ptr + offs, mask=inside)
    grad = tl.load(grad_ptr + offs, mask=inside).to(tl.float32)
    tl.store(param_ptr + offs, (param.to(tl.float32) - step * grad).to(param.dtype), mask=inside)


class SGDLauncher:
    """Holds the device tables for one group of same-device, same-dtype parameters."""

    CACHED_TABLES = 4  # gradients may cycle through a few addresses (set_to_none, allocator reuse)

    def __init__(self):
        self._tables: dict[tuple, list[torch.Tensor]] = {}

    def _tables_for(self, params: list[torch.Tensor], grads: list[torch.Tensor]):
        key = tuple((p.data_ptr(), g.data_ptr(), p.numel()) for p, g in zip(params, grads))
        tables = self._tables.pop(key, None)
        if tables is None:
            numels = [p.numel() for p in params]
            work = [(i, start) for i, numel in enumerate(numels) for start in range(0, numel, BLOCK)]
            host = [[p.data_ptr() for p in params], [g.data_ptr() for g in grads],
                    [i for i, _ in work], [start for _, start in work], numels]
            device = params[0].device
            pin = device.type == "cuda"
            tables = [torch.tensor(column, dtype=torch.int64, pin_memory=pin).to(device, non_blocking=True)
                      for column in host]
            while len(self._tables) >= self.CACHED_TABLES:
                self._tables.pop(next(iter(self._tables)))  # the least recently used
        self._tables[key] = tables  # (re)inserted last: most recently used
        return tables

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: float | torch.Tensor) -> None:
        """params[i] -= lr * grads[i]: contiguous tensors of one dtype and device; one launch."""
        # check
        for param, grad in zip(params, grads):
            if not (param.is_contiguous() and grad.is_contiguous()) or param.shape != grad.shape \
                    or param.dtype != grad.dtype or param.dtype != params[0].dtype:
                raise ValueError(f"sgd: parameter {tuple(param.shape)} {param.dtype} and gradient "
                                 f"{tuple(grad.shape)} {grad.dtype} must be contiguous and alike")
        # allocate (tables, cached across steps)
        params_table, grads_table, work_tensor, work_start, numel_table = self._tables_for(params, grads)
        if work_tensor.numel() == 0:
            return
        # launch
        lr_from_ptr = isinstance(lr, torch.Tensor)
        _sgd_kernel[(work_tensor.numel(),)](
            params_table, grads_table, work_tensor, work_start, numel_table,
            lr if lr_from_ptr else params[0], params[0],
            0.0 if lr_from_ptr else float(lr),
            LR_FROM_PTR=lr_from_ptr, BLOCK=BLOCK,
        )
