"""The tutorial's whole SGD step in five GEMM launches, without the autograd tape.

    h      = relu(x @ w1)                          GEMM 1, ReLU epilogue
    grad_y = 2 (h @ w2 - y), loss partials         GEMM 2, squared-error epilogue (y_pred never stored)
    grad_h = relu'(h) * (grad_y @ w2.T)            GEMM 3, ReLU-mask epilogue; program 0 adds up the loss
    w2    -= lr * (h.T @ grad_y)                   GEMM 4, SGD epilogue (grad_w2 never stored)
    w1    -= lr * (x.T @ grad_h)                   GEMM 5, SGD epilogue (grad_w1 never stored)

The order keeps the tutorial's math: grad_h reads w2 before GEMM 4 updates it, and both weight
gradients come from the same forward. Nothing here reads back to the host, so the step can be
captured in a CUDA graph. The ATen reference is `fusedgrad.step.train_step_reference`.
"""

from __future__ import annotations

import torch

from . import gemm, sgd, tuning
from .precision import accumulator_dtype


def two_layer_sgd_step(x: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                       lr: float | torch.Tensor, fp32_precision: str = "ieee",
                       tuner: tuning.Tuner | None = None) -> torch.Tensor:
    """Update w1 (D_in, H) and w2 (H, D_out) in place from x (N, D_in), y (N, D_out); return
    the step's loss sum((relu(x @ w1) @ w2 - y)**2) before the update, as a 0-d tensor of
    `precision.accumulator_dtype` (float32; float64 for float64).
    `fp32_precision` and `tuner` as in `gemm.launch`."""
    # check (shapes, dtypes and devices are checked by the caller, fusedgrad.step)
    batch, hidden, d_out = x.shape[0], w1.shape[1], w2.shape[1]
    # allocate
    h = torch.empty((batch, hidden), dtype=x.dtype, device=x.device)
    grad_y = torch.empty((batch, d_out), dtype=x.dtype, device=x.device)
    grad_h = torch.empty((batch, hidden), dtype=x.dtype, device=x.device)
    # The loss GEMM keeps the heuristic's tiles: its partial sums are sized by their number.
    loss_config, programs = gemm.plan(batch, d_out, hidden, x.dtype, x.device)
    partials = torch.empty(programs, dtype=accumulator_dtype(x.dtype), device=x.device)
    loss = torch.empty((), dtype=accumulator_dtype(x.dtype), device=x.device)
    if x.dtype == torch.float64:
        lr = sgd.rate_argument(lr, x.dtype, x.device)
    # launch
    settings = dict(fp32_precision=fp32_precision, tuner=tuner)
    gemm.launch(x, w1, h, epilogue="relu", **settings)
    gemm.launch(h, w2, grad_y, epilogue="squared_error", aux=y, partials=partials, scale=2.0,
                config=loss_config, **settings)
    gemm.launch(grad_y, w2.T, grad_h, epilogue="relu_mask", aux=h,
                reduce=partials, reduce_out=loss, **settings)
    gemm.launch(h.T, grad_y, None, epilogue="sgd", aux=w2, lr=lr, **settings)
    gemm.launch(x.T, grad_h, None, epilogue="sgd", aux=w1, lr=lr, **settings)
    return loss
