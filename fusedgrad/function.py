"""What fusedgrad's autograd Functions share: a cheaper `apply`, and vmap by slices.

A Triton kernel takes plain 2-D tensors, so a Function cannot be vmapped by tracing it. Each
Function states its rule as a `vmap` staticmethod; where no cheaper rule applies, the batch is
run one slice at a time (`by_slices`): correct for every layout, one launch per slice.
"""

from __future__ import annotations

import torch
from torch._functorch.utils import unwrap_dead_wrappers


class Function(torch.autograd.Function):
    """A `torch.autograd.Function` in setup_context style (as torch.func needs) whose `apply`,
    outside torch.func transforms, skips the per-call binding of arguments to `forward`'s
    signature that torch's `apply` does for such Functions: several times the host cost of the
    rest of the call. Subclasses take every argument positionally and have no defaults."""

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        for arg in args:  # a tensor left over from an exited transform: unwrap, as torch's apply does
            if isinstance(arg, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(arg):
                args = unwrap_dead_wrappers(args)
                break
        return super(torch.autograd.Function, cls).apply(*args)


def forward_mode_active() -> bool:
    """Whether tangents may reach a Function's `jvp`: inside torch.func transforms or a
    `torch.autograd.forward_ad.dual_level`. Only then do the Functions keep what `jvp` reads,
    so a plain forward keeps no more tensors alive than backward needs."""
    return torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0


def by_slices(function, batch_size: int, in_dims, *args):
    """`function.apply` on each slice of the batched arguments (those with a batch dimension in
    `in_dims`), outputs stacked along a new leading dimension: (outputs, out_dims). An empty
    batch runs one slice of zeros to learn the output shapes, and returns none of it."""
    def slice_of(index):
        return [_slice(arg, dim, index) for arg, dim in zip(args, in_dims)]

    results = [function.apply(*slice_of(index)) for index in range(max(batch_size, 1))]
    if isinstance(results[0], tuple):
        return tuple(torch.stack(parts)[:batch_size] for parts in zip(*results)), tuple(0 for _ in results[0])
    return torch.stack(results)[:batch_size], 0


def _slice(arg, dim, index: int):
    if not (isinstance(arg, torch.Tensor) and isinstance(dim, int)):
        return arg
    if arg.shape[dim] == 0:  # an empty batch: a stand-in slice
        return arg.new_zeros(arg.shape[:dim] + arg.shape[dim + 1:]) if dim >= 0 else arg.new_zeros(
            arg.shape[:dim] + arg.shape[dim:][1:])
    return arg.select(dim, index)


def rows_of(t: torch.Tensor, dim: int | None, batch_size: int) -> torch.Tensor:
    """A (batch, rows, cols) view of `t` (batched at `dim`, or broadcast when unbatched) as
    (batch * rows, cols): batching over the rows of a matrix product is one bigger product."""
    t = t.movedim(dim, 0) if dim is not None else t.expand(batch_size, *t.shape)
    return t.reshape(batch_size * t.shape[1], t.shape[2])
