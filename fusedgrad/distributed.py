"""The fused steps data-parallel over a `torch.distributed` process group.

    each rank: its shard of the batch -> gradients (no update), written into one flat buffer
    all ranks: sum the buffer, bucket by bucket, as backward finishes each bucket's layers
    each rank: the same update from the same summed gradients -> the replicas stay equal

A fused step applies each update inside its weight-gradient GEMM, so under
`DistributedDataParallel` every rank would step on its own gradient and the replicas would
drift apart. With a process group the step is instead `kernels.mlp_gradients` (or its ATen
twin) writing every gradient into a view of one flat buffer, laid out in the order backward
finishes them (last layer first) and cut at layer boundaries into buckets of about
`BUCKET_BYTES` (the first of about `FIRST_BUCKET_BYTES`); each bucket's `all_reduce` starts
(asynchronously) as soon as its last layer's gradient launch is issued, so it overlaps the
GEMMs of the layers below. A mean loss is
divided by the world size times the shard's terms inside the kernels, so the sum across
ranks is the whole batch's mean (for equal shards, which is what DDP's averaging assumes too);
a summed loss's gradients are simply summed. The loss takes one more `all_reduce` of its own.
Once every bucket is summed, each rate and rule's parameters take their update in one
`kernels.sgd` launch (`sgd_reference` on ATen), with the optimizer's momentum buffers, so the
result equals the one-process step on the concatenated batch up to the order of fp32 sums.

Nothing here reads back to the host; with NCCL the collectives run on their own stream and
the step can be captured in a CUDA graph. Design trade-off: the flat buffer costs one
gradient-sized allocation per step and a separate update launch, where the one-process step
has neither; that is the price of summing before updating.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import kernels
from .kernels.config import Update, update_groups
from .sgd import sgd_reference

# A bucket's size before it closes at a layer boundary, as DDP's defaults: the first bucket
# small, so that the first collective starts while most of backward is still to run.
BUCKET_BYTES = 25 * 2**20
FIRST_BUCKET_BYTES = 2**20


def check_process_group(process_group, where: str):
    """`process_group` (None: no collective) after checking torch.distributed is ready for it."""
    if process_group is None:
        return None
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{where}: process_group given but torch.distributed is not initialized "
                           f"(call torch.distributed.init_process_group first, or run under torchrun)")
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(f"{where}: process_group must be a torch.distributed.ProcessGroup (for example "
                        f"torch.distributed.group.WORLD), got {type(process_group).__name__}")
    return process_group


def check_capturable(process_group, where: str):
    """`check_process_group`, and for a group an NCCL one: what a CUDA graph can capture."""
    process_group = check_process_group(process_group, where)
    if process_group is not None:
        if dist.get_backend(process_group) != "nccl":
            raise ValueError(f"{where}: a CUDA graph captures NCCL collectives only, got a "
                             f"{dist.get_backend(process_group)} process group")
    return process_group


def storage_order(t: torch.Tensor) -> torch.Tensor:
    """`t` as a contiguous tensor over the same memory: t, or for a transposed 2-D view t.T."""
    return t if t.is_contiguous() else t.T


def check_dense(where: str, params: list[torch.Tensor], updates: list[Update], names: list[str]) -> None:
    """Refuse parameters that are neither contiguous nor transposed contiguous, and momentum
    buffers strided otherwise than their parameter: gradients are views of the flat buffer laid
    out as the parameters are, and the update runs on that layout."""
    for param, update, name in zip(params, updates, names):
        if not (param.is_contiguous() or param.dim() == 2 and param.T.is_contiguous()):
            raise ValueError(f"{where}: with a process_group, {name} {tuple(param.shape)} must be contiguous "
                             f"(or its transpose), got strides {param.stride()}")
        if update.buffer is not None and update.buffer.stride() != param.stride():
            raise ValueError(f"{where}: with a process_group, the momentum buffer of {name} {tuple(param.shape)} "
                             f"must have its strides {param.stride()}, got {update.buffer.stride()}")


class GradientBuckets:
    """One flat gradient buffer for an MLP's weights and biases, and its bucketed all_reduce.
    Buckets close at the first layer boundary past `first_bucket_bytes`, then `bucket_bytes`.

    `weight_grads[i]` and `bias_grads[i]` are views of the buffer shaped and strided like layer
    i's weight and bias; layer L's come first. `layer_done(i)` starts the all_reduce of the
    bucket layer i closes, if any; `wait()` makes the current stream (or thread) wait for all."""

    def __init__(self, weights: list[torch.Tensor], biases: list, process_group, bucket_bytes: int | None = None,
                 first_bucket_bytes: int | None = None):
        bucket_bytes = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        cap = min(bucket_bytes, FIRST_BUCKET_BYTES if first_bucket_bytes is None else first_bucket_bytes)
        self.group = process_group
        total = sum(t.numel() for t in weights + biases if t is not None)
        self.flat = torch.empty(total, dtype=weights[0].dtype, device=weights[0].device)
        self.weight_grads: list = [None] * len(weights)
        self.bias_grads: list = [None] * len(biases)
        self.closing: dict[int, tuple[int, int]] = {}  # layer -> (start, end) of the bucket it closes
        offset = bucket_start = 0
        for index in reversed(range(len(weights))):
            for grads, param in ((self.weight_grads, weights[index]), (self.bias_grads, biases[index])):
                if param is not None:
                    grads[index] = self._view(offset, param)
                    offset += param.numel()
            if (offset - bucket_start) * self.flat.element_size() >= cap or index == 0:
                self.closing[index] = (bucket_start, offset)
                bucket_start, cap = offset, bucket_bytes
        self.works: list = []

    def _view(self, offset: int, param: torch.Tensor) -> torch.Tensor:
        storage = storage_order(param)
        view = self.flat[offset:offset + param.numel()].view(storage.shape)
        return view if storage is param else view.T

    def layer_done(self, index: int) -> None:
        if index in self.closing:
            start, end = self.closing[index]
            self.works.append(dist.all_reduce(self.flat[start:end], group=self.group, async_op=True))

    def wait(self) -> None:
        for work in self.works:
            work.wait()
        self.works.clear()


def data_parallel_step(x, target, weights, biases, weight_updates: list[Update], bias_updates: list, loss_kind: str,
                       reduction: str, loss_dtype: torch.dtype, process_group, triton: bool,
                       fp32_precision: str = "ieee", tuner=None) -> torch.Tensor:
    """One data-parallel SGD step of the MLP `weights`/`biases` (arguments as
    `kernels.mlp_sgd_step` takes them, checked by the caller) over `process_group`, on the
    Triton kernels (`triton`) or ATen. Returns the whole batch's loss on every rank."""
    ranks = dist.get_world_size(process_group)
    buckets = GradientBuckets(weights, biases, process_group)
    arguments = (x, target, weights, biases, buckets.weight_grads, buckets.bias_grads, loss_kind, reduction,
                 loss_dtype, ranks, buckets.layer_done)
    if triton:
        loss = kernels.mlp_gradients(*arguments, fp32_precision, tuner)
    else:
        from .mlp_step import mlp_gradients_reference  # here: mlp_step imports this module
        loss = mlp_gradients_reference(*arguments)
    loss_summed = dist.all_reduce(loss.view(1), group=process_group, async_op=True)
    buckets.wait()
    _update(weights + biases, buckets.weight_grads + buckets.bias_grads, weight_updates + bias_updates, triton)
    loss_summed.wait()
    return loss


def _update(params: list, grads: list, updates: list, triton: bool) -> None:
    """Each rate and rule's parameters take their step: one launch each on Triton."""
    for update, group_params, group_grads, buffers in update_groups(params, grads, updates):
        if triton:
            kernels.sgd_step_unchecked([storage_order(p) for p in group_params],
                                       [storage_order(g) for g in group_grads], update.lr, update.rule,
                                       None if buffers is None else [storage_order(b) for b in buffers],
                                       update.fresh)
        else:
            sgd_reference(group_params, group_grads, update.lr, update.rule, buffers, update.fresh)
