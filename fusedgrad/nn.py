"""Modules on fusedgrad's ops: `Linear` (nn.Linear with a fused activation), `MLP`, and
`TwoLayerNet`, the tutorial's network in its own layout."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .linear import ACTIVATIONS, linear
from .matmul import mm, mm_relu
from .mlp_step import MLPGraphStep, mlp_train_step
from .step import CUDAGraphStep, train_step


class Linear(nn.Linear):
    """`torch.nn.Linear` (the same parameters, names, initialisation and state_dict) whose
    forward is `fusedgrad.linear`: the bias add and the `activation` (None or "relu") in the
    GEMM's epilogue, the bias gradient inside the weight-gradient GEMM."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None,
                 device=None, dtype=None):
        if activation not in ACTIVATIONS or not (activation is None or type(activation) is str):
            raise ValueError(f"Linear: activation must be None or 'relu', got {activation!r}")
        super().__init__(in_features, out_features, bias, device, dtype)
        self.activation = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", activation={self.activation!r}" if self.activation else "")


class MLP(nn.Sequential):
    """`Linear` layers of `sizes` [in, hidden..., out], each hidden one with its ReLU fused in
    (activation "relu") and a plain `Linear` last: as `nn.Sequential(nn.Linear, nn.ReLU, ...,
    nn.Linear)` computes, with layer i's parameters at `i.weight`, `i.bias`.
    `MLP([1000, 100, 10], bias=False)` is the tutorial's network in nn.Linear's layout."""

    def __init__(self, sizes, bias: bool = True, device=None, dtype=None):
        sizes = list(sizes) if not isinstance(sizes, (str, bytes)) and hasattr(sizes, "__iter__") else sizes
        if not isinstance(sizes, list) or len(sizes) < 2:
            raise ValueError(f"MLP: sizes must list at least two layer sizes (in, out), got {sizes!r}")
        for index, size in enumerate(sizes):
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
                raise ValueError(f"MLP: sizes[{index}] must be an int >= 0, got {size!r}")
        if type(bias) is not bool:
            raise TypeError(f"MLP: bias must be a bool, got {type(bias).__name__}")
        last = len(sizes) - 2
        super().__init__(*(Linear(int(sizes[i]), int(sizes[i + 1]), bias, None if i == last else "relu",
                                  device=device, dtype=dtype) for i in range(last + 1)))
        self.sizes = tuple(int(size) for size in sizes)

    def train_step(self, x: torch.Tensor, target: torch.Tensor, optimizer, loss: str = "mse",
                   reduction: str = "mean", process_group=None) -> torch.Tensor:
        """One training step without the autograd tape: forward, `loss` ("mse": F.mse_loss with
        `reduction` "mean" or "sum") and its gradient, backward, and `optimizer`'s update of
        every parameter (a `torch.optim.SGD` or `fusedgrad.optim.SGD` holding them all, with
        its groups' settings and momentum buffers). Returns the loss before the update, a 0-d
        tensor (float32 for 16-bit models, as the tutorial step's: a 16-bit sum of squares
        would overflow; float64 for float64 models or targets), without a host sync. On CUDA: 3L - 1 GEMM launches for L layers and
        one for the biases, each update in its weight-gradient GEMM's epilogue.
        With a `process_group` (torch.distributed), x and target are this rank's shard: the
        gradients are summed across the group (bucketed, overlapping backward) before one
        update, so every rank takes the step of the whole batch and returns its loss
        (`fusedgrad.distributed`; a mean needs equal shards, as DDP's averaging does)."""
        return mlp_train_step(self, x, target, optimizer, loss, reduction, process_group)

    def cuda_graph_step(self, x: torch.Tensor, target: torch.Tensor, optimizer, loss: str = "mse",
                        reduction: str = "mean", process_group=None) -> MLPGraphStep:
        """Capture `train_step` in a CUDA graph (CUDA tensors, Triton backend; an NCCL
        `process_group`'s collectives too): `.replay()` then runs one step per graph launch;
        new data goes into `.x` and `.target`."""
        return MLPGraphStep(self, x, target, optimizer, loss, reduction, process_group)

    def __getitem__(self, index):
        """A layer, or for a slice an `nn.Sequential` of those layers (a slice of an MLP need not
        be one: nn.Sequential would build one from its layers)."""
        if isinstance(index, slice):
            return nn.Sequential(*list(self)[index])
        return super().__getitem__(index)


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

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float | torch.Tensor,
                   process_group=None) -> torch.Tensor:
        """Forward, loss sum((y_pred - y)**2), backward and SGD update without the autograd tape;
        returns the loss tensor (before the update) without a host sync. With a
        `process_group`, data-parallel as `fusedgrad.train_step`."""
        return train_step(x, y, self.w1.detach(), self.w2.detach(), lr, process_group)

    def cuda_graph_step(self, x: torch.Tensor, y: torch.Tensor, lr: float | torch.Tensor,
                        process_group=None) -> CUDAGraphStep:
        """Capture `train_step` in a CUDA graph: `.replay()` then runs one step per launch."""
        return CUDAGraphStep(x, y, self.w1.detach(), self.w2.detach(), lr, process_group)
