"""A whole SGD step of an MLP (nn.Linear layers, ReLU between them) in GEMM launches, without
the autograd tape. With h_0 = x, layer i of L computing h_i = relu(h_{i-1} @ W_i.T + b_i)
(no ReLU on the last, whose output is the prediction):

    h_i     = relu(h_{i-1} @ W_i.T + b_i)            one GEMM per hidden layer, bias and ReLU epilogue
    grad_L  = scale * (h_{L-1} @ W_L.T + b_L - t)    the last layer's GEMM, squared-error epilogue:
                                                      the prediction is never stored, only its gradient
       or   = scale * (softmax(z) - onehot(t))        cross-entropy over class indices t, in the last
                                                      GEMM's epilogue where a row of logits z fits
                                                      one tile (C <= FUSED_CLASSES); else the logits,
                                                      then one `kernels.cross_entropy` launch on them
    for i = L .. 1:
      grad_{i-1} = relu'(h_{i-1}) * (grad_i @ W_i)   ReLU-mask epilogue (not for i = 1: x needs none);
                                                      reads W_i before its update
      W_i   <- SGD(W_i, grad_i.T @ h_{i-1})          SGD epilogue: torch.optim.SGD's rule, momentum
                                                      buffer read and written there, no gradient
                                                      stored; the bias gradient (the row sums of
                                                      grad_i.T) kept on the side
    b_i   <- SGD(b_i, bias gradient)                 one `kernels.sgd` launch for all biases
                                                      (per rule and rate)

That is 3L - 1 GEMM launches, plus one for the biases (and one for cross-entropy over more
than FUSED_CLASSES classes): L forward
products, L weight updates and L - 1 input gradients, each the minimum for its product (one
launch for a layer's input gradient and its update would race: the update writes W_i while
the input gradient's programs read it, and programs of one launch run in no order). The
loss, sum or mean of the squared errors or the rows' cross-entropies, is folded from per-tile partial sums by the first backward launch (fixed order,
no atomics: deterministic) and is the loss before the update. Nothing reads back to the host.

`mlp_gradients` runs the same forward and backward with each weight product writing its
gradient (and the bias's) where the caller says instead of updating: a data-parallel step
(`fusedgrad.distributed`) sums those across ranks, then updates.

Design trade-off: the biases take their step in one launch of their own rather than in the
epilogue of their weight's GEMM, whose first column-block of programs holds the bias gradient:
a bias may sit in another param group than its weight (no weight decay on biases is common),
and one extra small launch keeps the GEMM's epilogue to one rule. The ATen reference is
`fusedgrad.mlp_step.mlp_step_reference`.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import cross_entropy, gemm, sgd, tuning
from .config import GemmConfig, Update, update_groups
from .precision import accumulator_dtype

FUSED_CLASSES = 128  # the most classes whose row of logits one output tile holds


def mlp_sgd_step(x: torch.Tensor, target: torch.Tensor, weights: list[torch.Tensor],
                 biases: list[torch.Tensor | None], weight_updates: list[Update], bias_updates: list[Update | None],
                 loss_kind: str, reduction: str, loss_dtype: torch.dtype, fp32_precision: str = "ieee",
                 tuner: tuning.Tuner | None = None) -> torch.Tensor:
    """Update every weight and bias in place from x (M, in) and target, (M, out) for `loss_kind`
    "mse", (M,) int64 class indices for "cross_entropy"; return the loss ("mean" or "sum") before
    the update as a 0-d tensor of `loss_dtype`. The caller (fusedgrad.mlp_step) has checked
    shapes, dtypes, devices and the updates."""
    bias_grads = [None if bias is None else torch.empty_like(bias) for bias in biases]

    def update_weight(index: int, grad: torch.Tensor, below: torch.Tensor, fold: dict) -> None:
        update = weight_updates[index]
        gemm.launch(grad.T, below, None, epilogue="sgd", aux=weights[index], lr=update.lr, rule=update.rule,
                    buffer=update.buffer, fresh=update.fresh, row_sums=bias_grads[index],
                    fp32_precision=fp32_precision, tuner=tuner, **fold)

    loss = _through_layers(x, target, weights, biases, loss_kind, reduction, loss_dtype, 1, update_weight,
                           fp32_precision, tuner)
    # launch: the biases, one launch per rate and rule
    for update, params, grads, buffers in update_groups(biases, bias_grads, bias_updates):
        sgd.sgd_step_unchecked(params, grads, update.lr, update.rule, buffers, update.fresh)
    return loss


def mlp_gradients(x: torch.Tensor, target: torch.Tensor, weights: list[torch.Tensor],
                  biases: list[torch.Tensor | None], weight_grads: list[torch.Tensor],
                  bias_grads: list[torch.Tensor | None], loss_kind: str, reduction: str, loss_dtype: torch.dtype,
                  ranks: int = 1, on_layer: Callable[[int], None] | None = None, fp32_precision: str = "ieee",
                  tuner: tuning.Tuner | None = None) -> torch.Tensor:
    """`mlp_sgd_step`'s gradients without its updates: each weight's and bias's gradient is
    written into `weight_grads` (shaped and strided as the weight) and `bias_grads` (contiguous),
    layer L first, and `on_layer(i)` is called once layer i's are launched (a data-parallel step
    starts its collective there). A "mean" divides by `ranks` times this batch's terms: the
    mean over `ranks` equal shards once the gradients are summed across them. Returns the
    loss so scaled (its sum across the shards is the whole batch's)."""

    def gradient(index: int, grad: torch.Tensor, below: torch.Tensor, fold: dict) -> None:
        gemm.launch(grad.T, below, weight_grads[index], row_sums=bias_grads[index], fp32_precision=fp32_precision,
                    tuner=tuner, **fold)
        if on_layer is not None:
            on_layer(index)

    return _through_layers(x, target, weights, biases, loss_kind, reduction, loss_dtype, ranks, gradient,
                           fp32_precision, tuner)


def _through_layers(x, target, weights, biases, loss_kind: str, reduction: str, loss_dtype: torch.dtype, ranks: int,
                    weight_step: Callable, fp32_precision: str, tuner) -> torch.Tensor:
    """Forward, loss and backward of the step; `weight_step(i, grad_i, h_{i-1}, fold)` launches
    layer i's weight product (after its input gradient), with `fold` the loss's fold where it
    is the first backward launch. Returns the loss tensor."""
    batch, layers, device, dtype = x.shape[0], len(weights), x.device, x.dtype
    # allocate
    hidden = [x]
    for weight in weights[:-1]:
        hidden.append(torch.empty((batch, weight.shape[0]), dtype=dtype, device=device))
    grad = torch.empty((batch, weights[-1].shape[0]), dtype=dtype, device=device)
    classes, last_in = weights[-1].shape
    fused_loss = loss_kind == "mse" or classes <= FUSED_CLASSES
    if fused_loss:  # one partial loss per output tile of the last GEMM
        loss_config = _row_config(batch, classes, last_in, dtype, device) if loss_kind != "mse" else None
        loss_config, tiles = gemm.tiles_of(batch, classes, last_in, dtype, device, loss_config)
    else:  # one per row, from the cross-entropy kernel
        loss_config, tiles = None, batch
    partials = torch.empty(tiles, dtype=accumulator_dtype(dtype), device=device)
    terms = grad.numel() if loss_kind == "mse" else batch  # what "mean" divides by: elements, or rows
    loss = torch.empty((), dtype=loss_dtype, device=device)
    loss_scale = 1.0 / (terms * ranks) if reduction == "mean" else 1.0
    # launch: forward
    for index in range(layers - 1):
        gemm.launch(hidden[index], weights[index].T, hidden[index + 1], epilogue="relu", bias=biases[index],
                    fp32_precision=fp32_precision, tuner=tuner)
    if loss_kind == "mse":
        gemm.launch(hidden[-1], weights[-1].T, grad, epilogue="squared_error", aux=target, partials=partials,
                    scale=2.0 * loss_scale, bias=biases[-1], config=loss_config, fp32_precision=fp32_precision,
                    tuner=tuner)
    elif fused_loss:
        gemm.launch(hidden[-1], weights[-1].T, grad, epilogue="cross_entropy", aux=target, partials=partials,
                    scale=loss_scale, bias=biases[-1], config=loss_config, fp32_precision=fp32_precision)
    else:
        gemm.launch(hidden[-1], weights[-1].T, grad, bias=biases[-1], fp32_precision=fp32_precision, tuner=tuner)
        cross_entropy.cross_entropy_and_grad_(grad, target, partials, loss_scale)
    # launch: backward, each layer's input gradient before its weight's product
    fold = dict(reduce=partials, reduce_out=loss, reduce_scale=loss_scale)  # the first backward launch adds up the loss
    for index in reversed(range(layers)):
        if index > 0:
            grad_below = torch.empty_like(hidden[index])
            gemm.launch(grad, weights[index], grad_below, epilogue="relu_mask", aux=hidden[index],
                        fp32_precision=fp32_precision, tuner=tuner, **fold)
            fold = {}
        weight_step(index, grad, hidden[index], fold)
        fold = {}
        if index > 0:
            grad = grad_below
    return loss


def _row_config(batch: int, classes: int, k: int, dtype: torch.dtype, device: torch.device) -> GemmConfig:
    """The default tiles of the last GEMM widened to hold a whole row of `classes` logits (one
    column-block, so the epilogue sees each row entire), at most 64 rows high to bound the
    accumulator's registers."""
    base, _ = gemm.tiles_of(batch, classes, k, dtype, device)
    block_n = max(16, 1 << (classes - 1).bit_length())
    return base.replace(BLOCK_M=max(16, min(base.BLOCK_M, 64)), BLOCK_N=block_n, SPLIT_K=1, PERSISTENT=False,
                        TMA=False)
