"""`TwoLayerNet`: the tutorial's network as an nn.Module on fusedgrad's ops."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .matmul import mm, mm_relu
from .step import CUDAGraphStep, train_step


class TwoLayerNet(nn.Module):
    """`y_pred = relu(x @ w1) @ w2`, with w1 (d_in, hidden) and w2 (hidden, d_out) drawn from a
    standard normal, as in the tutorial."""

    def __init__(self, d_in: int, hidden: int, d_out: int, *, device=None, dtype=None,
                 generator: torch.Generator | None = None):
        for name, size in (("d_in", d_in), ("hidden", hidden), ("d_out", d_out)):
            if isinstance(size, bool) or not isinstance(size, numbers.Integral):
                raise TypeError(f"TwoLayerNet: {name} must be an int, got {type(size).__name__}")
            if size < 0:
                raise ValueError(f"TwoLayerNet: {name} must be >= 0, got {size}")
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(d_in, hidden, generator=generator).to(device, dtype))
        self.w2 = nn.Parameter(torch.randn(hidden, d_out, generator=generator).to(device, dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mm(mm_relu(x, self.w1), self.w2)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float | torch.Tensor) -> torch.Tensor:
        """Forward, loss sum((y_pred - y)**2), backward and SGD update without the autograd tape;
        returns the loss tensor (before the update) without a host sync."""
        return train_step(x, y, self.w1.detach(), self.w2.detach(), lr)

    def cuda_graph_step(self, x: torch.Tensor, y: torch.Tensor, lr: float | torch.Tensor) -> CUDAGraphStep:
        """Capture `train_step` in a CUDA graph: `.replay()` then runs one step per launch."""
        return CUDAGraphStep(x, y, self.w1.detach(), self.w2.detach(), lr)
