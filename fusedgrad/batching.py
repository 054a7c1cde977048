"""vmap rules for fusedgrad's autograd Functions (`torch.func.vmap`).

A Triton kernel takes plain 2-D tensors, so a Function cannot be vmapped by tracing it. Each
Function states its rule as a `vmap` staticmethod; where no cheaper rule applies, the batch is
run one slice at a time (`by_slices`): correct for every layout, one launch per slice.
"""

from __future__ import annotations

import torch


def by_slices(function, batch_size: int, in_dims, *args):
    """`function.apply` on each slice of the batched arguments (those with a batch dimension in
    `in_dims`), outputs stacked along a new leading dimension: (outputs, out_dims)."""
    def slice_of(index):
        return [arg.select(dim, index) if isinstance(arg, torch.Tensor) and isinstance(dim, int) else arg
                for arg, dim in zip(args, in_dims)]

    results = [function.apply(*slice_of(index)) for index in range(batch_size)]
    if isinstance(results[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*results)), tuple(0 for _ in results[0])
    return torch.stack(results), 0


def rows_of(t: torch.Tensor, dim: int | None, batch_size: int) -> torch.Tensor:
    """A (batch, rows, cols) view of `t` (batched at `dim`, or broadcast when unbatched) as
    (batch * rows, cols): batching over the rows of a matrix product is one bigger product."""
    t = t.movedim(dim, 0) if dim is not None else t.expand(batch_size, *t.shape)
    return t.reshape(batch_size * t.shape[1], t.shape[2])
