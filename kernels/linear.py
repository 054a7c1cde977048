"""Launchers of `nn.Linear`'s products, with the bias and its gradient in the GEMM kernel.

    forward         out    = act(x @ weight.T + bias)       act: identity or relu
    weight, bias    grad_weight = grad_pre.T @ x            grad_pre = grad_out * act'(out)
                    grad_bias   = sum over rows of grad_pre

x is (M, in_features), weight (out_features, in_features) as nn.Linear keeps it, bias
(out_features,). Forward is one launch: weight.T is a strided view, the bias is added to the
fp32 accumulator in the epilogue before the ReLU, so the pre-activation is never stored.

Design trade-off: the weight gradient is launched transposed, grad_out.T gated by relu'(out.T)
as the A operand (a gated A stays in registers for the dot, `gemm.matmul_unchecked` says why),
so each A tile the dot reads is a block of grad_pre.T: its row sums, added up over the K loop
(the batch), are the bias gradient. The programs of the first column-block keep them: one
(out_features,) store instead of a reduction kernel that would read grad_out again. The
price is that this launch cannot split K (a slice would hold part of a sum), which the tuner
respects. grad_x = grad_pre @ weight is `gemm.matmul_unchecked` with the mask on A.

The ATen reference (CPU fallback and test oracle) is `fusedgrad.linear.linear_reference`.
"""

from __future__ import annotations

import torch

from . import tuning
from .gemm import MASK_A, NO_MASK, launch


def linear_unchecked(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool,
                     fp32_precision: str, tuner: tuning.Tuner | None) -> torch.Tensor:
    """act(x @ weight.T + bias) as a new contiguous (M, out_features) tensor, for a caller that
    has checked shapes, dtypes and devices (`fusedgrad.linear`)."""
    out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    launch(x, weight.T, out, epilogue="relu" if relu else "none", bias=bias, fp32_precision=fp32_precision,
           tuner=tuner)
    return out


def weight_and_bias_grad_unchecked(grad_out: torch.Tensor, x: torch.Tensor, relu_out: torch.Tensor | None,
                                   fp32_precision: str, tuner: tuning.Tuner | None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_pre.T @ x, grad_pre summed over rows) in one launch, grad_pre = grad_out gated by
    relu'(relu_out) (relu_out None: no gate); both new and contiguous, in grad_out's dtype."""
    grad_weight = torch.empty((grad_out.shape[1], x.shape[1]), dtype=grad_out.dtype, device=grad_out.device)
    grad_bias = torch.empty(grad_out.shape[1], dtype=grad_out.dtype, device=grad_out.device)
    launch(grad_out.T, x, grad_weight, mask_operand=NO_MASK if relu_out is None else MASK_A,
           gate=None if relu_out is None else relu_out.T, row_sums=grad_bias, fp32_precision=fp32_precision,
           tuner=tuner)
    return grad_weight, grad_bias
